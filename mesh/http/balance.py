"""Endpoint choice for one backend of the L7 engine: round robin and power-of-two-choices
least-request (P2C), over the endpoints the shared endpoint policy made eligible.

Theory of operation. A balancer is built once per backend and endpoint list and kept across
config swaps while the list is unchanged (the router holds it). It counts requests in flight
per endpoint (``started`` / ``finished``): P2C picks two distinct endpoints at random and takes
the one with fewer in flight (ties: the first drawn), which tracks load as well as full
least-request at a constant cost (Mitzenmacher; Envoy's and linkerd2-proxy's default).

An endpoint that refused a connection (``refused``) is skipped by the next pick, then
eligible again: one refusal says little, and a rolling restart must not strand an endpoint.
``pick(exclude)`` also skips what already failed for the request (see mesh.attempts); with
every endpoint excluded it returns None.

Randomness is injected (a ``random.Random``), so tests are deterministic. Pure: no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

Endpoint = tuple[str, int]  # (address, port)


class Balancer(Protocol):
    endpoints: tuple[Endpoint, ...]

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None: ...
    def started(self, endpoint: Endpoint) -> None: ...
    def finished(self, endpoint: Endpoint) -> None: ...
    def refused(self, endpoint: Endpoint) -> None: ...


class _Base:
    __slots__ = ("_refused", "active", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(dict.fromkeys(endpoints))  # order kept, duplicates dropped
        self.active: dict[Endpoint, int] = dict.fromkeys(self.endpoints, 0)
        self._refused: set[Endpoint] = set()

    def started(self, endpoint: Endpoint) -> None:
        if endpoint in self.active:
            self.active[endpoint] += 1

    def finished(self, endpoint: Endpoint) -> None:
        if self.active.get(endpoint, 0) > 0:
            self.active[endpoint] -= 1

    def refused(self, endpoint: Endpoint) -> None:
        self._refused.add(endpoint)

    def _skip(self, exclude: Collection[Endpoint]) -> Collection[Endpoint]:
        """What the pick under way skips; consumes the refusals (skipped once)."""
        if not self._refused:
            return exclude
        skip = self._refused.union(exclude)
        self._refused.clear()
        if len(skip) >= len(self.endpoints):  # refusals alone never empty the choice
            return exclude
        return skip


class RoundRobin(_Base):
    __slots__ = ("_cursor",)

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        super().__init__(endpoints)
        self._cursor = 0

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        eps = self.endpoints
        n = len(eps)
        if not exclude and not self._refused and n:  # the usual pick: nothing to skip
            cursor = self._cursor % n
            self._cursor = cursor + 1
            return eps[cursor]
        skip = self._skip(exclude)
        for i in range(n):
            ep = eps[(self._cursor + i) % n]
            if ep not in skip:
                self._cursor = (self._cursor + i + 1) % n
                return ep
        return None


class LeastRequest(_Base):
    """Power of two choices over requests in flight."""

    __slots__ = ("_rng",)

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random | None = None) -> None:
        super().__init__(endpoints)
        self._rng = rng or random.Random()

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        skip = self._skip(exclude)
        eps = self.endpoints if not skip else [e for e in self.endpoints if e not in skip]
        if len(eps) <= 1:
            return eps[0] if eps else None
        a, b = self._rng.sample(range(len(eps)), 2)
        first, second = eps[a], eps[b]
        return second if self.active[second] < self.active[first] else first


def balancer(
    policy: str, endpoints: Sequence[Endpoint], rng: random.Random | None = None
) -> Balancer:
    """A balancer by policy name: ``round-robin`` or ``least-request``."""
    if policy == "round-robin":
        return RoundRobin(endpoints)
    if policy == "least-request":
        return LeastRequest(endpoints, rng)
    raise ValueError(f"unknown load-balancing policy {policy!r}: round-robin or least-request")
