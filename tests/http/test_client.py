"""The connection step of the client: which endpoint each new connection goes to."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from mesh.http.balance import Endpoint, RoundRobin
from mesh.http.client import acquire
from mesh.http.pool import Pool


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


async def test_new_connections_follow_round_robin(listeners: list[socket.socket]) -> None:
    endpoints: list[Endpoint] = [s.getsockname() for s in listeners]
    balancer = RoundRobin(endpoints)
    pool = Pool()  # nothing pooled: every acquire connects
    chosen = []
    for _ in range(6):
        up = await acquire(
            pool, balancer, attempts=2, connect_timeout=1.0, deadline=trio.current_time() + 5
        )
        chosen.append(up.endpoint)
        up.sock.close()
    a, b = endpoints
    assert chosen in ([a, b] * 3, [b, a] * 3)
