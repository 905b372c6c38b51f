"""The HTTP/1.1 codec against tables, fed whole, one byte at a time and with trailing data."""

from __future__ import annotations

from collections.abc import Callable

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.http.errors import ProtocolError
from mesh.http.events import (
    CHUNKED,
    CLOSED,
    NEED_DATA,
    PAUSED,
    UNTIL_CLOSE,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)
from mesh.http.h1 import Reader, chunk, last_chunk, request_head, response_head

Feed = Callable[[Reader, bytes], list[object]]


def drain(reader: Reader) -> list[object]:
    """Events until the reader needs data or the message ended; Data merged."""
    out: list[object] = []
    while True:
        ev = reader.next_event()
        if ev is NEED_DATA or ev is PAUSED or ev is CLOSED:
            return out if ev is not CLOSED else [*out, CLOSED]
        if type(ev) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)


def whole(reader: Reader, data: bytes) -> list[object]:
    reader.feed(data)
    return drain(reader)


def bytewise(reader: Reader, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        for ev in drain(reader):
            if type(ev) is Data and out and type(out[-1]) is Data:
                out[-1] = Data(out[-1].data + ev.data)
            else:
                out.append(ev)
    return out


def trailing(reader: Reader, data: bytes) -> list[object]:
    """The message followed by the start of the next: the reader must stop at its end."""
    reader.feed(data + b"GET /next HTTP/1.1\r\n")
    return drain(reader)


FEEDS = [whole, bytewise, trailing]
H = b"Host: a\r\n"

# (bytes, events) for requests the server side accepts
GOOD_REQUESTS: list[tuple[bytes, list[object]]] = [
    (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        [Request(b"GET", b"/", ((b"host", b"a"),), b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"\r\nGET /x?y=1 HTTP/1.1\r\nHOST:  a:80 \r\nX-A:b\t\r\n\r\n",  # empty line first: 2.2
        [
            Request(b"GET", b"/x?y=1", ((b"host", b"a:80"), (b"x-a", b"b")), b"1.1", 0, True),
            EndOfMessage(),
        ],
    ),
    (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
        [
            Request(b"POST", b"/", ((b"host", b"a"), (b"content-length", b"5")), b"1.1", 5, True),
            Data(b"hello"),
            EndOfMessage(),
        ],
    ),
    (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
        b'5;ext=1;q="a b"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n',
        [
            Request(
                b"POST",
                b"/",
                ((b"host", b"a"), (b"transfer-encoding", b"Chunked")),
                b"1.1",
                CHUNKED,
                True,
            ),
            Data(b"hello0123456789"),
            EndOfMessage(((b"x-t", b"1"),)),
        ],
    ),
    (
        b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-Continue\r\nContent-Length: 1\r\n\r\na",
        [
            Request(
                b"POST",
                b"/",
                ((b"host", b"a"), (b"expect", b"100-Continue"), (b"content-length", b"1")),
                b"1.1",
                1,
                True,
            ),
            Data(b"a"),
            EndOfMessage(),
        ],
    ),
    (
        b"GET / HTTP/1.0\r\n\r\n",
        [Request(b"GET", b"/", (), b"1.0", 0, False), EndOfMessage()],
    ),
    (
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        [Request(b"GET", b"/", ((b"connection", b"keep-alive"),), b"1.0", 0, True), EndOfMessage()],
    ),
    (
        b"GET / HTTP/1.1\r\n" + H + b"Connection: foo, close\r\n\r\n",
        [
            Request(
                b"GET", b"/", ((b"host", b"a"), (b"connection", b"foo, close")), b"1.1", 0, False
            ),
            EndOfMessage(),
        ],
    ),
    (
        b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
        [Request(b"OPTIONS", b"*", ((b"host", b"a"),), b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n",
        [Request(b"CONNECT", b"a:443", ((b"host", b"a"),), b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"GET http://a/b HTTP/1.1\r\n" + H + b"\r\n",
        [Request(b"GET", b"http://a/b", ((b"host", b"a"),), b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nX: \xe9t\xe9\r\n\r\n",  # obs-text in a value
        [
            Request(
                b"GET", b"/", ((b"host", b"[::1]:8080"), (b"x", b"\xe9t\xe9")), b"1.1", 0, True
            ),
            EndOfMessage(),
        ],
    ),
]

# (bytes, status) for requests the server side must refuse
BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    (
        "CL with TE",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "TE with CL",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    (
        "equal duplicate CL",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    (
        "different duplicate CL",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
    ),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\n", 400),
    ("CL sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\n", 400),
    ("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400),
    ("CL 2^64", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 18446744073709551616\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    ("obs-fold tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", 400),
    ("TE on 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    (
        "TE gzip chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    (
        "TE chunked twice",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    (
        "TE split twice",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("TE empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n\r\n", 400),
    (
        "TE vertical tab",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n",
        400,
    ),
    ("bare LF ends a line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare LF head end", b"GET / HTTP/1.1\r\nHost: a\n\n", 400),
    ("bare CR in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", 400),
    ("bare CR line end", b"GET / HTTP/1.1\r\nHost: a\r\rX: b\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("tab before colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length\t: 3\r\n\r\nabc", 400),
    ("space in name", b"GET / HTTP/1.1\r\n" + H + b"X Y: a\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"Xyz\r\n\r\n", 400),
    ("empty name", b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space in method", b"GE T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("two spaces", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("leading space", b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("control in target", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non-ascii target", b"GET /\xe9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("relative target", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk for GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT origin-form", b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT without port", b"CONNECT a HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("Host with path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    (
        "chunk size not hex",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    (
        "chunk size negative",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n",
        400,
    ),
    (
        "chunk size 0x",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size huge",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        400,
    ),
    (
        "chunk size space",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size empty",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\n",
        400,
    ),
    (
        "chunk ext bad",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk ext bare LF",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n5;a=\nb\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk data too long",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk no CRLF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n",
        400,
    ),
    (
        "trailer obs-fold",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
        400,
    ),
    ("too many fields", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n" * 101 + b"\r\n", 431),
    # RFC 9110 section 10.1.1: only 100-continue is an expectation; any other is 417.
    ("expect other", b"GET / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\n\r\n", 417),
    (
        "expect list",
        b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue, x\r\nContent-Length: 1\r\n\r\na",
        417,
    ),
    ("expect empty", b"GET / HTTP/1.1\r\n" + H + b"Expect:\r\n\r\n", 417),
    ("expect on 1.0", b"GET / HTTP/1.0\r\nExpect: foo\r\n\r\n", 417),
    ("head too large", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 17000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(("data", "expected"), GOOD_REQUESTS)
def test_good_requests(feed: Feed, data: bytes, expected: list[object]) -> None:
    reader = Reader("server")
    assert feed(reader, data) == expected
    assert reader.message_done


@pytest.mark.parametrize("feed", [whole, bytewise])
@pytest.mark.parametrize(("name", "data", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests(feed: Feed, name: str, data: bytes, status: int) -> None:
    reader = Reader("server")
    with pytest.raises(ProtocolError) as caught:
        feed(reader, data)
        reader.feed(b"")  # EOF: never a silent wait instead of the error
        drain(reader)
    assert caught.value.status == status, name
    assert (caught.value.reason == "expectation-failed") == (status == 417), name
    assert str(caught.value)


H11_ACCEPTS = [
    "CL with TE",
    "equal duplicate CL",
    "obs-fold",
    "TE on 1.0",
]


@pytest.mark.parametrize("name", H11_ACCEPTS)
def test_stricter_than_h11(name: str) -> None:
    """The cases the issue names where h11 accepts and we refuse."""
    data = next(d for n, d, _ in BAD_REQUESTS if n == name)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    assert isinstance(conn.next_event(), h11.Request)
    with pytest.raises(ProtocolError):
        whole(Reader("server"), data)


def test_huge_length_refused_not_awaited() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
    with pytest.raises(ProtocolError):
        whole(Reader("server"), data)


def test_pipelined_requests_wait_for_next_message() -> None:
    reader = Reader("server")
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    first = drain(reader)
    assert first[0].target == b"/1"  # type: ignore[attr-defined]
    assert reader.next_event() is PAUSED
    reader.next_message()
    assert drain(reader)[0].target == b"/2"  # type: ignore[attr-defined]
    reader.next_message()
    reader.feed(b"")
    assert reader.next_event() is CLOSED


def test_eof_mid_message_is_an_error() -> None:
    for partial in (
        b"GET / HTTP/1.1\r\nHo",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
    ):
        reader = Reader("server")
        reader.feed(partial)
        drain(reader)
        reader.feed(b"")
        with pytest.raises(ProtocolError):
            drain(reader)


# --- the client role: responses ---------------------------------------------------------

GOOD_RESPONSES: list[tuple[bytes, bytes, list[object]]] = [
    (
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        [
            Response(200, ((b"content-length", b"2"),), b"OK", b"1.1", 2, True),
            Data(b"hi"),
            EndOfMessage(),
        ],
    ),
    (
        b"HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        [Response(200, ((b"content-length", b"2"),), b"OK", b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"GET",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        [Response(204, (), b"No Content", b"1.1", 0, True), EndOfMessage()],
    ),
    (
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        [
            InformationalResponse(100, (), b"Continue"),
            Response(200, ((b"transfer-encoding", b"chunked"),), b"OK", b"1.1", CHUNKED, True),
            Data(b"hi"),
            EndOfMessage(),
        ],
    ),
    (
        b"GET",
        b"HTTP/1.1 200\r\n\r\n",  # no reason phrase, no framing: until close
        [Response(200, (), b"", b"1.1", UNTIL_CLOSE, False)],
    ),
    (
        b"GET",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        [Response(101, ((b"upgrade", b"websocket"),), b"Switching Protocols", b"1.1", 0, False)],
    ),
]


@pytest.mark.parametrize("feed", [whole, bytewise])
@pytest.mark.parametrize(("method", "data", "expected"), GOOD_RESPONSES)
def test_good_responses(feed: Feed, method: bytes, data: bytes, expected: list[object]) -> None:
    reader = Reader("client")
    reader.next_message(method)
    assert feed(reader, data) == expected


def test_response_until_close() -> None:
    reader = Reader("client")
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\nsome")
    assert drain(reader)[1:] == [Data(b"some")]
    reader.feed(b" more")
    reader.feed(b"")
    assert drain(reader) == [Data(b" more"), EndOfMessage()]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    ],
)
def test_bad_responses(data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        whole(Reader("client"), data)
    assert caught.value.status in (400, 502)


def test_writers_round_trip() -> None:
    head = request_head(b"POST", b"/u", [(b"host", b"a"), (b"transfer-encoding", b"chunked")])
    data = head + chunk(b"hello") + chunk(b"!") + last_chunk(((b"x-t", b"1"),))
    events = whole(Reader("server"), data)
    assert events[1:] == [Data(b"hello!"), EndOfMessage(((b"x-t", b"1"),))]
    resp = response_head(200, b"OK", [(b"content-length", b"0")])
    assert whole(Reader("client"), resp)[0] == Response(
        200, ((b"content-length", b"0"),), b"OK", b"1.1", 0, True
    )


# --- fuzz --------------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8).map(str.encode)
_value = (
    st.binary(max_size=20)
    .map(lambda v: bytes(b for b in v if b >= 0x20 and b != 0x7F))
    .filter(lambda v: v == v.strip(b" \t"))
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_fuzz_only_protocol_errors(data: bytes, step: int) -> None:
    """Any bytes: events or a ProtocolError, never another exception; split feeding gives the
    same outcome as whole feeding."""
    outcomes: list[tuple[str, object]] = []
    for size in (len(data) or 1, step):
        reader = Reader("server")
        events: list[object] = []
        try:
            for i in range(0, len(data), size):
                reader.feed(data[i : i + size])
                events += drain(reader)
            reader.feed(b"")
            events += drain(reader)
            outcomes.append(("ok", _merge(events)))
        except ProtocolError as exc:
            outcomes.append(("error", exc.status))
    assert outcomes[0] == outcomes[1]


def _merge(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if type(ev) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]),
    st.lists(st.tuples(_token, _value), max_size=6),
    st.lists(st.binary(min_size=1, max_size=30), max_size=4),
)
def test_fuzz_written_requests_parse_back(
    method: bytes, fields: list[tuple[bytes, bytes]], pieces: list[bytes]
) -> None:
    fields = [
        (n, v)
        for n, v in fields
        if n not in (b"host", b"content-length", b"transfer-encoding", b"connection")
    ]
    headers = [(b"host", b"example"), *fields, (b"transfer-encoding", b"chunked")]
    data = request_head(method, b"/p", headers) + b"".join(chunk(p) for p in pieces) + last_chunk()
    events = bytewise(Reader("server"), data)
    req = events[0]
    assert isinstance(req, Request)
    assert req.method == method
    assert list(req.headers) == headers
    body = b"".join(ev.data for ev in events if type(ev) is Data)
    assert body == b"".join(pieces)
    assert events[-1] == EndOfMessage()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_agrees_with_h11_where_h11_refuses(data: bytes) -> None:
    """Differential: whatever h11 refuses as malformed, we refuse too (or, for blank lines
    before a close, see no request at all)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        h11_event = conn.next_event()
    except h11.RemoteProtocolError:
        h11_event = None
    if h11_event is not None:
        return
    reader = Reader("server")
    reader.feed(data)
    reader.feed(b"")
    try:
        events = drain(reader)
    except ProtocolError:
        return
    assert events == [CLOSED]
