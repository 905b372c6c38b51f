"""UDP through a virtual IP:port: one session per client address.

The first datagram from a client address picks an endpoint and opens a session: an upstream
socket connected to that endpoint (so the kernel filters replies to it, and an ICMP
unreachable from it surfaces as ECONNREFUSED). Replies go back through the virtual IP's own
socket, so the client sees them come from the address it sent to. A session ends after
``idle_timeout`` seconds without a datagram either way, or when the endpoint refuses.

No endpoint: the datagram is dropped and counted. A userspace proxy cannot answer with ICMP
port unreachable without a raw socket (CAP_NET_RAW); the nftables mode rejects properly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from mesh.proxy.backend import Backend
from mesh.proxy.metrics import ProxyMetrics

log = logging.getLogger("mesh.proxy.udp")

MAX_DATAGRAM = 65535
MAX_SESSIONS = 4096  # per listener; datagrams from further new clients are dropped


@dataclass(eq=False)
class _Session:
    upstream: trio.socket.SocketType
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class UdpListener:
    def __init__(
        self,
        sock: trio.socket.SocketType,
        resolve: Callable[[], Backend | None],
        metrics: ProxyMetrics,
        idle_timeout: float,
    ) -> None:
        self.sock = sock
        self._resolve = resolve  # the Backend for this address in the live table
        self._flows = metrics.flows
        self._idle = idle_timeout
        self._sessions: dict[tuple[str, int], _Session] = {}

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    data, addr = await self.sock.recvfrom(MAX_DATAGRAM)
                except trio.ClosedResourceError:  # the listener was removed
                    nursery.cancel_scope.cancel()
                    return
                except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error: keep serving
                    log.debug("udp receive error", extra={"error": str(exc)})
                    continue
                client = (addr[0], addr[1])
                session = self._sessions.get(client)
                if session is None:
                    session = await self._open(client, nursery)
                    if session is None:
                        continue
                session.scope.deadline = trio.current_time() + self._idle
                try:
                    await session.upstream.send(data)
                except OSError:
                    session.scope.cancel()  # the endpoint refused: end the session
                    continue
                self._flows.bytes[0] += len(data)

    async def _open(self, client: tuple[str, int], nursery: trio.Nursery) -> _Session | None:
        backend = self._resolve()
        picked = None
        if backend is not None and len(self._sessions) < MAX_SESSIONS:
            picked = backend.pick(client[0], trio.current_time())
        if backend is None or picked is None:
            self._flows.rejects["UDP"] += 1
            return None
        family = socket.AF_INET6 if ":" in picked[0] else socket.AF_INET
        upstream = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await upstream.connect(picked)
        except OSError as exc:
            upstream.close()
            log.warning("udp endpoint unusable", extra={"endpoint": picked, "error": str(exc)})
            self._flows.rejects["UDP"] += 1
            return None
        self._flows.picked(backend.service.namespace, backend.service.name, picked)
        self._flows.flows["UDP"] += 1
        session = _Session(upstream)
        self._sessions[client] = session
        nursery.start_soon(self._replies, client, session)
        return session

    async def _replies(self, client: tuple[str, int], session: _Session) -> None:
        self._flows.active["UDP"] += 1
        try:
            with session.scope:
                while True:
                    data = await session.upstream.recv(MAX_DATAGRAM)
                    session.scope.deadline = trio.current_time() + self._idle
                    self._flows.bytes[1] += len(data)
                    with contextlib.suppress(OSError, trio.ClosedResourceError):
                        await self.sock.sendto(data, client)
        except OSError:
            pass  # ECONNREFUSED: the endpoint is gone
        finally:
            self._flows.active["UDP"] -= 1
            if self._sessions.get(client) is session:
                del self._sessions[client]
            session.upstream.close()
