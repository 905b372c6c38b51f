"""Request path normalisation before routing (RFC 3986 section 6.2.2, as Envoy's
``normalize_path`` with ``merge_slashes`` and nginx's URI normalisation do).

Routes, allow and deny lists, auth and rewrites are decided on the path; if the backend read
another path than the one the decision was made on, ``//admin``, ``/x/../admin`` or
``/%61dmin`` would reach a location that ``/admin``'s rules guard. So the gateway routes on the
normalised path and forwards that same path:

- percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded; other escapes
  stay encoded (``%2F`` is not a path separator), their hex digits upper-cased;
- ``.`` and ``..`` segments are removed (``..`` above the root stays at the root);
- runs of ``/`` become one.

The common path has none of ``//``, ``/.`` or ``%`` and costs three substring tests.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")


def _unescape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dots(path: str) -> str:
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    normal = "/" + "/".join(out)
    # A path that ended in a dot segment names a directory: "/a/." is "/a/".
    if path.endswith(("/.", "/..")) and normal != "/":
        normal += "/"
    return normal


def normalize_path(path: str) -> str:
    """``path`` (origin form, starting with ``/``, without the query) normalised."""
    if "//" not in path and "/." not in path and "%" not in path:
        return path
    if "%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = _remove_dots(path)
    return path
