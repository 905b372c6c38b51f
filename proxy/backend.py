"""One Service port's endpoints for one class of traffic: their order, round robin and
ClientIP affinity (the :class:`Backend` the service table, proxy/table.py, maps addresses to).

Endpoints are kept in a stable order (numeric address, then port) and picked round robin; with
``sessionAffinity: ClientIP`` a client keeps its endpoint until it has been idle for the
timeout (each new flow refreshes it, as kube-proxy's affinity sets do). ``pick`` returns None
when nothing is eligible: the caller rejects the flow at once (TCP reset / ICMP unreachable).

Pure: no I/O and an injected clock (``now``, seconds on any monotonic scale). ``inherit``
carries round robin and affinity state across a config swap (see proxy/table.py).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

Endpoint = tuple[str, int]  # (address, port)

_PURGE_AT = 1024  # affinity entries before expired ones are swept


def endpoint_order(ep: Endpoint) -> tuple[int, int, int]:
    """Sort key: numeric address (IPv4 before IPv6), then port."""
    # A dotted quad is read directly, several times faster than ipaddress (30,000
    # endpoints at scale); anything else goes through ipaddress.
    parts = ep[0].split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        a, b, c, d = map(int, parts)
        if max(a, b, c, d) <= 255:
            return (4, a << 24 | b << 16 | c << 8 | d, ep[1])
    ip = ipaddress.ip_address(ep[0])
    return (ip.version, int(ip), ep[1])


@dataclass(frozen=True, slots=True)
class ServicePortName:
    """A Service port, as metrics and logs name it."""

    namespace: str
    name: str
    port: str  # the Service port name, "" when unnamed
    protocol: str

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.namespace}/{self.name}{port}/{self.protocol}"


class Backend:
    """The eligible endpoints of one Service port for one class of traffic, with the
    round-robin cursor and the ClientIP affinity table."""

    __slots__ = (
        "_affinity",
        "_cursor",
        "_last",
        "_purge_at",
        "affinity_timeout",
        "endpoints",
        "service",
    )

    def __init__(
        self,
        service: ServicePortName,
        endpoints: Collection[Endpoint],
        affinity_timeout: float | None = None,
    ) -> None:
        self.service = service
        self.endpoints: tuple[Endpoint, ...] = tuple(sorted(set(endpoints), key=endpoint_order))
        self.affinity_timeout = affinity_timeout  # None: no session affinity
        self._cursor = 0
        self._last: Endpoint | None = None
        self._affinity: dict[str, tuple[Endpoint, float]] = {}
        self._purge_at = _PURGE_AT

    def __repr__(self) -> str:
        return f"Backend({self.service}, {list(self.endpoints)})"

    def same_as(self, other: Backend) -> bool:
        return self.endpoints == other.endpoints and self.affinity_timeout == other.affinity_timeout

    def pick(
        self, client_ip: str, now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint | None:
        """The endpoint for a new flow from ``client_ip``, or None to reject it.

        ``exclude`` holds endpoints that already failed for this flow (a connect retry): an
        affinity to one of them is dropped and round robin moves on past it.
        """
        if self.affinity_timeout is not None:
            held = self._affinity.get(client_ip)
            if held is not None:
                held_ep, expires = held
                if now < expires and held_ep not in exclude:
                    self._affinity[client_ip] = (held_ep, now + self.affinity_timeout)
                    return held_ep
                del self._affinity[client_ip]
        ep = self._round_robin(exclude)
        if ep is not None and self.affinity_timeout is not None:
            self._affinity[client_ip] = (ep, now + self.affinity_timeout)
            if len(self._affinity) >= self._purge_at:
                self._purge(now)
        return ep

    def _round_robin(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._cursor + i) % n
            ep = self.endpoints[idx]
            if ep not in exclude:
                self._cursor = (idx + 1) % n
                self._last = ep
                return ep
        return None

    def _purge(self, now: float) -> None:
        self._affinity = {c: v for c, v in self._affinity.items() if v[1] > now}
        self._purge_at = max(_PURGE_AT, 2 * len(self._affinity))

    def affinity(self, client_ip: str, now: float) -> Endpoint | None:
        """The endpoint ``client_ip`` is held to, if any (read only)."""
        held = self._affinity.get(client_ip)
        return held[0] if held is not None and now < held[1] else None

    def inherit(self, old: Backend) -> None:
        """Continue ``old``'s round robin after its last pick; keep affinities to surviving
        endpoints (when affinity is still on)."""
        if old._last is not None and self.endpoints:
            at = bisect.bisect_right(
                [endpoint_order(e) for e in self.endpoints], endpoint_order(old._last)
            )
            self._cursor = at % len(self.endpoints)
            self._last = old._last
        if self.affinity_timeout is not None and old.affinity_timeout is not None:
            alive = set(self.endpoints)
            self._affinity = {c: v for c, v in old._affinity.items() if v[0] in alive}

    def describe(self) -> dict[str, Any]:
        return {
            "service": str(self.service),
            "endpoints": [f"{a}:{p}" for a, p in self.endpoints],
            "affinity_timeout": self.affinity_timeout,
            "affinities": len(self._affinity),
        }
