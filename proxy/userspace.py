"""The userspace proxy: a listener per virtual IP:port, no privilege needed.

Every ClusterIP, external IP and load-balancer IP port of the service table gets a listening
socket on that address (all of 127.0.0.0/8 is local on Linux, so loopback virtual IPs need no
setup); every NodePort gets one on the node address. A new TCP connection picks an endpoint
from the live table at accept time, connects (trying the next endpoint in round-robin order
when a connect fails, a bounded number of times) and relays (tcp_relay). UDP is per client
session (udp_relay).

``apply`` swaps the table and reconciles listeners: it binds the new addresses and closes the
removed ones. Established connections belong to the relay (tcp_relay), not to a listener, and
are never touched by a config change; they finish on the endpoint they started with.

A Service with no usable endpoint is refused at once: TCP with a reset (SO_LINGER 0). A UDP
port whose Service has no endpoint at all gets no socket, so the kernel itself answers each
datagram with ICMP port unreachable (sending ICMP from userspace would need privileges).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from mesh.config.proxy import ProxyConfig
from mesh.proxy.metrics import ProxyMetrics
from mesh.proxy.table import Backend, ServiceTable
from mesh.proxy.tcp_relay import SPLICE, Relay, reset
from mesh.proxy.udp_relay import UdpListener

log = logging.getLogger("mesh.proxy")

ListenKey = tuple[Literal["vip", "node"], str, int, str]  # kind, ip, port, protocol
_ACCEPT_BURST = 64  # connections accepted per wakeup before other tasks get a turn


@dataclass(eq=False)
class _Listener:
    key: ListenKey
    sock: socket.socket  # non-blocking
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    udp: UdpListener | None = None

    def close(self) -> None:
        self.scope.cancel()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class UserspaceProxy:
    name = "proxy"

    def __init__(
        self,
        *,
        node_ip: str = "127.0.0.1",
        udp_idle_timeout: float = 30.0,
        connect_timeout: float = 2.0,
        connect_attempts: int = 4,
        backlog: int = 1024,
        splice: bool = SPLICE,
    ) -> None:
        self.node_ip = node_ip
        self.udp_idle_timeout = udp_idle_timeout
        self.connect_timeout = connect_timeout
        self.connect_attempts = connect_attempts
        self.backlog = backlog
        self.splice = splice
        self.metrics = ProxyMetrics()
        self.registry = self.metrics.registry
        self._flows = self.metrics.flows
        self._relay = Relay(self._flows.bytes, splice=splice)
        self._config: ProxyConfig | None = None
        self._table = ServiceTable.build(ProxyConfig())
        self._listeners: dict[ListenKey, _Listener] = {}
        self._bind_errors: dict[ListenKey, str] = {}
        self._listen_nursery: trio.Nursery | None = None
        self._conn_nursery: trio.Nursery | None = None

    # --- Component ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._config is not None and self._listen_nursery is not None

    @property
    def table(self) -> ServiceTable:
        return self._table

    def listening(self) -> list[ListenKey]:
        return sorted(self._listeners)

    def apply(self, config: ProxyConfig) -> None:
        started = time.perf_counter()
        self._table = ServiceTable.build(config, self._table)
        self._config = config
        for conflict in self._table.conflicts:
            log.warning("address claimed by two services", extra={"conflict": conflict})
        if self._listen_nursery is not None:
            self._reconcile()
        self.metrics.config_version.set(config.version)
        self.metrics.sync_duration.observe(time.perf_counter() - started)

    def config_json(self) -> Any:
        return {
            "mode": "userspace",
            "node_ip": self.node_ip,
            "config": self._config.model_dump(mode="json") if self._config else None,
            "table": self._table.describe(),
            "listeners": [f"{ip}:{port}/{proto}" for _, ip, port, proto in self.listening()],
            "bind_errors": {
                f"{ip}:{port}/{proto}": err
                for (_, ip, port, proto), err in self._bind_errors.items()
            },
        }

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as conns:
                self._conn_nursery = conns
                await conns.start(self._relay.run)
                async with trio.open_nursery() as listeners:
                    self._listen_nursery = listeners
                    if self._config is not None:
                        self._reconcile()
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
            self._listen_nursery = self._conn_nursery = None

    # --- listeners ---------------------------------------------------------------------

    def _desired(self) -> set[ListenKey]:
        want: set[ListenKey] = set()
        for (ip, port, proto), backend in self._table.vips.items():
            if proto == "TCP" or (proto == "UDP" and backend.endpoints):
                want.add(("vip", ip, port, proto))
        taken = {(ip, port, proto) for _, ip, port, proto in want}
        for (port, proto), backend in self._table.node_ports.items():
            if (proto == "TCP" or (proto == "UDP" and backend.endpoints)) and (
                self.node_ip,
                port,
                proto,
            ) not in taken:
                want.add(("node", self.node_ip, port, proto))
        return want

    def _reconcile(self) -> None:
        want = self._desired()
        for key in sorted(set(self._listeners) - want):
            self._listeners.pop(key).close()
            log.info("listener closed", extra={"address": _fmt(key)})
        self._bind_errors = {k: v for k, v in self._bind_errors.items() if k in want}
        failed = False
        for key in sorted(want - set(self._listeners)):
            try:
                listener = self._bind(key)
            except OSError as exc:
                failed = True
                self._bind_errors[key] = exc.strerror or str(exc)
                log.error(
                    "cannot listen on a service address",
                    extra={"address": _fmt(key), "error": exc.strerror or str(exc)},
                )
                continue
            self._bind_errors.pop(key, None)
            self._listeners[key] = listener
            assert self._listen_nursery is not None
            self._listen_nursery.start_soon(self._serve, listener)
        if failed:
            self.metrics.sync_errors.inc()
        for proto in ("TCP", "UDP"):
            count = sum(1 for k in self._listeners if k[3] == proto)
            self.metrics.listeners.labels(proto).set(count)

    def _bind(self, key: ListenKey) -> _Listener:
        _, ip, port, proto = key
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        raw = socket.socket(family, kind)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raw.bind((ip, port))
            if proto == "TCP":
                # accepted sockets inherit TCP_NODELAY from the listener (Linux)
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.listen(self.backlog)
            raw.setblocking(False)
        except OSError:
            raw.close()
            raise
        listener = _Listener(key, raw)
        if proto == "UDP":
            listener.udp = UdpListener(
                trio.socket.from_stdlib_socket(raw),
                lambda: self._backend(key),
                self.metrics,
                self.udp_idle_timeout,
            )
        log.info("listening", extra={"address": _fmt(key)})
        return listener

    def _backend(self, key: ListenKey) -> Backend | None:
        kind, ip, port, proto = key
        if kind == "vip":
            return self._table.lookup(ip, port, proto)
        return self._table.lookup_node_port(port, proto)

    async def _serve(self, listener: _Listener) -> None:
        with listener.scope:
            try:
                if listener.udp is not None:
                    await listener.udp.serve()
                else:
                    await self._accept_loop(listener)
            except trio.ClosedResourceError:
                pass  # closed by a reconcile

    async def _accept_loop(self, listener: _Listener) -> None:
        """Accept until the backlog is drained, then wait; every connection gets a task."""
        lsock, key = listener.sock, listener.key
        assert self._conn_nursery is not None
        spawn, handle = self._conn_nursery.start_soon, self._handle
        burst = 0
        while True:
            try:
                conn, addr = lsock.accept()
            except BlockingIOError:
                burst = 0
                await trio.lowlevel.wait_readable(lsock)
                continue
            except OSError as exc:  # EMFILE and friends: back off, keep the listener
                if lsock.fileno() == -1:
                    return  # closed by a reconcile
                log.warning("accept failed", extra={"address": _fmt(key), "error": str(exc)})
                await trio.sleep(0.1)
                continue
            spawn(handle, conn, addr[0], key)
            burst += 1
            if burst == _ACCEPT_BURST:
                burst = 0
                await trio.lowlevel.checkpoint()

    # --- TCP connections ---------------------------------------------------------------

    async def _handle(self, conn: socket.socket, client_ip: str, key: ListenKey) -> None:
        flows = self._flows
        flows.flows["TCP"] += 1
        flows.active["TCP"] += 1
        upstream: socket.socket | None = None
        try:
            conn.setblocking(False)
            backend = self._backend(key)
            if backend is not None:
                upstream = await self._connect(backend, client_ip)
            if upstream is None:
                flows.rejects["TCP"] += 1
        except Exception:  # one broken flow must never take the proxy down
            log.exception("connection failed", extra={"address": _fmt(key)})
        finally:
            if upstream is None:
                flows.active["TCP"] -= 1
                reset(conn)  # refused at once, not left to time out
        if upstream is not None:
            self._relay.add(conn, upstream, self._tcp_closed)

    def _tcp_closed(self) -> None:
        self._flows.active["TCP"] -= 1

    async def _connect(self, backend: Backend, client_ip: str) -> socket.socket | None:
        tried: list[tuple[str, int]] = []
        for _ in range(min(self.connect_attempts, len(backend.endpoints))):
            picked = backend.pick(client_ip, trio.current_time(), exclude=tried)
            if picked is None:
                break
            tried.append(picked)
            try:
                upstream = await self._open(picked)
            except OSError as exc:
                self._flows.connect_errors += 1
                log.info(
                    "endpoint connect failed, trying the next",
                    extra={"service": str(backend.service), "endpoint": picked, "error": str(exc)},
                )
                continue
            self._flows.picked(backend.service.namespace, backend.service.name, picked)
            return upstream
        return None

    async def _open(self, endpoint: tuple[str, int]) -> socket.socket:
        """A non-blocking TCP connection to ``endpoint``; OSError (ETIMEDOUT after
        ``connect_timeout``) when it cannot be made."""
        family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(endpoint)
            if err == errno.EINPROGRESS:
                err = errno.ETIMEDOUT
                with trio.move_on_after(self.connect_timeout):
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException:
            sock.close()
            raise
        return sock


def _fmt(key: ListenKey) -> str:
    _, ip, port, proto = key
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}/{proto}"
