"""Path normalisation before routing: a table over the pure function (RFC 3986 section
6.2.2 and its section 5.2.4 examples), and a property test that the result is a fixed point."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.http.normpath import normalize_path

CASES = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("//admin", "/admin"),
    ("/a//b///c", "/a/b/c"),
    ("/x/../admin", "/admin"),
    ("/a/./b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),
    ("/../../etc/passwd", "/etc/passwd"),
    ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 section 5.2.4
    ("/mid/content=5/../6", "/mid/6"),  # RFC 3986 section 5.2.4
    ("/.well-known/acme", "/.well-known/acme"),
    ("/a/..b/c", "/a/..b/c"),
    ("/%61dmin", "/admin"),
    ("/%2e%2e/admin", "/admin"),
    ("/a/%2E%2E/b", "/b"),
    ("/a%2fb", "/a%2Fb"),  # an encoded slash is no separator: kept, hex upper-cased
    ("/a%20b", "/a%20b"),
    ("/%7euser", "/~user"),
    ("/100%", "/100%"),  # not an escape: left alone
    ("/%zz", "/%zz"),
    ("/caf%C3%A9", "/caf%C3%A9"),
]


@pytest.mark.parametrize(("path", "want"), CASES)
def test_normalize_path(path: str, want: str) -> None:
    assert normalize_path(path) == want


def test_an_ordinary_path_is_returned_as_is() -> None:
    path = "/api/v1/items"
    assert normalize_path(path) is path


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%61", "%2F", "x%"]), max_size=8))
def test_normalizing_twice_changes_nothing(segments: list[str]) -> None:
    once = normalize_path("/" + "/".join(segments))
    assert once.startswith("/")
    assert normalize_path(once) == once
    assert "//" not in once
    assert "/../" not in once + "/" and "/./" not in once + "/"
