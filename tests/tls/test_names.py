"""SNI name normalisation and wildcard matching: a table from RFC 6125 and the Ingress rules,
and properties over generated names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.tls.names import matches, normalize, wildcard_suffix


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.example.com", "*.example.com"),
        ("a_b.example.com", "a_b.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("", None),
        (".", None),
        ("a..b", None),
        ("-a.example.com", None),
        ("a-.example.com", None),
        ("a.*.example.com", None),
        ("*a.example.com", None),
        ("a b.example.com", None),
        ("x" * 64 + ".com", None),
        (".".join(["a" * 63] * 4) + ".com", None),
    ],
)
def test_normalize(raw: str, expected: str | None) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("example.com", "www.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.Com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "a.example.org", False),
        ("*.example.com", "*.example.com", False),  # a name on the wire is never a pattern
        ("*.com", "example.com", True),
        ("a.*.com", "a.b.com", False),
        ("bücher.example", "xn--bcher-kva.example", True),
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
names = st.lists(label, min_size=1, max_size=5).map(".".join)


@given(names, names)
def test_wildcard_covers_exactly_one_more_label(suffix: str, name: str) -> None:
    pattern = "*." + suffix
    expected = name.count(".") == suffix.count(".") + 1 and name.split(".", 1)[1] == suffix
    assert matches(pattern, name) is expected


@given(names, st.booleans(), st.booleans())
def test_case_and_trailing_dot_do_not_matter(name: str, upper: bool, dot: bool) -> None:
    variant = (name.upper() if upper else name) + ("." if dot else "")
    assert normalize(variant) == name
    assert matches(name, variant)


@given(label, names)
def test_suffix_is_the_wildcard_index_key(first: str, rest: str) -> None:
    assert wildcard_suffix(f"{first}.{rest}") == rest
    assert matches("*." + rest, f"{first}.{rest}")
