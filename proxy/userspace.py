"""The userspace proxy: a listener per virtual IP:port, no privilege needed.

Every ClusterIP, external IP and load-balancer IP port of the service table gets a listening
socket on that address (all of 127.0.0.0/8 is local on Linux, so loopback virtual IPs need no
setup); every NodePort gets one on the node address. A new TCP connection picks an endpoint
from the live table at accept time, connects (trying the next endpoint in round-robin order
when a connect fails, a bounded number of times: the pure decision of mesh.attempts, which the
L7 engine shares) and relays (tcp_relay): the reactor here only moves bytes. UDP is per client
session (udp_relay). A virtual address of one family goes to endpoints of that family only
(the service table keeps a Backend per family).

This module holds the component and its listeners (bind, reconcile, retry); the TCP
connection path (accept, pick, connect, retry the next endpoint) is proxy/tcp_connect.py,
a base class of the proxy, and a listener and its key are proxy/listener.py.

``apply`` swaps the table and reconciles listeners: it binds the new addresses and closes the
removed ones, looking only at the addresses the table says the edit may have changed (an
edit of one Service among thousands touches its listeners only). Established connections belong to the relay (tcp_relay), not to a listener, and
are never touched by a config change; they finish on the endpoint they started with.

IPv6 ClusterIPs need their service range to be local first (proxy/local_routes.py): given
``local_ranges``, the proxy routes them to lo as root, and otherwise leaves their addresses
unbound (said once at start; DNS still answers them).

A Service with no usable endpoint is refused at once: TCP with a reset (SO_LINGER 0). A UDP
port whose Service has no endpoint at all gets no socket, so the kernel itself answers each
datagram with ICMP port unreachable (sending ICMP from userspace would need privileges).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import Counter, deque
from typing import Any

import trio

from mesh.config.proxy import ProxyConfig
from mesh.endpoint_policy import family_of
from mesh.proxy.backend import Backend
from mesh.proxy.listener import Listener, ListenKey, listen_name
from mesh.proxy.local_routes import IP_FREEBIND, LocalRoutes
from mesh.proxy.metrics import ProxyMetrics
from mesh.proxy.table import ServiceTable
from mesh.proxy.tcp_connect import Attempt, TcpConnector
from mesh.proxy.tcp_relay import SPLICE, Handler, Relay
from mesh.proxy.udp_relay import UdpListener

log = logging.getLogger("mesh.proxy")


class UserspaceProxy(TcpConnector):
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
        local_ranges: tuple[str, ...] = (),
        bind_retry: float = 2.0,
    ) -> None:
        self.node_ip = node_ip
        self.bind_retry = bind_retry
        self.local_routes = LocalRoutes(local_ranges)
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
        self._listeners: dict[ListenKey, Listener] = {}
        self._counts: Counter[str] = Counter()  # listeners by protocol (for the gauge)
        self._bind_errors: dict[ListenKey, str] = {}
        self._listen_nursery: trio.Nursery | None = None
        self._connecting: dict[int, Attempt] = {}  # by upstream file descriptor
        # (deadline, fd, serial): no reference to the attempt, which is gone long before its
        # deadline almost always
        self._deadlines: deque[tuple[float, int, int]] = deque()
        self._serial = 0
        self._deadline_lot = trio.lowlevel.ParkingLot()
        self._on_connect: Handler = self._connected  # bound once, not per connection
        self._on_closed = self._tcp_closed

    # --- Component ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Configured, serving, and listening on every service address it should: a
        listener that cannot bind makes the node not ready (the reason says which)."""
        return (
            self._config is not None and self._listen_nursery is not None and not self._bind_errors
        )

    def not_ready_reason(self) -> str | None:
        if self._config is None:
            return "no config yet"
        if not self._bind_errors:
            return None if self._listen_nursery is not None else "not started"
        key, err = sorted(self._bind_errors.items())[0]
        more = len(self._bind_errors) - 1
        return f"cannot listen on {listen_name(key)}: {err}" + (
            f", and {more} more" if more else ""
        )

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
            self._reconcile(self._touched())
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
        self.local_routes.install()  # one netlink round trip per range: fast enough inline
        try:
            async with trio.open_nursery() as conns:
                await conns.start(self._relay.run)
                conns.start_soon(self._expire_connects)
                conns.start_soon(self._retry_binds)
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
            self._counts.clear()
            self._abort_connects()
            self._listen_nursery = None
            self.local_routes.remove()

    # --- listeners ---------------------------------------------------------------------

    async def _retry_binds(self) -> None:
        """An address another process held may free up: try failed binds again now and then
        (each failure is logged again only when its reason changes)."""
        while True:
            await trio.sleep(self.bind_retry)
            if self._bind_errors and self._listen_nursery is not None:
                self._reconcile(set(self._bind_errors), retry=True)

    def _desired(self) -> set[ListenKey]:
        want: set[ListenKey] = set()
        for (ip, port, proto), backend in self._table.vips.items():
            if self.local_routes.unroutable(ip):
                continue  # said once at start: answered in DNS, not proxied
            if proto == "TCP" or (proto == "UDP" and backend.endpoints):
                want.add(("vip", ip, port, proto))
        taken = {(ip, port, proto) for _, ip, port, proto in want}
        node_family = family_of(self.node_ip)
        for (port, proto, family), backend in self._table.node_ports.items():
            if family != node_family:
                continue  # the NodePort of the other family: not on this node address
            if (proto == "TCP" or (proto == "UDP" and backend.endpoints)) and (
                self.node_ip,
                port,
                proto,
            ) not in taken:
                want.add(("node", self.node_ip, port, proto))
        return want

    def _wanted(self, key: ListenKey) -> bool:
        """Whether ``key`` is in ``_desired()``, for one key (an edit's reconcile)."""
        kind, ip, port, proto = key
        if kind == "vip":
            backend = self._table.vips.get((ip, port, proto))
            if backend is None or self.local_routes.unroutable(ip):
                return False
        else:
            backend = self._table.node_ports.get((port, proto, family_of(ip)))
            if backend is None or ip != self.node_ip or self._wanted(("vip", ip, port, proto)):
                return False  # a Service address on the node address takes the socket
        return proto == "TCP" or bool(backend.endpoints)

    def _touched(self) -> set[ListenKey] | None:
        """The listeners the last build may have changed (None: any of them)."""
        vips, node_ports = self._table.changed_vips, self._table.changed_node_ports
        if vips is None or node_ports is None:
            return None
        keys: set[ListenKey] = set()
        for ip, port, proto in vips:
            keys.add(("vip", ip, port, proto))
            if ip == self.node_ip:  # it may take or free the NodePort's socket
                keys.add(("node", ip, port, proto))
        for port, proto, _ in node_ports:
            keys.add(("node", self.node_ip, port, proto))
        return keys

    def _reconcile(self, keys: set[ListenKey] | None = None, retry: bool = False) -> None:
        """Bind what the table wants and close the rest: every listener, or only ``keys``
        (those an edit may have changed)."""
        if keys is None:
            want = self._desired()
            stale = set(self._listeners) - want
            missing = want - set(self._listeners)
            self._bind_errors = {k: v for k, v in self._bind_errors.items() if k in want}
        else:
            want = {k for k in keys if self._wanted(k)}
            stale = {k for k in keys - want if k in self._listeners}
            missing = {k for k in want if k not in self._listeners}
            for key in keys - want:
                self._bind_errors.pop(key, None)
        for key in sorted(stale):
            self._listeners.pop(key).close()
            self._counts[key[3]] -= 1
            log.info("listener closed", extra={"address": listen_name(key)})
        failed = False
        for key in sorted(missing):
            try:
                listener = self._bind(key)
            except OSError as exc:
                failed = True
                reason = exc.strerror or str(exc)
                if self._bind_errors.get(key) != reason:
                    log.error(
                        "cannot listen on a service address; not ready",
                        extra={"address": listen_name(key), "error": reason},
                    )
                self._bind_errors[key] = reason
                continue
            self._bind_errors.pop(key, None)
            self._listeners[key] = listener
            self._counts[key[3]] += 1
            if listener.udp is not None:
                assert self._listen_nursery is not None
                self._listen_nursery.start_soon(self._serve, listener)
            else:
                self._watch_listener(listener)
        if failed and not retry:
            self.metrics.sync_errors.inc()
        for proto in ("TCP", "UDP"):
            self.metrics.listeners.labels(proto).set(self._counts[proto])

    def _bind(self, key: ListenKey) -> Listener:
        _, ip, port, proto = key
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        raw = socket.socket(family, kind)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.local_routes.routes(ip):
                # An IPv6 ClusterIP is local by route only, not assigned to lo (see
                # local_routes): bind it as a free (not yet configured) address.
                raw.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
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
        listener = Listener(key, raw)
        if proto == "UDP":
            listener.udp = UdpListener(
                trio.socket.from_stdlib_socket(raw),
                lambda: self._backend(key),
                self.metrics,
                self.udp_idle_timeout,
            )
        log.info("listening", extra={"address": listen_name(key)})
        return listener

    def _backend(self, key: ListenKey) -> Backend | None:
        kind, ip, port, proto = key
        if kind == "vip":
            return self._table.lookup(ip, port, proto)
        return self._table.lookup_node_port(port, proto, family_of(ip))

    async def _serve(self, listener: Listener) -> None:
        with listener.scope:
            try:
                if listener.udp is not None:
                    await listener.udp.serve()
            except trio.ClosedResourceError:
                pass  # closed by a reconcile
