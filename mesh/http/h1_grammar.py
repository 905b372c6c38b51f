"""The grammar of HTTP/1.1 heads (RFC 9112) as the codec (mesh.http.h1) applies it: the
precompiled patterns, the limits, the framing rules of a head's fields, and the one-sentence
problems a malformed line is reported with. Pure: no state, no I/O.

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
"""

from __future__ import annotations

import re
from typing import Final

from mesh.http.errors import ProtocolError

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
FIELD = re.compile(rb"(" + TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
FIELD_PAIR = re.compile(rb"(" + TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
FIELD_BLOCK = re.compile(rb"(?:" + TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*"
    + TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + TOKEN
    + rb"|"
    + QUOTED
    + rb"))?)*"
)
LENGTH = re.compile(rb"[0-9]{1,18}")
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")
# authority-form (RFC 9112 section 3.2.3): uri-host ":" port, the port required
AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+):[0-9]{1,5}")
ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]*")
BARE = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")
SPACE_BEFORE_COLON = re.compile(rb"[^:\s]+[ \t]+:")
# ``passthrough``: a status line it may copy as it came, and the field lines it must look at
# (framing and hop-by-hop), found in a validated block by one scan.
STATUS_PASS = re.compile(rb"HTTP/1\.1 ([2-9][0-9]{2}) [\t\x20-\x7e\x80-\xff]+")
HOP_NAMES = (
    rb"connection|content-length|transfer-encoding|keep-alive|proxy-connection|te|upgrade|expect"
)
# Run over b"\n" + the lower-cased block (validated: every line a field line, no CR or LF
# inside one), where each field line is b"\n" + line + b"\r": the framing and hop-by-hop
# fields in one scan (match objects, with their positions, would cost more than finding the
# few lines to cut again with bytes.find, ``cut_lines``).
PASS_FIELD = re.compile(rb"\n(" + HOP_NAMES + rb"):[ \t]*([^\r]*)")
STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})

MAX_HEAD: Final = 16384  # bytes of a head (request line or status line plus fields)
MAX_FIELDS: Final = 100
MAX_CHUNK_LINE: Final = 4096


def parse_fields(block: bytes, max_fields: int) -> list[tuple[bytes, bytes]]:
    """The fields of a block of CRLF-terminated field lines: validated in one regex
    match, then cut into (name, value) pairs by another, no Python loop per byte."""
    if not FIELD_BLOCK.fullmatch(block):
        for line in block.split(b"\r\n"):
            if line and not FIELD.fullmatch(line):
                raise ProtocolError(field_problem(line))
        raise ProtocolError("a bare CR or LF in the head")
    pairs = FIELD_PAIR.findall(block)
    if len(pairs) > max_fields:
        raise ProtocolError("too many header fields", 431, "headers-too-large")
    return [(name.lower(), value.rstrip(b" \t")) for name, value in pairs]


def cut_lines(block: bytes, low: bytes, names: set[bytes]) -> bytes:
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


def framing(
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
            if not LENGTH.fullmatch(value):
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


def field_problem(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "a folded header line (obs-fold)"
    if SPACE_BEFORE_COLON.match(line):
        return "whitespace between a field name and the colon"
    if b"\r" in line or b"\n" in line:
        return "a bare CR or LF in the head"
    if b":" not in line:
        return "a header line without a colon"
    return "a header field with an invalid name or value"


def request_line_problem(line: bytes) -> str:
    if line.count(b" ") > 2:
        return "a space in the method or the request target"
    if b"\r" in line or b"\n" in line:
        return "a bare CR or LF in the request line"
    return "the request line is malformed"
