"""The HTTP/1.1 codec (RFC 9112), both roles, no I/O: bytes in, events out; heads out as bytes.

Theory of operation. A :class:`Reader` reads one direction of a connection: a server reads
requests, a client reads responses. ``feed(bytes)`` appends what arrived (``feed(b"")`` is
EOF); ``next_event()`` returns the next event, ``NEED_DATA``, ``PAUSED`` once a message has
ended (``next_message()`` starts the next one: the caller decides when, which is what makes
pipelining safe), or ``CLOSED`` when the peer closed cleanly between messages. Writing needs no
state: ``request_head``, ``response_head`` and ``chunk`` render bytes.

Parsing is strict, stricter than h11 and at least as strict as nginx, because the engine is a
proxy and two parsers that disagree about where a message ends is request smuggling
(RFC 9112 section 11.2): the rules, and what each refusal says, are in mesh.http.h1_grammar.
A response from an upstream is read by the same rules (its errors become a 502).

Speed matters as much as strictness: one ``bytes.find`` locates the head, one precompiled
regex validates all its field lines at once and another cuts them into pairs; a body is sliced
out of the received bytes, never copied through an intermediate buffer; a head seen before is
not parsed again (``_REQUESTS``; responses: mesh.http.h1_passthrough), and in a request head
that differs, a line seen before is not validated again (mesh.http.h1_lines).
"""

from __future__ import annotations

from mesh.http import h1_lines
from mesh.http.errors import ProtocolError
from mesh.http.events import (
    CHUNKED,
    CLOSED,
    NEED_DATA,
    PAUSED,
    UNTIL_CLOSE,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Request,
    Response,
)
from mesh.http.h1_grammar import (
    BARE,
    CHUNK_LINE,
    HOST,
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    MAX_HEAD,
    STATUS_LINE,
    framing,
    parse_fields,
)
from mesh.http.h1_passthrough import MEMO_ENTRIES, MEMO_HEAD, passable
from mesh.http.h1_write import chunk, last_chunk, request_head, response_head, safe_value

__all__ = [
    "MAX_FIELDS",
    "MAX_HEAD",
    "Reader",
    "chunk",
    "last_chunk",
    "request_head",
    "response_head",
    "safe_value",
]

_HEAD, _LENGTH_BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _CLOSE_BODY, _END, _DONE = (
    range(9)
)
_NO_BODY_METHODS = (b"HEAD",)
# Request heads already read, by their bytes (the request line and field lines): a valid
# head always reads as the same event and leaves the reader in the same state, and a client
# on a kept-alive connection tends to send the same head again (a poller, a health check, a
# page's requests for the same resource). Bounded like the response heads' memo
# (mesh.http.h1_passthrough); a head that fails is never kept, so it fails every time.
_REQUESTS: dict[bytes, tuple[Request, int, int, bytes, int]] = {}


class Reader:
    """Reads the messages of one direction of a connection (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_eof",
        "_left",
        "_method",
        "_pos",
        "_server",
        "_state",
        "head_event",
        "head_fields",
        "max_fields",
        "max_head",
        "switched",
    )

    def __init__(
        self, role: str, *, max_head: int = MAX_HEAD, max_fields: int = MAX_FIELDS
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self._server = role == "server"
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._state = _HEAD
        self._left = 0
        self._method = b"GET"  # client role: the method of the request being answered
        self.max_head = max_head
        self.max_fields = max_fields
        self.switched = False  # the protocol switched (101, CONNECT): the rest is a tunnel
        # The last request head read, and its field lines as they came (CRLF-terminated,
        # validated): a proxy may forward them as they are (mesh.http.proxyheaders).
        self.head_event: Request | None = None
        self.head_fields = b""

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._pos == len(self._buf):
            self._buf, self._pos = data, 0
            if self._state == _HEAD:
                self._left = 0
        else:
            if self._state == _HEAD and self._left:
                self._left -= self._pos  # the scan offset moves with the buffer
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def message_done(self) -> bool:
        """The current message has been read to its end (its EndOfMessage may still be
        pending), or none has begun."""
        state = self._state
        return state in (_DONE, _END) or (state == _HEAD and len(self._buf) == self._pos)

    def whole_body(self) -> bytes | None:
        """The rest of a Content-Length body when all of it has arrived (the message then
        ends without Data and EndOfMessage events), else None: the fast path of a small
        response."""
        if self._state != _LENGTH_BODY:
            return None
        pos, left = self._pos, self._left
        if len(self._buf) - pos < left:
            return None
        data = self._buf[pos : pos + left]
        self._pos = pos + left
        self._left = 0
        self._state = _DONE
        return data

    def trailing(self) -> bytes:
        """Take the bytes received and not parsed: after a switch, the tunnel's first bytes."""
        data = self._buf[self._pos :]
        self._buf, self._pos = b"", 0
        return data

    def next_message(self, method: bytes = b"GET") -> None:
        """Start reading the next message; for a client, ``method`` is the request's method
        (a response to HEAD has no body)."""
        state = self._state  # message_done inlined: twice per proxied request
        if self.switched or not (
            state in (_DONE, _END) or (state == _HEAD and len(self._buf) == self._pos)
        ):
            raise RuntimeError("the current message has not ended")
        self._state = _HEAD
        self._method = method

    def next_event(self) -> Event | object:
        state = self._state
        if state == _HEAD:
            return self._head()
        if state in (_LENGTH_BODY, _CHUNK_DATA, _CLOSE_BODY):
            return self._data()
        if state == _END:
            self._state = _DONE
            return EndOfMessage()
        if state == _DONE:
            return PAUSED
        if state == _CHUNK_SIZE:
            return self._chunk_size()
        if state == _CHUNK_CRLF:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < 2:
                if buf[pos:] not in (b"", b"\r"):
                    raise ProtocolError("chunk data is not followed by CRLF")
                return self._need("in a chunk")
            if buf[pos : pos + 2] != b"\r\n":
                raise ProtocolError("chunk data is not followed by CRLF")
            self._pos = pos + 2
            self._state = _CHUNK_SIZE
            return self._chunk_size()
        return self._trailers()

    # --- heads -------------------------------------------------------------------------

    def _need(self, where: str) -> object:
        if self._eof:
            raise ProtocolError(f"the connection closed {where}")
        return NEED_DATA

    def _head(self) -> Event | object:
        buf, pos = self._buf, self._pos
        if pos == len(buf) and not self._eof:
            return NEED_DATA  # nothing to look at (between keep-alive requests)
        if self._server:  # RFC 9112 section 2.2: ignore empty lines before a request line
            while buf.startswith(b"\r\n", pos) and pos < self.max_head:
                pos += 2
            self._pos = pos
        # A head that arrives in pieces is scanned once, not once per piece: the search
        # resumes where the last one stopped (a slow client must not cost quadratic time).
        scan = max(pos, self._left - 3) if self._left else pos
        end = buf.find(b"\r\n\r\n", scan)
        if end < 0:
            if len(buf) - pos > self.max_head:
                raise ProtocolError("the head is too large", 431, "headers-too-large")
            if BARE.search(buf, max(pos, scan - 1)):
                raise ProtocolError("a bare CR or LF in the head")
            if self._eof:
                if pos == len(buf):
                    return CLOSED
                raise ProtocolError("the connection closed in the middle of a head")
            self._left = len(buf)  # while a head is incomplete: how far it was scanned
            return NEED_DATA
        self._left = 0
        if end - pos > self.max_head:
            raise ProtocolError("the head is too large", 431, "headers-too-large")
        if self._server:
            key = buf[pos : end + 2]
            seen = _REQUESTS.get(key)
            if seen is not None and seen[4] <= self.max_fields:
                req, self._state, self._left, self.head_fields, _ = seen
                self.head_event = req
                self._pos = end + 4
                return req
        first = buf.find(b"\r\n", pos, end + 2)
        line = buf[pos:first]
        block = buf[first + 2 : end + 2]
        self._pos = end + 4
        if self._server:  # a line seen before is not validated again (mesh.http.h1_lines)
            fields = h1_lines.fields(block, self.max_fields)
            req = self.head_event = self._request(line, fields)
            self.head_fields = block
            if len(key) <= MEMO_HEAD:
                if len(_REQUESTS) >= MEMO_ENTRIES:
                    _REQUESTS.clear()
                _REQUESTS[key] = (req, self._state, self._left, block, len(fields))
            return req
        return self._response(line, parse_fields(block, self.max_fields))

    def passthrough(self) -> tuple[int, bool, bytes, bytes] | None:
        """The common response in one step, for a proxy that forwards its head unchanged
        (mesh.http.h1_passthrough says which): (status, keep-alive, its head as it came
        without the hop-by-hop lines and the blank line, the body), the message then read
        to its end; None, having consumed nothing, for anything else (``next_event`` then
        applies every rule and names the problem)."""
        if self._state != _HEAD or self._server or self._method in (b"HEAD", b"CONNECT"):
            return None
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0 or end - pos > self.max_head:
            return None
        found = passable(buf[pos : end + 2])
        if not found or found[4] > self.max_fields:
            return None
        status, keep, head, length, _ = found
        at = end + 4
        if len(buf) - at < length:
            return None
        self._pos = at + length
        self._left = 0
        self._state = _DONE
        return status, keep, head, buf[at : at + length]

    def _request(self, line: bytes, fields: list[tuple[bytes, bytes]]) -> Request:
        method, target, version = h1_lines.request_line(line)
        hosts: list[bytes] = []
        length, chunked, close, keep = framing(fields, version, hosts)
        if len(hosts) > 1:
            raise ProtocolError("more than one Host field")
        if hosts:
            if not HOST.fullmatch(hosts[0]):
                raise ProtocolError("the Host field is malformed")
        elif version == b"1.1":
            raise ProtocolError("an HTTP/1.1 request without a Host field")
        if chunked:
            if version == b"1.0":
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
            if length is not None:
                raise ProtocolError("both Content-Length and Transfer-Encoding")
            codings = [c.strip().lower() for c in chunked.split(b",")]
            if any(c != b"chunked" for c in codings):
                raise ProtocolError("an unknown transfer coding", 501, "bad-request")
            if len(codings) > 1:
                raise ProtocolError("chunked applied more than once")
            body = CHUNKED
            self._state = _CHUNK_SIZE
        elif length:
            body = length
            self._left = length
            self._state = _LENGTH_BODY
        else:
            body = 0
            self._state = _END
        keep_alive = keep if version == b"1.0" else not close
        return Request(method, target, tuple(fields), version, body, keep_alive)

    def _response(self, line: bytes, fields: list[tuple[bytes, bytes]]) -> Event:
        m = STATUS_LINE.fullmatch(line)
        if m is None:
            raise ProtocolError("the status line is malformed", 502, "upstream-protocol-error")
        major, minor, code, reason = m.groups()
        if major != b"1":
            raise ProtocolError(
                "the upstream does not speak HTTP/1.x", 502, "upstream-protocol-error"
            )
        status = int(code)
        version = b"1.0" if minor == b"0" else b"1.1"
        if 100 <= status < 200 and status != 101:
            return InformationalResponse(status, tuple(fields), reason or b"")
        try:
            length, chunked, close, keep = framing(fields, version)
        except ProtocolError as exc:
            raise ProtocolError(str(exc), 502, "upstream-protocol-error") from exc
        keep_alive = keep if version == b"1.0" else not close
        if status == 101 or (self._method == b"CONNECT" and status < 300):
            self.switched = True
            self._state = _DONE
            return Response(status, tuple(fields), reason or b"", version, 0, False)
        if self._method in _NO_BODY_METHODS or status in (204, 304):
            body, self._state = 0, _END
        elif chunked:
            if length is not None or version == b"1.0":
                raise ProtocolError("a response framed two ways", 502, "upstream-protocol-error")
            if chunked.rpartition(b",")[2].strip().lower() == b"chunked":
                body, self._state = CHUNKED, _CHUNK_SIZE
            else:  # RFC 9112 section 6.3 (rule 4): the body ends with the connection
                body, self._state, keep_alive = UNTIL_CLOSE, _CLOSE_BODY, False
        elif length is not None:
            body, self._left = length, length
            self._state = _LENGTH_BODY if length else _END
        else:
            body, self._state, keep_alive = UNTIL_CLOSE, _CLOSE_BODY, False
        return Response(status, tuple(fields), reason or b"", version, body, keep_alive)

    # --- bodies ------------------------------------------------------------------------

    def _data(self) -> Event | object:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if self._state == _CLOSE_BODY:
            if not avail:
                if self._eof:
                    self._state = _DONE
                    return EndOfMessage()
                return NEED_DATA
            self._buf, self._pos = b"", 0
            return Data(buf[pos:])
        if not avail:
            return self._need("in the middle of a body")
        left = self._left
        if avail <= left:
            data = buf[pos:] if pos else buf
            self._buf, self._pos = b"", 0
            left -= avail
        else:
            data = buf[pos : pos + left]
            self._pos = pos + left
            left = 0
        self._left = left
        if not left:
            self._state = _END if self._state == _LENGTH_BODY else _CHUNK_CRLF
        return Data(data)

    def _chunk_size(self) -> Event | object:
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_CHUNK_LINE:
                raise ProtocolError("a chunk-size line is too long")
            if BARE.search(buf, pos) or (
                len(buf) > pos and not CHUNK_LINE.match(buf, pos) and buf[pos:] != b"\r"
            ):
                raise ProtocolError("an invalid chunk size")
            return self._need("in a chunked body")
        if end - pos > MAX_CHUNK_LINE:
            raise ProtocolError("a chunk-size line is too long")
        m = CHUNK_LINE.fullmatch(buf, pos, end)
        if m is None:
            raise ProtocolError("an invalid chunk size or extension")
        self._pos = end + 2
        size = int(m[1], 16)
        if size == 0:
            self._state = _TRAILERS
            return self._trailers()
        self._left = size
        self._state = _CHUNK_DATA
        return self._data()

    def _trailers(self) -> Event | object:
        buf, pos = self._buf, self._pos
        if buf.startswith(b"\r\n", pos):
            self._pos = pos + 2
            self._state = _DONE
            return EndOfMessage()
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > self.max_head:
                raise ProtocolError("the trailer section is too large", 431, "headers-too-large")
            if BARE.search(buf, pos):
                raise ProtocolError("a bare CR or LF in the trailer section")
            return self._need("in a chunked body")
        trailers = parse_fields(buf[pos : end + 2], self.max_fields)
        self._pos = end + 4
        self._state = _DONE
        return EndOfMessage(tuple(trailers))
