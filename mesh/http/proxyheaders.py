"""Proxy semantics of RFC 9110 for the fields of a forwarded message (pure).

- Hop-by-hop fields are removed in both directions (section 7.6.1): Connection, the fields it
  names, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade; the engine frames each
  hop itself. ``Expect`` goes too: the engine answers 100-continue on its own.
- The upstream learns who asked: ``X-Forwarded-For`` (the client address, appended to what a
  trusted downstream sent), ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``X-Forwarded-Port``,
  and ``Forwarded`` (RFC 7239) when enabled. At the edge (``trust_downstream`` False) what the
  client claims in those fields is dropped: it is not ours to vouch for.
- ``X-Request-Id`` is kept when present and generated when absent, so one id follows the
  request through the access log, the upstream and the response.
"""

from __future__ import annotations

import random
import re
from binascii import hexlify
from collections.abc import Callable
from typing import Final

from mesh.http.decision import HeaderEdits, Peer
from mesh.http.events import Headers, Request

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_FORWARDING: Final = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
    }
)


def request_id() -> bytes:
    """128 random bits as 32 hex digits. An id must be unique, not secret: a Mersenne
    Twister seeded from the OS costs a tenth of an ``os.urandom`` system call per request."""
    # hexlify of the 16 bytes, not "%032x": formatting a 128-bit integer costs twice as much
    return hexlify(_bits(128).to_bytes(16, "big"))


_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
_bits = random.Random().getrandbits  # seeded from os.urandom


def _without_named(
    out: list[tuple[bytes, bytes]], connection: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """Drop the fields the Connection field(s) name (section 7.6.1). Checked after one pass
    over the fields, as the Connection field itself is rare beyond close/keep-alive."""
    named = {t.strip().lower() for value in connection for t in value.split(b",")}
    named -= _STANDARD_TOKENS
    named.discard(b"")
    return [f for f in out if f[0] not in named] if named else out


def request_fields(
    headers: Headers,
    peer: Peer,
    *,
    host: bytes | None = None,
    upgrade: bool = False,
    trust_downstream: bool = False,
    forwarded: bool = False,
    make_id: Callable[[], bytes] = request_id,
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The fields to send upstream, and the request id. ``host`` replaces the Host field (the
    original goes to X-Forwarded-Host); ``upgrade`` keeps Upgrade for a protocol switch."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    prior_for: list[bytes] = []
    claimed: set[bytes] = set()  # forwarding fields a trusted downstream sent (kept as sent)
    orig_host = b""
    rid = b""
    for field in headers:
        name = field[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                if field[1].lower() not in _STANDARD_TOKENS:  # the usual: names nothing
                    connection.append(field[1])
            elif upgrade and name == b"upgrade":
                out.append(field)
            continue
        if name in _FORWARDING:
            if trust_downstream:
                if name == b"x-forwarded-for":
                    prior_for.append(field[1])
                    continue
                claimed.add(name)
                out.append(field)
            continue
        if name == b"host":
            orig_host = field[1]
            if host is not None:
                continue
        elif name == b"x-request-id":
            rid = field[1]
        out.append(field)
    if connection:
        out = _without_named(out, connection)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if host is not None:
        out.append((b"host", host))
    client = peer.address.encode()
    out.append((b"x-forwarded-for", b", ".join([*prior_for, client]) if prior_for else client))
    # A trusted downstream's own values win (it saw the client); what it did not say, we do.
    if b"x-forwarded-proto" not in claimed:
        out.append((b"x-forwarded-proto", peer.scheme))
    if orig_host and b"x-forwarded-host" not in claimed:
        out.append((b"x-forwarded-host", orig_host))
    if b"x-forwarded-port" not in claimed:
        out.append((b"x-forwarded-port", b"%d" % peer.local_port))
    if forwarded:
        node = b'"[%s]"' % client if b":" in client else client
        fwd = b"for=%s;proto=%s" % (node, peer.scheme)
        if orig_host:
            fwd += b';host="%s"' % orig_host.replace(b'"', b"")
        out.append((b"forwarded", fwd))
    if not rid:
        rid = make_id()
        out.append((b"x-request-id", rid))
    return out, rid


def response_fields(headers: Headers, *, upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """The fields of an upstream response to pass on, hop-by-hop ones removed."""
    out = []
    connection: list[bytes] = []
    for field in headers:
        name = field[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                if field[1].lower() not in _STANDARD_TOKENS:  # the usual: names nothing
                    connection.append(field[1])
            elif upgrade and name == b"upgrade":
                out.append(field)
            continue
        out.append(field)
    if connection:
        out = _without_named(out, connection)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    return out


# Fields that keep a request off ``plain_request_head``: each needs the general treatment.
_NOT_PLAIN: Final = HOP_BY_HOP | _FORWARDING | {b"x-request-id"}
_EDITS: dict[int, tuple[HeaderEdits, frozenset[bytes], bytes]] = {}
# Verdicts of ``plain_request_head`` on field blocks already seen, by (block, id(edits)),
# with the edits object they hold for; bounded in entries and in the size of a block kept.
_Verdict = tuple[bytes, bytes] | None
_VERDICTS: dict[tuple[bytes, int], tuple[HeaderEdits, _Verdict]] = {}
_VERDICTS_MAX: Final = 256
_VERDICT_BLOCK: Final = 2048
# Over b"\n" + field lines, each of them b"\n" + line + b"\r" (see h1._HOP_LINE).
_CONNECTION_LINE: Final = re.compile(rb"\nconnection:[^\r]*\r", re.IGNORECASE)
_PLAIN_HEAD: Final = (
    b"%s %s HTTP/1.1\r\n%s"  # request line, the client's field lines
    b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n%s"  # ..., X-Forwarded-Host line
    b"x-forwarded-port: %d\r\nx-request-id: %s\r\n%s\r\n"  # ..., the edits' lines
)


def _edit_parts(edits: HeaderEdits) -> tuple[HeaderEdits, frozenset[bytes], bytes]:
    """The names that keep a request off the plain path with these edits, and the field
    lines the edits add (remembered per edits object: routes keep theirs for a config)."""
    found = _EDITS.get(id(edits))
    if found is None or found[0] is not edits:
        if len(_EDITS) >= 1024:
            _EDITS.clear()
        stop = _NOT_PLAIN | {name for name, _ in edits.set} | set(edits.remove)
        lines = b"".join(b"%s: %s\r\n" % field for field in (*edits.set, *edits.add))
        found = _EDITS[id(edits)] = (edits, frozenset(stop), lines)
    return found


def plain_request_head(
    req: Request, fields: bytes, target: bytes, peer: Peer, edits: HeaderEdits
) -> bytes | None:
    """The upstream request head of the common request in one step: when none of its fields
    is hop-by-hop (but a Connection of close or keep-alive, which is dropped), a forwarding
    field, X-Request-Id or a field the route's edits replace or remove, its field lines (``fields``, as they came, already validated by the codec) are
    forwarded unchanged and followed by what ``request_fields`` would add: the same fields in
    the same order as the general path gives. None: take the general path. For the edge
    (X-Forwarded-* of the client dropped), without ``Forwarded``, the Host kept."""
    _, stop, lines = _edit_parts(edits)
    # The verdict is a function of the field lines (``req.headers`` is what the codec read
    # from them) and the edits, and a client tends to send the same lines again: remembered.
    key = (fields, id(edits))
    seen = _VERDICTS.get(key)
    if seen is not None and seen[0] is edits:
        verdict = seen[1]
    else:
        verdict = _plain_fields(req, fields, stop)
        if len(fields) <= _VERDICT_BLOCK:
            if len(_VERDICTS) >= _VERDICTS_MAX:
                _VERDICTS.clear()
            _VERDICTS[key] = (edits, verdict)
    if verdict is None:
        return None
    kept, host = verdict
    return _PLAIN_HEAD % (
        req.method,
        target,
        kept,
        peer.address.encode(),
        peer.scheme,
        b"x-forwarded-host: %s\r\n" % host if host else b"",
        peer.local_port,
        hexlify(_bits(128).to_bytes(16, "big")),  # request_id() inlined
        lines,
    )


def _plain_fields(
    req: Request, fields: bytes, stop: frozenset[bytes]
) -> tuple[bytes, bytes] | None:
    """The field lines to forward and the Host value, or None: not a plain request."""
    host = b""
    connection = False
    for name, value in req.headers:
        if name in stop:
            if name == b"connection" and value.lower() in _STANDARD_TOKENS:
                connection = True  # "close" or "keep-alive": it names no field, it just goes
                continue
            return None
        if name == b"host":
            host = value
    if connection:
        fields = _CONNECTION_LINE.sub(b"", b"\n" + fields)[1:]
    return fields, host


def added_lines(edits: HeaderEdits) -> bytes | None:
    """The field lines a response's edits append, or None when they also replace or remove
    fields (then the fields must be walked: the general path)."""
    if edits.set or edits.remove:
        return None
    return _edit_parts(edits)[2]
