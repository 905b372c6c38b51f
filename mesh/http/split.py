"""Weighted backend choice with ingress-nginx canaries and cookie session affinity.

Randomness is passed in (``rand``: a float in [0, 1)), so a table can pin every branch.

Canary precedence, per canary, as ingress-nginx's balancer does: the canary header first
(``always`` routes to the canary, ``never`` keeps the request off it; with a
``-value``/``-pattern`` the header must equal/match it), then the canary cookie (same two
words), then the weight. Unlike ingress-nginx, several canaries of one host and path each take
their own share: one draw is laid over the canaries' shares in order, the rest goes to the
main backends.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache

from mesh.config.gateway import Affinity, Canary, WeightedBackend

ALWAYS, NEVER, UNDECIDED = 1, -1, 0


def canary_verdict(c: Canary, headers: Mapping[str, str], cookies: Mapping[str, str]) -> int:
    if c.header is not None:
        value = headers.get(c.header.lower())
        if value is not None:
            if c.header_value is not None:
                if value == c.header_value:
                    return ALWAYS
            elif c.header_pattern is not None:
                if _pattern(c.header_pattern).search(value):
                    return ALWAYS
            elif value == "always":
                return ALWAYS
            elif value == "never":
                return NEVER
    if c.cookie is not None:
        value = cookies.get(c.cookie)
        if value == "always":
            return ALWAYS
        if value == "never":
            return NEVER
    return UNDECIDED


@lru_cache(maxsize=256)
def _pattern(p: str) -> re.Pattern[str]:
    return re.compile(p)


def choose(
    backends: tuple[WeightedBackend, ...],
    canaries: tuple[Canary, ...],
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    rand: float,
) -> WeightedBackend | None:
    """The backend for this request; None when every weight is zero."""
    if canaries:
        eligible = []
        for c in canaries:
            verdict = canary_verdict(c, headers, cookies)
            if verdict == ALWAYS:
                return WeightedBackend(backend=c.backend, weight=1)
            if verdict == UNDECIDED:
                eligible.append(c)
        point = rand
        for c in eligible:
            share = min(c.weight, c.weight_total) / c.weight_total
            if point < share:
                return WeightedBackend(backend=c.backend, weight=1)
            point -= share
        # The main backends take what is left: rescale the draw into [0, 1).
        taken = sum(min(c.weight, c.weight_total) / c.weight_total for c in eligible)
        rand = (rand - taken) / (1 - taken) if taken < 1 else 0.0
    return weighted(backends, rand)


def weighted(backends: tuple[WeightedBackend, ...], rand: float) -> WeightedBackend | None:
    """Pick by weight; weight 0 never chosen (Gateway API), None when all weights are 0."""
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = rand * total
    for b in backends:
        if point < b.weight:
            return b
        point -= b.weight
    return next(b for b in reversed(backends) if b.weight > 0)


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookie header -> {name: value} (RFC 6265 section 5.4; the first of a name wins)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out.setdefault(name, value.strip('"'))
    return out


def affinity_token(ip: str, port: int) -> str:
    """The cookie value that pins an endpoint: a hash, so addresses are not disclosed."""
    return hashlib.sha1(f"{ip}:{port}".encode()).hexdigest()[:16]


def pinned_endpoint(
    affinity: Affinity, cookies: Mapping[str, str], endpoints: tuple[tuple[str, int], ...]
) -> tuple[str, int] | None:
    token = cookies.get(affinity.cookie)
    if token is None:
        return None
    for ep in endpoints:
        if affinity_token(*ep) == token:
            return ep
    return None  # the endpoint is gone: pick afresh and set a new cookie


def affinity_cookie(affinity: Affinity, endpoint: tuple[str, int]) -> str:
    """The Set-Cookie value for the endpoint the data path picked."""
    parts = [f"{affinity.cookie}={affinity_token(*endpoint)}", f"Path={affinity.path or '/'}"]
    if affinity.max_age is not None:
        parts.append(f"Max-Age={affinity.max_age}")
    parts.append("HttpOnly")
    return "; ".join(parts)
