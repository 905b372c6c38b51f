"""Which upstream to ask next: the policy and health bookkeeping of CoreDNS's ``forward``.

Pure. ``order()`` gives the upstreams to try for one query: the healthy ones in the policy's
order (``random``, ``round_robin`` or ``sequential``), then the ones marked down, so a query
still gets an answer when the health checks are wrong. An upstream is marked down after
``max_fails`` consecutive failures (timeouts and network errors of queries or health checks;
0 never marks one down) and up again by its first success; the health checker probes only the
ones marked down. A SERVFAIL or REFUSED answer is no failure here: the upstream is alive.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

Address = tuple[str, int]
POLICIES = ("random", "round_robin", "sequential")


ONE = [0]  # the order of a single upstream, shared: callers never change an order


class Pool:
    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        policy: str = "random",
        max_fails: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown upstream policy {policy!r}; one of {', '.join(POLICIES)}")
        if max_fails < 0:
            raise ValueError("max_fails must be 0 or more")
        self.addresses = list(addresses)
        self.policy = policy
        self.max_fails = max_fails
        self.fails = [0] * len(self.addresses)
        self._next = 0
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self.addresses)

    def down(self, i: int) -> bool:
        return self.max_fails > 0 and self.fails[i] >= self.max_fails

    def order(self) -> list[int]:
        n = len(self.addresses)
        if n == 1:  # the common case, on the path of every forwarded query
            return ONE
        indices = list(range(n))
        if self.policy == "random":
            self._rng.shuffle(indices)
        elif self.policy == "round_robin" and n:
            start = self._next % n
            self._next = start + 1
            indices = indices[start:] + indices[:start]
        return [i for i in indices if not self.down(i)] + [i for i in indices if self.down(i)]

    def failed(self, i: int) -> bool:
        """Count a failure; True when it marks the upstream down."""
        was_down = self.down(i)
        self.fails[i] += 1
        return self.down(i) and not was_down

    def succeeded(self, i: int) -> bool:
        """Count a success; True when it brings the upstream back up."""
        was_down = self.down(i)
        self.fails[i] = 0
        return was_down

    def unhealthy(self) -> list[int]:
        return [i for i in range(len(self.addresses)) if self.down(i)]
