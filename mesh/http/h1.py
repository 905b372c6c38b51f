"""The HTTP/1.1 codec (RFC 9112), both roles, no I/O: bytes in, events out; heads out as bytes.

Theory of operation. A :class:`Reader` reads one direction of a connection: a server reads
requests, a client reads responses. ``feed(bytes)`` appends what arrived (``feed(b"")`` is
EOF); ``next_event()`` returns the next event, ``NEED_DATA``, ``PAUSED`` once a message has
ended (``next_message()`` starts the next one: the caller decides when, which is what makes
pipelining safe), or ``CLOSED`` when the peer closed cleanly between messages. Writing needs no
state: ``request_head``, ``response_head`` and ``chunk`` render bytes.

Parsing is strict, stricter than h11 and at least as strict as nginx, because the engine is a
proxy and two parsers that disagree about where a message ends is request smuggling
(RFC 9112 section 11.2). Everything below is a ProtocolError (400 unless said otherwise):

- a head that is not CRLF-delimited: a bare CR or LF anywhere in it (section 2.2);
- a request line other than ``token SP target SP HTTP/1.x`` (a space in the method or the
  target, control bytes), a target form the method does not allow (section 3.2); a major
  version other than 1 is 505;
- field lines with whitespace before the colon (section 5.1), obs-fold (section 5.2), control
  bytes in a value; more than ``max_fields`` fields or a head over ``max_head`` bytes: 431;
- HTTP/1.1 without exactly one valid Host (section 3.2), a Host that is not uri-host[:port];
- Content-Length that is not one run of at most 18 digits, or given twice, even equal, or as a
  list (section 6.3 lets a recipient reject those; a proxy must);
- Transfer-Encoding with Content-Length, or in HTTP/1.0 (section 6.1); in a request any
  coding other than one ``chunked`` is 501 (nginx does the same), ``chunked`` twice is 400;
- chunk sizes other than 1..15 hex digits, malformed chunk extensions, chunk data not followed
  by CRLF, malformed trailer fields (section 7.1).

A response from an upstream is read by the same rules (its errors become a 502): a response
with both Content-Length and Transfer-Encoding is refused rather than guessed at.

Speed matters as much as strictness: one ``bytes.find`` locates the head, one precompiled
regex validates all its field lines at once and another cuts them into pairs; a body is sliced out of the received
bytes, never copied through an intermediate buffer.
"""

from __future__ import annotations

import re
from typing import Final

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
    Headers,
    InformationalResponse,
    Request,
    Response,
)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
_FIELD_PAIR = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
_FIELD_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
)
_LENGTH = re.compile(rb"[0-9]{1,18}")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]*")
_BARE = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")
_SPACE_BEFORE_COLON = re.compile(rb"[^:\s]+[ \t]+:")
# ``passthrough``: a status line it may copy as it came, and the field lines it must look at
# (framing and hop-by-hop), found in a validated block by one scan.
_STATUS_PASS = re.compile(rb"HTTP/1\.1 ([2-9][0-9]{2}) [\t\x20-\x7e\x80-\xff]+")
_HOP_NAMES = (
    rb"connection|content-length|transfer-encoding|keep-alive|proxy-connection|te|upgrade|expect"
)
# Run over b"\n" + the lower-cased block (validated: every line a field line, no CR or LF
# inside one), where each field line is b"\n" + line + b"\r": the framing and hop-by-hop
# fields in one scan (match objects, with their positions, would cost more than finding the
# few lines to cut again with bytes.find, ``_cut_lines``).
_PASS_FIELD = re.compile(rb"\n(" + _HOP_NAMES + rb"):[ \t]*([^\r]*)")
_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})

MAX_HEAD: Final = 16384  # bytes of a head (request line or status line plus fields)
MAX_FIELDS: Final = 100
MAX_CHUNK_LINE: Final = 4096

_HEAD, _LENGTH_BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _CLOSE_BODY, _END, _DONE = (
    range(9)
)
_NO_BODY_METHODS = (b"HEAD",)


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
        return state in (_DONE, _END) or (state == _HEAD and not self.buffered)

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
        if self.switched or not self.message_done:
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
            if _BARE.search(buf, max(pos, scan - 1)):
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
        first = buf.find(b"\r\n", pos, end + 2)
        line = buf[pos:first]
        block = buf[first + 2 : end + 2]
        fields = self._fields(block)
        self._pos = end + 4
        if self._server:
            req = self.head_event = self._request(line, fields)
            self.head_fields = block
            return req
        return self._response(line, fields)

    def passthrough(self) -> tuple[int, bool, bytes, bytes] | None:
        """The common response in one step, for a proxy that forwards its head unchanged:
        HTTP/1.1, a final status with a reason phrase, a Content-Length body that has arrived
        whole, a Connection field naming nothing but close or keep-alive. Returns (status,
        keep-alive, the status line and field lines as they came without the hop-by-hop ones
        and without the blank line, the body); the message is then read to its end.
        Anything else, malformed heads included, returns None having consumed nothing: the
        caller then reads it with ``next_event``, which applies every rule and names the
        problem. The checks are the same: the same validation of the field block, the same
        framing rules (``_framing``), the same limits."""
        if self._state != _HEAD or self._server or self._method in (b"HEAD", b"CONNECT"):
            return None
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0 or end - pos > self.max_head:
            return None
        first = buf.find(b"\r\n", pos, end + 2)
        m = _STATUS_PASS.fullmatch(buf, pos, first)
        if m is None:
            return None
        status = int(m[1])
        if status in (204, 304):
            return None
        block = buf[first + 2 : end + 2]
        if not _FIELD_BLOCK.fullmatch(block) or block.count(b"\r\n") > self.max_fields:
            return None
        length: int | None = None
        close = False
        hops: set[bytes] = set()
        # _framing's rules for a response, inlined; whatever it would refuse or that needs
        # more than forwarding (chunked, a Connection naming fields) goes the general way.
        low = b"\n" + block.lower()
        for name, value in _PASS_FIELD.findall(low):
            value = value.rstrip(b" \t")  # lower-cased: only framing values are read
            if name == b"content-length":
                if length is not None or not _LENGTH.fullmatch(value):
                    return None
                length = int(value)
                continue
            if name == b"transfer-encoding":
                return None
            if name == b"connection":
                for token in value.split(b","):
                    token = token.strip()
                    if token == b"close":
                        close = True
                    elif token not in _STANDARD_TOKENS:
                        return None  # it names fields to drop: the general path does that
            hops.add(name)
        if length is None or len(buf) - end - 4 < length:
            return None
        head = buf[pos : first + 2] + (_cut_lines(block, low, hops) if hops else block)
        self._pos = end + 4 + length
        self._left = 0
        self._state = _DONE
        return status, not close, head, buf[end + 4 : end + 4 + length]

    def _fields(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of a block of CRLF-terminated field lines: validated in one regex
        match, then cut into (name, value) pairs by another, no Python loop per byte."""
        if not _FIELD_BLOCK.fullmatch(block):
            for line in block.split(b"\r\n"):
                if line and not _FIELD.fullmatch(line):
                    raise ProtocolError(_field_problem(line))
            raise ProtocolError("a bare CR or LF in the head")
        pairs = _FIELD_PAIR.findall(block)
        if len(pairs) > self.max_fields:
            raise ProtocolError("too many header fields", 431, "headers-too-large")
        return [(name.lower(), value.rstrip(b" \t")) for name, value in pairs]

    def _request(self, line: bytes, fields: list[tuple[bytes, bytes]]) -> Request:
        m = _REQUEST_LINE.fullmatch(line)
        if m is None:
            raise ProtocolError(_request_line_problem(line))
        method, target, major, minor = m.groups()
        if major != b"1":
            raise ProtocolError("only HTTP/1.x is served here", 505, "bad-request")
        version = b"1.0" if minor == b"0" else b"1.1"
        if target[0] != 47:  # not origin-form ("/..."): RFC 9112 section 3.2
            if method == b"CONNECT":
                if not _HOST.fullmatch(target):
                    raise ProtocolError("CONNECT needs an authority-form target")
            elif target == b"*":
                if method != b"OPTIONS":
                    raise ProtocolError("the asterisk target is for OPTIONS only")
            elif not _ABSOLUTE.fullmatch(target):
                raise ProtocolError("the request target is malformed")
        hosts: list[bytes] = []
        length, chunked, close, keep = _framing(fields, version, hosts)
        if len(hosts) > 1:
            raise ProtocolError("more than one Host field")
        if hosts:
            if not _HOST.fullmatch(hosts[0]):
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
        m = _STATUS_LINE.fullmatch(line)
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
            length, chunked, close, keep = _framing(fields, version)
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
            if _BARE.search(buf, pos) or (
                len(buf) > pos and not _CHUNK_LINE.match(buf, pos) and buf[pos:] != b"\r"
            ):
                raise ProtocolError("an invalid chunk size")
            return self._need("in a chunked body")
        if end - pos > MAX_CHUNK_LINE:
            raise ProtocolError("a chunk-size line is too long")
        m = _CHUNK_LINE.fullmatch(buf, pos, end)
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
            if _BARE.search(buf, pos):
                raise ProtocolError("a bare CR or LF in the trailer section")
            return self._need("in a chunked body")
        trailers = self._fields(buf[pos : end + 2])
        self._pos = end + 4
        self._state = _DONE
        return EndOfMessage(tuple(trailers))


def _cut_lines(block: bytes, low: bytes, names: set[bytes]) -> bytes:
    """``block`` without its field lines of these (lower-case) names; ``low`` is b"\n" +
    block.lower(), whose offsets are block's plus one: a line found at low[i:j] (from its
    leading LF to its CR) is block[i : j + 1] (through its own LF)."""
    cuts = []
    for name in names:
        key = b"\n" + name + b":"
        i = low.find(key)
        while i >= 0:
            j = low.find(b"\r", i)
            cuts.append((i, j + 1))
            i = low.find(key, j)
    cuts.sort()
    parts = []
    at = 0
    for i, j in cuts:
        parts.append(block[at:i])
        at = j
    parts.append(block[at:])
    return b"".join(parts)


def _framing(
    fields: list[tuple[bytes, bytes]], version: bytes, hosts: list[bytes] | None = None
) -> tuple[int | None, bytes, bool, bool]:
    """(Content-Length or None, the Transfer-Encoding value or b"", Connection has close,
    Connection has keep-alive); the Host values go to ``hosts`` when given (a request's
    fields are walked once)."""
    length: int | None = None
    te = b""
    close = keep = False
    for name, value in fields:
        if name == b"content-length":
            if length is not None:
                raise ProtocolError("more than one Content-Length")
            if not _LENGTH.fullmatch(value):
                raise ProtocolError("Content-Length is not a number of at most 18 digits")
            length = int(value)
        elif name == b"transfer-encoding":
            if not value:
                raise ProtocolError("an empty Transfer-Encoding")
            te = te + b"," + value if te else value
        elif name == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    keep = True
        elif name == b"host" and hosts is not None:
            hosts.append(value)
        elif name == b"expect" and hosts is not None and value.lower() != b"100-continue":
            # RFC 9110 section 10.1.1: the only expectation defined is 100-continue; any other
            # is refused (417) before a byte goes upstream, never silently ignored.
            raise ProtocolError("an expectation other than 100-continue", 417, "expectation-failed")
    if te and version == b"1.0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
    if te and length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    return length, te, close, keep and not close


def _field_problem(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "a folded header line (obs-fold)"
    if _SPACE_BEFORE_COLON.match(line):
        return "whitespace between a field name and the colon"
    if b"\r" in line or b"\n" in line:
        return "a bare CR or LF in the head"
    if b":" not in line:
        return "a header line without a colon"
    return "a header field with an invalid name or value"


def _request_line_problem(line: bytes) -> str:
    if line.count(b" ") > 2:
        return "a space in the method or the request target"
    if b"\r" in line or b"\n" in line:
        return "a bare CR or LF in the request line"
    return "the request line is malformed"


# --- writing ---------------------------------------------------------------------------


def request_head(
    method: bytes, target: bytes, headers: Headers | list[tuple[bytes, bytes]]
) -> bytes:
    return b"".join(
        [method, b" ", target, b" HTTP/1.1\r\n"]
        + [b"%s: %s\r\n" % field for field in headers]
        + [b"\r\n"]
    )


def response_head(
    status: int, reason: bytes, headers: Headers | list[tuple[bytes, bytes]]
) -> bytes:
    return b"".join(
        [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        + [b"%s: %s\r\n" % field for field in headers]
        + [b"\r\n"]
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers = ()) -> bytes:
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % field for field in trailers) + b"\r\n"


def safe_value(value: bytes) -> bool:
    """A field value that can be written without breaking the head (no CR, LF or NUL)."""
    return not (b"\r" in value or b"\n" in value or b"\x00" in value)
