"""The connect-and-try-next decision, shared by the L4 proxy and the L7 engine.

A new TCP flow (userspace proxy) or an HTTP request that needs a fresh upstream connection
(the L7 balancer) connects to the endpoint its picker chooses; when the connect fails (refused,
timed out, unreachable, no socket to be had) it tries the next one, never one that already
failed for it, at most ``limit`` times and never more often than there are endpoints. When
nothing is left the caller gives up: the L4 proxy resets the client, the L7 engine answers 502
``upstream-connect-failure`` (503 ``no-healthy-upstream`` when there was nothing to try).

This module only decides; the callers own the sockets and the clock (the reactor of the
userspace proxy, the trio shell of the L7 engine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

E = TypeVar("E")
Picker = Callable[[tuple[E, ...]], E | None]  # (endpoints tried so far) -> the next, or None


class ConnectPlan(Generic[E]):
    """The attempts of one flow or request: which endpoint to connect to next."""

    __slots__ = ("_pick", "limit", "tried")

    def __init__(self, pick: Picker[E], candidates: int, limit: int) -> None:
        self._pick = pick
        self.limit = min(limit, candidates)
        self.tried: tuple[E, ...] = ()

    def next(self) -> E | None:
        """The endpoint to connect to now, or None: give up (every chance is used)."""
        if len(self.tried) >= self.limit:
            return None
        picked = self._pick(self.tried)
        if picked is None or picked in self.tried:
            return None
        self.tried += (picked,)
        return picked

    @property
    def current(self) -> E:
        """The endpoint of the attempt under way."""
        return self.tried[-1]

    @property
    def attempted(self) -> bool:
        return bool(self.tried)
