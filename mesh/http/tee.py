"""One mirror copy's share of a request body: a bounded queue between the request and its copy.

Theory of operation. A RequestMirror copy of a request with a body gets the body pieces as
they go to the real upstream (mesh.http.replay hands each piece to every tap once). The
copy is sent by its own task, at its own pace; the real request must never wait for it. So
a :class:`Tee` queues what the copy has not sent yet, at most ``limit`` bytes: when a piece
would not fit, the copy is dropped (its queue released, its connection reset by its task:
the mirror never sees a complete request it did not get whole), and the request goes on
untouched. A copy whose task failed (the mirror refused the connection) is ``stopped``: its
pieces are ignored from then on. A request that ended without ending its body (the client
went away, a bad chunk, a 413) ``abort``s its tees: the copy is reset, never completed.

Pure: the copy's task passes ``waker`` (called whenever there is something new to look at).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

MIRROR_BUFFER: Final = 256 << 10  # bytes of a body queued for one mirror copy


def _nothing() -> None:
    return None


class Tee:
    __slots__ = ("_pieces", "aborted", "dropped", "ended", "held", "limit", "stopped", "waker")

    def __init__(self, limit: int = MIRROR_BUFFER) -> None:
        self.limit = limit
        self._pieces: list[bytes] = []
        self.held = 0  # bytes queued
        self.ended = False  # the body ended: after the queue, the copy is complete
        self.dropped = False  # the queue overflowed: the copy was too slow
        self.aborted = False  # the request ended without ending its body
        self.stopped = False  # the copy's task gave up
        self.waker: Callable[[], None] = _nothing

    @property
    def done(self) -> bool:
        """Nothing more will be queued."""
        return self.ended or self.dropped or self.aborted or self.stopped

    def piece(self, wire: bytes) -> None:
        if self.done:
            return
        if self.held + len(wire) > self.limit:
            self.dropped = True
            self._pieces = []
            self.held = 0
        else:
            self._pieces.append(wire)
            self.held += len(wire)
        self.waker()

    def end(self, wire: bytes) -> None:
        if self.done:
            return
        if wire:  # the last chunk (and trailers): small, and the copy is whole without it
            self._pieces.append(wire)
            self.held += len(wire)
        self.ended = True
        self.waker()

    def close(self) -> None:
        """The request is over: a body that did not end aborts the copy."""
        if not self.done:
            self.aborted = True
            self._pieces = []
            self.held = 0
            self.waker()

    def stop(self) -> None:
        """The copy's task gave up: queue nothing more."""
        self.stopped = True
        self._pieces = []
        self.held = 0

    def take(self) -> bytes:
        """Everything queued (b"" when nothing is)."""
        if not self._pieces:
            return b""
        data = b"".join(self._pieces)
        self._pieces = []
        self.held = 0
        return data
