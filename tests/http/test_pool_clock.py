"""The pool's idle clock across trio runs.

Each trio run's clock has its own random origin, and the coarse clock the pool stamps idle
connections with (``DEADLINES.now``) is a process-wide value updated once a tick. A value left
by an earlier run (an earlier test, an earlier ``mesh`` command in the same process) must never
be used to stamp or age a connection: pooled before the first tick and taken after it, a
connection looked a million seconds old (so a second request opened a new upstream
connection: the once-flaky keep-alive test of tests/ingress/test_upstream_tls.py), or, with
the opposite offset, never expired at all. Virtual time (MockClock) makes the tick order exact.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from mesh.http.pool import DEADLINES, Pool, Upstream

ENDPOINT = ("127.0.0.1", 8080)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("stale", [-1_000_000.0, 1_000_000.0])
@pytest.mark.parametrize(("idle", "reused"), [(0.15, True), (61.0, False)])
async def test_a_connection_pooled_before_the_first_tick_is_aged_on_this_runs_clock(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    pair: tuple[socket.socket, socket.socket],
    stale: float,
    idle: float,
    reused: bool,
) -> None:
    DEADLINES.now = trio.current_time() + stale  # what an earlier run's clock left behind
    nursery.start_soon(DEADLINES.run)
    await trio.testing.wait_all_tasks_blocked()  # running, before its first tick
    pool = Pool(idle_timeout=60.0)
    up = Upstream(pair[0], ENDPOINT)
    pool.put(up)
    await trio.sleep(idle)  # a few ticks (well within the idle timeout), or past it
    if reused:
        assert pool.take(ENDPOINT) is up
    else:
        assert pool.take(ENDPOINT) is None
        assert pair[0].fileno() == -1  # closed, not handed out
