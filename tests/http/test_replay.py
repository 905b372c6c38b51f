"""The pure parts of request bodies: what is kept for a retry (mesh.http.replay) and what is
queued for a mirror copy (mesh.http.tee)."""

from __future__ import annotations

import pytest

from mesh.http.replay import SentBody
from mesh.http.tee import Tee


class Recording:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.ended = False

    def piece(self, wire: bytes) -> None:
        self.got.append(wire)

    def end(self, wire: bytes) -> None:
        self.got.append(wire)
        self.ended = True


@pytest.mark.parametrize(
    ("limit", "sizes", "replayable"),
    [
        (10, [], True),
        (10, [10], True),
        (10, [4, 6], True),
        (10, [11], False),
        (10, [5, 5, 1], False),
        (0, [1], False),
    ],
)
def test_kept_up_to_the_limit_then_released(limit: int, sizes: list[int], replayable: bool) -> None:
    body = SentBody(limit)
    wires = [b"%x\r\n%s\r\n" % (n, b"x" * n) for n in sizes]  # chunk framing is kept as sent
    for wire, n in zip(wires, sizes, strict=True):
        body.piece(wire, n)
    body.end(b"0\r\n\r\n")
    assert body.replayable is replayable and body.complete
    if replayable:
        assert body.replay() == b"".join(wires) + b"0\r\n\r\n"
        assert body.replay() == body.replay()  # asked again for each retry
    else:
        assert body.kept == 0  # nothing held once the limit is passed
        with pytest.raises(RuntimeError):
            body.replay()


def test_started_and_taps_see_each_piece_once() -> None:
    tap = Recording()
    body = SentBody(4, (tap,))
    assert [body.started] == [False]  # (a list: mypy would narrow the property)
    body.piece(b"ab", 2)
    assert body.started and body.replay() == b"ab"
    body.piece(b"cdef", 4)  # over the limit: released, the tap still gets it
    body.end(b"")
    assert tap.got == [b"ab", b"cdef", b""] and tap.ended
    assert body.started and not body.replayable


def test_tee_queues_up_to_its_limit_then_drops() -> None:
    woken: list[int] = []
    tee = Tee(limit=6)
    tee.waker = lambda: woken.append(1)
    tee.piece(b"abc")
    tee.piece(b"def")
    assert tee.take() == b"abcdef" and tee.take() == b""
    tee.piece(b"1234")
    tee.piece(b"567")  # 7 queued bytes > 6: the copy is dropped
    assert tee.dropped and tee.take() == b"" and tee.done
    tee.piece(b"x")
    tee.end(b"")
    assert not tee.ended and tee.take() == b""
    assert len(woken) == 4


def test_tee_end_close_and_stop() -> None:
    tee = Tee(limit=4)
    tee.piece(b"ab")
    tee.end(b"0\r\n\r\n")  # the last chunk always fits
    tee.close()
    assert tee.ended and not tee.aborted and tee.take() == b"ab0\r\n\r\n"
    cut = Tee()
    cut.piece(b"ab")
    cut.close()  # the request ended without ending its body
    assert cut.aborted and cut.take() == b""
    stopped = Tee()
    stopped.stop()
    stopped.piece(b"ab")
    assert stopped.take() == b"" and stopped.done
