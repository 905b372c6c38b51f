"""The common upstream response head judged once (mesh.http.h1 ``Reader.passthrough``): may
a proxy forward it as it came, and what it forwards.

A response qualifies when it is HTTP/1.1 with a final status and a reason phrase, framed by
one Content-Length, with a Connection field naming nothing but close or keep-alive; what
goes on is its status line and field lines without the hop-by-hop ones. Everything else,
malformed heads included, is judged "no": the reader then parses it field by field with
every rule of the codec, which names the problem.

Why remembered: the verdict is a pure function of the head's bytes, and an upstream answers
the same head over and over (a static file, an API answer: only its Date changes, once a
second). Judging costs a validation regex, a scan of the framing fields and a cut of the
hop-by-hop lines; a repeated head costs one dictionary lookup instead. The memo is bounded
in entries and in the size of a head it keeps; a head it does not hold is judged again.
"""

from __future__ import annotations

from typing import Final

from mesh.http.h1_grammar import (
    FIELD_BLOCK,
    LENGTH,
    PASS_FIELD,
    STANDARD_TOKENS,
    STATUS_PASS,
    cut_lines,
)

# (status, keep-alive, the head to forward without its blank line, Content-Length, the
# number of field lines); () when the head does not qualify.
Verdict = tuple[int, bool, bytes, int, int] | tuple[()]

MEMO_ENTRIES: Final = 256
MEMO_HEAD: Final = 2048  # bytes: a longer head is judged each time, never kept
_MEMO: dict[bytes, Verdict] = {}


def passable(head: bytes) -> Verdict:
    """The verdict on ``head``: a status line and its field lines, each CRLF-terminated
    (the blank line that ends a head not included)."""
    found = _MEMO.get(head)
    if found is None:
        found = judge(head)
        if len(head) <= MEMO_HEAD:
            if len(_MEMO) >= MEMO_ENTRIES:
                _MEMO.clear()
            _MEMO[head] = found
    return found


def judge(head: bytes) -> Verdict:
    """``passable`` without the memo: the codec's rules for a response (``framing``, the
    field validation) inlined; whatever they would refuse or that needs more than forwarding
    (chunked, a Connection naming fields) is judged "no"."""
    first = head.find(b"\r\n")
    m = STATUS_PASS.fullmatch(head, 0, first)
    if m is None:
        return ()
    status = int(m[1])
    if status in (204, 304):
        return ()
    block = head[first + 2 :]
    if not FIELD_BLOCK.fullmatch(block):
        return ()
    length: int | None = None
    close = False
    hops: set[bytes] = set()
    low = b"\n" + block.lower()
    for name, value in PASS_FIELD.findall(low):
        value = value.rstrip(b" \t")  # lower-cased: only framing values are read
        if name == b"content-length":
            if length is not None or not LENGTH.fullmatch(value):
                return ()
            length = int(value)
            continue
        if name == b"transfer-encoding":
            return ()
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token not in STANDARD_TOKENS:
                    return ()  # it names fields to drop: the general path does that
        hops.add(name)
    if length is None:
        return ()
    out = head[: first + 2] + (cut_lines(block, low, hops) if hops else block)
    return status, not close, out, length, block.count(b"\r\n")
