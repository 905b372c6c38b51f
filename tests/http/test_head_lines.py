"""The per-line memo of request heads (mesh.http.h1_lines) says exactly what the full rules
say: the same pairs for good lines, the same refusal for bad ones, every time; a reader with
a tighter limit still refuses a head whose lines are remembered; the memos stay bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mesh.http import h1, h1_lines
from mesh.http.errors import ProtocolError
from mesh.http.h1_grammar import parse_fields

BLOCKS = [
    b"",
    b"Host: a\r\n",
    b"Host: a\r\nUser-Agent: wrk\r\nX-N: 1\r\n",
    b"host:a\r\nX-Empty:\r\nX-Pad: \t v \t\r\n",
    b"Host: a\r\nX: \x80\xff\r\n",
    b"Host: a\r\n folded\r\n",  # obs-fold
    b"Host : a\r\n",  # whitespace before the colon
    b"Host: a\r\nNoColon\r\n",
    b"Host: a\r\nX: a\nb\r\n",  # a bare LF inside a line
    b"Host: a\r\nX: a\rb\r\n",  # a bare CR inside a line
    b"Host: a\r\nX: \x01\r\n",  # a control byte in a value
    b"Ho(st: a\r\n",  # not a token
    b": a\r\n",
]


def _outcome(fn: Callable[..., object], *args: object) -> tuple[object, ...]:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("error", str(exc), exc.status)


@pytest.mark.parametrize("block", BLOCKS)
def test_fields_say_what_the_full_rules_say_every_time(block: bytes) -> None:
    want = _outcome(parse_fields, block, 100)
    for _ in range(3):  # the second and third time from the memo
        assert _outcome(h1_lines.fields, block, 100) == want


def test_a_bad_line_is_refused_every_time_and_never_kept() -> None:
    good = b"User-Agent: wrk\r\n"
    h1_lines.fields(good, 100)  # remembered
    bad = good + b"X : y\r\n"
    for _ in range(3):
        with pytest.raises(ProtocolError, match="whitespace between a field name and the colon"):
            h1_lines.fields(bad, 100)
    assert b"X : y" not in h1_lines._FIELDS
    assert b"User-Agent: wrk" in h1_lines._FIELDS


def test_a_remembered_line_does_not_bypass_a_tighter_limit() -> None:
    block = b"Host: a\r\nA: 1\r\nB: 2\r\n"
    assert len(h1_lines.fields(block, 100)) == 3
    with pytest.raises(ProtocolError) as info:
        h1_lines.fields(block, 2)
    assert info.value.status == 431
    reader = h1.Reader("server", max_fields=2)
    reader.feed(b"GET / HTTP/1.1\r\n" + block + b"\r\n")
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.status == 431


def test_the_memos_are_bounded() -> None:
    for i in range(h1_lines.MEMO_LINES + 50):
        h1_lines.fields(b"X-N: %d\r\n" % i, 100)
        h1_lines.request_line(b"GET /%d HTTP/1.1" % i)
    assert 0 < len(h1_lines._FIELDS) <= h1_lines.MEMO_LINES
    assert 0 < len(h1_lines._REQUEST_LINES) <= h1_lines.MEMO_LINES
    long = b"X-Long: " + b"v" * h1_lines.MEMO_LINE
    assert h1_lines.fields(long + b"\r\n", 100) == [(b"x-long", b"v" * h1_lines.MEMO_LINE)]
    assert long not in h1_lines._FIELDS  # a longer line is validated every time


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"GET / HTTP/1.1", ("ok", (b"GET", b"/", b"1.1"))),
        (b"GET /x HTTP/1.0", ("ok", (b"GET", b"/x", b"1.0"))),
        (b"OPTIONS * HTTP/1.1", ("ok", (b"OPTIONS", b"*", b"1.1"))),
        (b"CONNECT a.b:443 HTTP/1.1", ("ok", (b"CONNECT", b"a.b:443", b"1.1"))),
        (b"GET http://a/b HTTP/1.1", ("ok", (b"GET", b"http://a/b", b"1.1"))),
        (b"GET * HTTP/1.1", ("error", "the asterisk target is for OPTIONS only", 400)),
        (b"CONNECT http://a HTTP/1.1", ("error", "CONNECT needs an authority-form target", 400)),
        (b"CONNECT / HTTP/1.1", ("error", "CONNECT needs an authority-form target", 400)),
        (b"CONNECT a.b HTTP/1.1", ("error", "CONNECT needs an authority-form target", 400)),
        (b"CONNECT * HTTP/1.1", ("error", "CONNECT needs an authority-form target", 400)),
        (b"CONNECT [::1]:80 HTTP/1.1", ("ok", (b"CONNECT", b"[::1]:80", b"1.1"))),
        (b"GET a:b HTTP/1.1", ("error", "the request target is malformed", 400)),
        (b"GET / HTTP/2.0", ("error", "only HTTP/1.x is served here", 505)),
        (b"GET /a b HTTP/1.1", ("error", "a space in the method or the request target", 400)),
        (b"GET / HTTP/1.1\n", ("error", "a bare CR or LF in the request line", 400)),
        (b"G(T / HTTP/1.1", ("error", "the request line is malformed", 400)),
    ],
)
def test_request_lines_read_the_same_every_time(line: bytes, want: tuple[object, ...]) -> None:
    for _ in range(3):
        assert _outcome(h1_lines.request_line, line) == want
    if want[0] == "error":
        assert line not in h1_lines._REQUEST_LINES


def test_heads_differing_in_one_field_read_as_without_any_memo() -> None:
    heads = [
        b"GET /p HTTP/1.1\r\nHost: a\r\nUser-Agent: wrk\r\nX-N: %d\r\n\r\n" % i for i in range(5)
    ]
    heads.append(b"GET /p HTTP/1.1\r\nHost: a\r\nUser-Agent: wrk\r\nX-N : 9\r\n\r\n")
    remembered = [_outcome(_read, head) for head in heads]
    h1_lines._FIELDS.clear()
    h1_lines._REQUEST_LINES.clear()
    h1._REQUESTS.clear()
    fresh = [_outcome(_read, head) for head in heads]
    assert remembered == fresh
    assert remembered[-1][0] == "error"


def _read(head: bytes) -> object:
    reader = h1.Reader("server")
    reader.feed(head)
    return reader.next_event()
