"""The lines of a request head read with a memo per line (pure): what h1's whole-head memo
(``_REQUESTS``) leaves to do when a head differs from every earlier one.

Heads that differ rarely differ in every line: a client sends the same ``Host``,
``User-Agent`` and ``Accept`` lines with each request and changes one field (a request id, a
cookie, a counter) or the target. A field line that validated once validates again, so each
is remembered by its bytes with the (name, value) pair it reads as, and a head is cut into
lines with one ``bytes.split``. The request line is remembered the same way with what it
reads as (method, target, version). Rules, unchanged:

- only a line that passed is ever kept, so a bad line is refused every time, with the same
  sentence as before: on anything unusual (a line not seen before that fails, more lines than
  ``max_fields``) the whole block goes to ``h1_grammar.parse_fields``, which names the first
  problem exactly as it always did;
- the limits are not in the memo: the count of fields is checked per head against the
  reader's own ``max_fields``, and the head's size was checked before;
- bounded: at most ``MEMO_LINES`` lines of at most ``MEMO_LINE`` bytes each (the memo is
  cleared when full; a longer line is validated every time).
"""

from __future__ import annotations

from typing import Final

from mesh.http.errors import ProtocolError
from mesh.http.h1_grammar import (
    ABSOLUTE,
    AUTHORITY,
    FIELD,
    REQUEST_LINE,
    parse_fields,
    request_line_problem,
)

MEMO_LINES: Final = 2048
MEMO_LINE: Final = 256

_FIELDS: dict[bytes, tuple[bytes, bytes]] = {}
_REQUEST_LINES: dict[bytes, tuple[bytes, bytes, bytes]] = {}


def fields(block: bytes, max_fields: int) -> list[tuple[bytes, bytes]]:
    """What ``parse_fields(block, max_fields)`` returns or raises, for a block of
    CRLF-terminated field lines (the block of a head: it ends with CRLF or is empty)."""
    lines = block.split(b"\r\n")
    lines.pop()  # the empty piece after the last CRLF
    if len(lines) > max_fields:
        return parse_fields(block, max_fields)  # raises: the first problem, as always
    memo = _FIELDS
    out = []
    for line in lines:
        pair = memo.get(line)
        if pair is None:
            m = FIELD.fullmatch(line)
            if m is None:  # a bad line (or a bare CR or LF): named by the full rules
                return parse_fields(block, max_fields)
            pair = (m[1].lower(), m[2].rstrip(b" \t"))
            if len(line) <= MEMO_LINE:
                if len(memo) >= MEMO_LINES:
                    memo.clear()
                memo[line] = pair
        out.append(pair)
    return out


def request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(method, target, version b"1.0" or b"1.1") of a request line, or the ProtocolError
    that names its problem (RFC 9112 sections 3 and 3.2)."""
    seen = _REQUEST_LINES.get(line)
    if seen is not None:
        return seen
    m = REQUEST_LINE.fullmatch(line)
    if m is None:
        raise ProtocolError(request_line_problem(line))
    method, target, major, minor = m.groups()
    if major != b"1":
        raise ProtocolError("only HTTP/1.x is served here", 505, "bad-request")
    version = b"1.0" if minor == b"0" else b"1.1"
    if method == b"CONNECT":
        # RFC 9112 section 3.2.3: CONNECT, and only CONNECT, takes the authority-form
        # ("host:port", the port required); "CONNECT / HTTP/1.1" is malformed, whatever the
        # server then does with a well-formed CONNECT.
        if not AUTHORITY.fullmatch(target):
            raise ProtocolError("CONNECT needs an authority-form target")
    elif target[0] != 47:  # not origin-form ("/..."): RFC 9112 section 3.2
        if target == b"*":
            if method != b"OPTIONS":
                raise ProtocolError("the asterisk target is for OPTIONS only")
        elif not ABSOLUTE.fullmatch(target):
            raise ProtocolError("the request target is malformed")
    seen = (method, target, version)
    if len(line) <= MEMO_LINE:
        if len(_REQUEST_LINES) >= MEMO_LINES:
            _REQUEST_LINES.clear()
        _REQUEST_LINES[line] = seen
    return seen
