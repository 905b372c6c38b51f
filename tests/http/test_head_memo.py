"""The remembered verdicts on repeated heads (h1's request memo, h1_passthrough's response
memo, proxyheaders' plain-request verdicts) change nothing a reader or the proxy says: the
same head read again gives the same event and leaves the reader in the same state; a head
that fails fails every time; a reader with tighter limits than the one that read a head
first still refuses it; the memos stay bounded."""

from __future__ import annotations

import re

import pytest

from mesh.http import h1, h1_passthrough
from mesh.http.decision import HeaderEdits, Peer
from mesh.http.errors import ProtocolError
from mesh.http.events import CHUNKED, NEED_DATA, PAUSED, Data, EndOfMessage, Request
from mesh.http.proxyheaders import plain_request_head

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
POST = b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED_POST = (
    b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
)
CLOSE = b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"
PEER = Peer("127.0.0.9", 4000, b"http", 80)
_RID = re.compile(rb"x-request-id: [0-9a-f]{32}\r\n")
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n"
    b"hello\n"
)


def _events(data: bytes, **limits: int) -> list[object]:
    reader = h1.Reader("server", **limits)
    reader.feed(data)
    out: list[object] = []
    while (ev := reader.next_event()) is not PAUSED:
        out.append(ev)
        if ev is NEED_DATA:
            break
    out.append((reader.head_fields, reader.message_done, reader.buffered))
    return out


@pytest.mark.parametrize("data", [GET, POST, CHUNKED_POST, CLOSE, GET + GET])
def test_a_repeated_request_head_reads_the_same(data: bytes) -> None:
    h1._REQUESTS.clear()
    first = _events(data)
    assert h1._REQUESTS  # the head was kept
    assert _events(data) == first


def test_the_remembered_request_keeps_its_framing() -> None:
    h1._REQUESTS.clear()
    for _ in range(2):
        events = _events(POST)
        assert isinstance(events[0], Request) and events[0].length == 5
        assert events[1] == Data(b"hello") and events[2] == EndOfMessage()
        events = _events(CHUNKED_POST)
        assert isinstance(events[0], Request) and events[0].length == CHUNKED
        assert events[1] == Data(b"hi")


def test_a_bad_request_head_fails_every_time() -> None:
    h1._REQUESTS.clear()
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(2):
        with pytest.raises(ProtocolError, match="more than one Host"):
            _events(bad)
    assert not h1._REQUESTS


def test_a_tighter_reader_refuses_a_remembered_request_head() -> None:
    h1._REQUESTS.clear()
    _events(GET)  # two fields, read with the default limit
    with pytest.raises(ProtocolError) as err:
        _events(GET, max_fields=1)
    assert err.value.status == 431


def test_the_request_memo_is_bounded() -> None:
    h1._REQUESTS.clear()
    for i in range(h1_passthrough.MEMO_ENTRIES * 2):
        _events(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        assert len(h1._REQUESTS) <= h1_passthrough.MEMO_ENTRIES
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * h1_passthrough.MEMO_HEAD + b"\r\n\r\n"
    h1._REQUESTS.clear()
    _events(big)
    assert not h1._REQUESTS  # too long to keep, read all the same


def _pass(
    data: bytes, max_fields: int = h1.MAX_FIELDS
) -> tuple[tuple[int, bool, bytes, bytes] | None, bool, int]:
    reader = h1.Reader("client", max_fields=max_fields)
    reader.next_message(b"GET")
    reader.feed(data)
    return reader.passthrough(), reader.message_done, reader.buffered


def test_a_repeated_response_head_passes_the_same() -> None:
    h1_passthrough._MEMO.clear()
    first = _pass(RESPONSE)
    assert h1_passthrough._MEMO
    assert _pass(RESPONSE) == first
    assert first[0] == (
        200,
        True,
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 6\r\n",
        b"hello\n",
    )
    # the same head with its body still to come: not passed, nothing consumed
    assert _pass(RESPONSE[:-3]) == (None, False, len(RESPONSE) - 3)


def test_a_refused_response_head_is_refused_every_time() -> None:
    h1_passthrough._MEMO.clear()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    for _ in range(2):
        assert _pass(chunked)[0] is None
    assert _pass(RESPONSE, max_fields=2)[0] is None  # three fields: over this reader's limit


def test_the_response_memo_is_bounded() -> None:
    h1_passthrough._MEMO.clear()
    for i in range(h1_passthrough.MEMO_ENTRIES * 2):
        assert _pass(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)[0]
        assert len(h1_passthrough._MEMO) <= h1_passthrough.MEMO_ENTRIES


def _plain(data: bytes, edits: HeaderEdits) -> bytes | None:
    reader = h1.Reader("server")
    reader.feed(data)
    req = reader.next_event()
    assert type(req) is Request
    head = plain_request_head(req, reader.head_fields, req.target, PEER, edits)
    return None if head is None else _RID.sub(b"x-request-id: <id>\r\n", head)


def test_the_plain_request_verdict_is_kept_per_edits() -> None:
    """The same field lines under other edits get their own verdict, repeated or not."""
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Gone: 1\r\nConnection: keep-alive\r\n\r\n"
    keep, drop = HeaderEdits(), HeaderEdits(remove=(b"x-gone",))
    expected = (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Gone: 1\r\nx-forwarded-for: 127.0.0.9\r\n"
        b"x-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-forwarded-port: 80\r\n"
        b"x-request-id: <id>\r\n\r\n"
    )
    for _ in range(2):
        assert _plain(data, keep) == expected  # the Connection line dropped
        assert _plain(data, drop) is None  # a field to remove: the general path
