"""The heads a proxy forwards as they came, against the general path, differentially.

Reader.passthrough (a response head): whatever it accepts, ``next_event`` accepts too and reads
as the same status, framing, keep-alive, body and fields (hop-by-hop ones removed); whatever the
strict path refuses, passthrough refuses. A table of framings and a seeded fuzz of them.
plain_request_head (a request head): the same fields in the same order as request_fields and
the edits give, or None for a request with a field to rewrite."""

from __future__ import annotations

import random
import re

import pytest

from mesh.http.decision import HeaderEdits, Peer
from mesh.http.errors import ProtocolError
from mesh.http.events import Request, Response
from mesh.http.h1 import Reader, request_head
from mesh.http.proxyheaders import (
    HOP_BY_HOP,
    plain_request_head,
    request_fields,
    response_fields,
)

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    b"Connection: keep-alive\r\n\r\nhello\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 3\r\n\r\nno\n",
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
    b"Proxy-Connection: x\r\nContent-Length: 2\r\nX-Last: 1\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:   2  \r\nX:  spaced value \t\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Content-Length: 9\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # the extra bytes stay buffered
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: \x00\r\n\r\nok",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
]
TAKEN = 7  # the first seven are the common kind
_LINE = re.compile(rb"([^:\r\n]+):[ \t]*(.*?)[ \t]*\r\n")


def _general(data: bytes, method: bytes) -> tuple[Response, bytes | None, int] | None:
    """What the strict path reads: the final response, its body if whole, bytes left;
    None when it refuses the head (or reads something other than a final response)."""
    reader = Reader("client")
    reader.next_message(method)
    reader.feed(data)
    try:
        ev = reader.next_event()
    except ProtocolError:
        return None
    if type(ev) is not Response:
        return None
    body = reader.whole_body() if ev.length > 0 else b""
    return ev, body, reader.buffered


def _check(data: bytes, method: bytes = b"GET") -> bool:
    """True when passthrough took the response; asserts it agrees with the strict path."""
    reader = Reader("client")
    reader.next_message(method)
    reader.feed(data)
    fast = reader.passthrough()
    general = _general(data, method)
    if fast is None:
        assert reader.buffered == len(data)  # nothing consumed: next_event reads it all
        return False
    assert general is not None, data  # passthrough accepts nothing the strict path refuses
    ev, body, left = general
    status, keep, head, fast_body = fast
    assert (status, keep, fast_body, reader.buffered) == (ev.status, ev.keep_alive, body, left)
    assert reader.message_done
    line, _, rest = head.partition(b"\r\n")
    assert line == b"HTTP/1.1 %d %s" % (ev.status, ev.reason)
    fields = [(n.lower(), v) for n, v in _LINE.findall(rest)]
    assert b"".join(b"%s: %s\r\n" % f for f in fields) == b"".join(
        b"%s: %s\r\n" % f for f in response_fields(ev.headers)
    ), data
    return True


@pytest.mark.parametrize("data", ANSWERS)
@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST"])
def test_passthrough_agrees_with_the_strict_path(data: bytes, method: bytes) -> None:
    _check(data, method)


def test_passthrough_takes_the_common_responses() -> None:
    taken = [_check(data) for data in ANSWERS]
    assert taken[:TAKEN] == [True] * TAKEN  # plain, empty, close, hop-by-hop, OWS and case...
    assert not any(taken[TAKEN:])  # everything else goes the general way
    reader = Reader("client")
    reader.feed(ANSWERS[3])
    assert reader.passthrough() == (
        200,
        True,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Last: 1\r\n",
        b"ok",
    )


def _mutate(rng: random.Random, data: bytes) -> bytes:
    pieces = [b"\r", b"\n", b" ", b":", b"0", b"9", b",", b"\r\n", b"\t", b"\x00", b"-", b"a"]
    i = rng.randrange(len(data) + 1)
    kind = rng.randrange(3)
    if kind == 0:
        return data[:i] + rng.choice(pieces) + data[i:]
    if kind == 1:
        return data[:i] + data[i + 1 :]
    return data[:i] + rng.choice(pieces) + data[i + 1 :]


def test_passthrough_agrees_on_fuzzed_responses() -> None:
    rng = random.Random(11)
    taken = 0
    for _ in range(20000):
        data = rng.choice(ANSWERS[:TAKEN])
        for _ in range(rng.randrange(1, 4)):
            data = _mutate(rng, data)
        taken += _check(data, rng.choice((b"GET", b"GET", b"HEAD")))
    assert taken > 1000  # the fuzz reached the fast path, not only the refusals


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nHOST:  a.example:8080 \r\nAccept: */*\r\nX-B: 1\r\nX-B: 2\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nconnection: Close\r\nHost: a\r\nX-Connection: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-a\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Set: client\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Gone: client\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
]
EDITS = [
    HeaderEdits(),
    HeaderEdits(set=((b"x-set", b"1"),), add=((b"x-add", b"2"),), remove=(b"x-gone",)),
]
PEER = Peer("127.0.0.9", 4000, b"https", 8443)
_RID = re.compile(rb"x-request-id: [0-9a-f]{32}\r\n")


@pytest.mark.parametrize("data", REQUESTS)
@pytest.mark.parametrize("edits", EDITS)
def test_plain_request_head_agrees_with_the_general_path(data: bytes, edits: HeaderEdits) -> None:
    reader = Reader("server")
    reader.feed(data)
    req = reader.next_event()
    assert type(req) is Request and reader.head_event is req
    plain = plain_request_head(req, reader.head_fields, b"/t", PEER, edits)
    fields, _ = request_fields(req.headers, PEER, make_id=lambda: b"0" * 32)
    general = request_head(req.method, b"/t", edits.apply(fields) if edits else fields)
    names = {n for n, _ in req.headers}
    edited = {n for n, _ in edits.set} | set(edits.remove)
    special = HOP_BY_HOP | {b"x-forwarded-for", b"x-request-id"} | edited
    if plain is None:
        assert names & special  # only a request with a field to rewrite leaves the plain path
        return
    assert not names & special - {b"connection"}  # a Connection naming no field just goes
    line, _, rest = plain.partition(b"\r\n")
    assert line == general.partition(b"\r\n")[0]
    fields_plain = b"".join(b"%s: %s\r\n" % (n.lower(), v) for n, v in _LINE.findall(rest))
    assert _RID.sub(b"", fields_plain) == _RID.sub(b"", general.partition(b"\r\n")[2][:-2])
    assert len(_RID.findall(plain)) == 1
