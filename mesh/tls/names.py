"""Host names as TLS sees them: normalising an SNI name and matching it against certificate names.

Pure functions, shared by the certificate store (which indexes names) and its tests.

Rules (those of Ingress ``spec.tls.hosts``, Gateway listener hostnames and RFC 6125 §6.4.3):

- Names compare case-insensitively, without a trailing dot; a non-ASCII name is compared in
  its IDNA A-label form (``xn--...``), which is what a client puts on the wire.
- ``*.example.com`` matches exactly one more label: ``a.example.com``, never ``example.com``
  nor ``a.b.example.com``. The ``*`` must be the whole leftmost label.
- An exact name always beats a wildcard (the store looks the exact name up first).
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def normalize(name: str) -> str | None:
    """The comparable form of a host name or SNI name, or None when it is not a DNS name.

    Accepts a leading ``*.`` label (a wildcard pattern). Underscores are tolerated because
    real certificates and clients use them, although RFC 952 does not.
    """
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    first = 1 if labels[0] == "*" and len(labels) > 1 else 0
    for label in labels[first:]:
        if not _LABEL.match(label):
            return None
    return name


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def wildcard_suffix(name: str) -> str | None:
    """The part a covering wildcard shares with ``name``: ``b.c`` for ``a.b.c``, None for ``c``.

    A store indexes ``*.b.c`` under ``b.c``, so a lookup is one dict access whichever the name.
    """
    _, dot, rest = name.partition(".")
    return rest if dot and rest else None


def matches(pattern: str, name: str) -> bool:
    """Whether a certificate name (exact or ``*.`` wildcard) covers a host name.

    Both arguments are normalised first; an invalid one matches nothing.
    """
    p, n = normalize(pattern), normalize(name)
    if p is None or n is None or is_wildcard(n):
        return False
    if is_wildcard(p):
        return wildcard_suffix(n) == p[2:]
    return p == n
