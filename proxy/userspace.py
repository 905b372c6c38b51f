"""The userspace proxy: a listener per virtual IP:port, no privilege needed.

Every ClusterIP, external IP and load-balancer IP port of the service table gets a listening
socket on that address (all of 127.0.0.0/8 is local on Linux, so loopback virtual IPs need no
setup); every NodePort gets one on the node address. A new TCP connection picks an endpoint
from the live table at accept time, connects (trying the next endpoint in round-robin order
when a connect fails, a bounded number of times: the pure decision of mesh.attempts, which the
L7 engine shares) and relays (tcp_relay): the reactor here only moves bytes. UDP is per client
session (udp_relay). A virtual address of one family goes to endpoints of that family only
(the service table keeps a Backend per family).

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
import errno
import functools
import logging
import os
import select
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from mesh.attempts import ConnectPlan
from mesh.config.proxy import ProxyConfig
from mesh.endpoint_policy import family_of
from mesh.proxy.backend import Backend, Endpoint
from mesh.proxy.local_routes import IP_FREEBIND, LocalRoutes
from mesh.proxy.metrics import ProxyMetrics
from mesh.proxy.table import ServiceTable
from mesh.proxy.tcp_relay import SPLICE, Handler, Relay, reset
from mesh.proxy.udp_relay import UdpListener

log = logging.getLogger("mesh.proxy")

ListenKey = tuple[Literal["vip", "node"], str, int, str]  # kind, ip, port, protocol
_ACCEPT_BURST = 64  # connections accepted per wakeup before other sockets get a turn
_ACCEPT_BACKOFF = 0.1  # seconds a listener rests after accept failed (EMFILE and friends)
_DEADLINE_TICK = 0.01  # seconds: connect timeouts fire at most this late
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
# a connect in progress: (upstream, client, its connect plan (the endpoints tried, the last one
# being the one it connects to), backend, serial number)
_Attempt = tuple[socket.socket, socket.socket, ConnectPlan[Endpoint], Backend, int]


@dataclass(eq=False)
class _Listener:
    key: ListenKey
    sock: socket.socket  # non-blocking
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    udp: UdpListener | None = None  # UDP: its own task; TCP: watched by the relay
    relay: Relay | None = None

    def close(self) -> None:
        self.scope.cancel()
        if self.relay is not None:
            self.relay.unwatch(self.sock.fileno())
        else:
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
        self._listeners: dict[ListenKey, _Listener] = {}
        self._counts: Counter[str] = Counter()  # listeners by protocol (for the gauge)
        self._bind_errors: dict[ListenKey, str] = {}
        self._listen_nursery: trio.Nursery | None = None
        self._connecting: dict[int, _Attempt] = {}  # by upstream file descriptor
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
        return f"cannot listen on {_fmt(key)}: {err}" + (f", and {more} more" if more else "")

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
            log.info("listener closed", extra={"address": _fmt(key)})
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
                        extra={"address": _fmt(key), "error": reason},
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

    def _bind(self, key: ListenKey) -> _Listener:
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
        return self._table.lookup_node_port(port, proto, family_of(ip))

    async def _serve(self, listener: _Listener) -> None:
        with listener.scope:
            try:
                if listener.udp is not None:
                    await listener.udp.serve()
            except trio.ClosedResourceError:
                pass  # closed by a reconcile

    # --- TCP connections ---------------------------------------------------------------
    #
    # Accepting, picking and connecting run in the relay's reactor, with no task per
    # connection: a listening socket is watched for EPOLLIN, a connect in progress for
    # EPOLLOUT (SO_ERROR then says how it went). An attempt is a tuple; its connect timeout
    # is an entry in a deque that one task (``_expire_connects``) works through. Every
    # attempt gets the same timeout, so the deque is in deadline order (were
    # ``connect_timeout`` changed, an entry would at worst wait for the one before it).

    def _accept(self, listener: _Listener, fd: int, mask: int) -> None:
        """Accept what the backlog holds (a bounded burst: the listener stays readable and
        level triggering reports it again)."""
        lsock, key = listener.sock, listener.key
        flows = self._flows
        for _ in range(_ACCEPT_BURST):
            try:
                conn, addr = lsock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: back off, keep the listener
                log.warning("accept failed", extra={"address": _fmt(key), "error": str(exc)})
                self._relay.unwatch(lsock.fileno())
                assert self._listen_nursery is not None
                self._listen_nursery.start_soon(self._resume, listener)
                return
            flows.flows["TCP"] += 1
            flows.active["TCP"] += 1
            conn.setblocking(False)
            backend = self._backend(key)
            if backend is None:
                self._reject(conn)
            else:
                self._attempt(conn, self._plan(backend, addr[0]), backend)

    def _plan(self, backend: Backend, client_ip: str) -> ConnectPlan[Endpoint]:
        now = trio.current_time()
        return ConnectPlan(
            lambda tried: backend.pick(client_ip, now, exclude=tried),
            len(backend.endpoints),
            self.connect_attempts,
        )

    def _watch_listener(self, listener: _Listener) -> None:
        listener.relay = self._relay
        self._relay.watch(listener.sock.fileno(), _IN, functools.partial(self._accept, listener))

    async def _resume(self, listener: _Listener) -> None:
        await trio.sleep(_ACCEPT_BACKOFF)
        if self._listeners.get(listener.key) is listener:
            self._watch_listener(listener)

    def _attempt(self, conn: socket.socket, plan: ConnectPlan[Endpoint], backend: Backend) -> None:
        """Connect to the next endpoint the plan gives; reject when none is left."""
        try:
            now = trio.current_time()
            while (picked := plan.next()) is not None:  # bounded: the plan's limit
                try:
                    err = self._connect(conn, plan, backend, now)
                except OSError as exc:  # no socket to be had (EMFILE and friends)
                    err = exc.errno or errno.EIO
                if err == 0 or err == errno.EINPROGRESS:
                    return
                self._connect_failed(backend, picked, err)
        except Exception:  # one broken flow must never take the proxy down
            log.exception("connection failed", extra={"service": str(backend.service)})
        self._reject(conn)

    def _connect(
        self, conn: socket.socket, plan: ConnectPlan[Endpoint], backend: Backend, now: float
    ) -> int:
        """Connect to the plan's current endpoint: 0 when connected at once (relayed from
        here on), EINPROGRESS when under way (watched), else the error."""
        endpoint = plan.current
        family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
        up = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = up.connect_ex(endpoint)
            if err == errno.EINPROGRESS:
                fd = up.fileno()
                self._serial = serial = self._serial + 1
                self._relay.watch(fd, _OUT, self._on_connect)
                self._connecting[fd] = (up, conn, plan, backend, serial)
                if not self._deadlines:
                    self._deadline_lot.unpark()
                self._deadlines.append((now + self.connect_timeout, fd, serial))
                return err
        except BaseException:
            up.close()
            raise
        if err:
            up.close()
        else:
            self._established(up, conn, backend, endpoint)
        return err

    def _connected(self, fd: int, mask: int) -> None:
        attempt = self._connecting.pop(fd, None)
        if attempt is None:
            return
        up, conn, plan, backend, _ = attempt
        err = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            if not mask & _OUT:  # not connected yet after all: keep waiting
                self._connecting[fd] = attempt
                return
            self._established(up, conn, backend, plan.current)
            return
        self._next_endpoint(fd, attempt, err)

    def _next_endpoint(self, fd: int, attempt: _Attempt, err: int) -> None:
        up, conn, plan, backend, _ = attempt
        self._relay.unwatch(fd)
        up.close()
        self._connect_failed(backend, plan.current, err)
        self._attempt(conn, plan, backend)

    async def _expire_connects(self) -> None:
        """Time out connects still in progress at their deadline (checked at most every
        ``_DEADLINE_TICK`` seconds, so a steady stream of connects costs few wakeups)."""
        deadlines, connecting = self._deadlines, self._connecting
        while True:
            if not deadlines:
                await self._deadline_lot.park()
                continue
            await trio.sleep_until(max(deadlines[0][0], trio.current_time() + _DEADLINE_TICK))
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                _, fd, serial = deadlines.popleft()
                attempt = connecting.get(fd)
                if attempt is None or attempt[4] != serial:
                    continue  # connected or failed already
                del connecting[fd]
                self._next_endpoint(fd, attempt, errno.ETIMEDOUT)

    def _established(
        self, up: socket.socket, conn: socket.socket, backend: Backend, picked: Endpoint
    ) -> None:
        service = backend.service
        self._flows.picked(service.namespace, service.name, picked)
        self._relay.add(conn, up, self._on_closed)

    def _connect_failed(self, backend: Backend, endpoint: Endpoint, err: int) -> None:
        self._flows.connect_errors += 1
        log.info(
            "endpoint connect failed, trying the next",
            extra={
                "service": str(backend.service),
                "endpoint": endpoint,
                "error": os.strerror(err),
            },
        )

    def _reject(self, conn: socket.socket) -> None:
        flows = self._flows
        flows.rejects["TCP"] += 1
        flows.active["TCP"] -= 1
        reset(conn)  # refused at once, not left to time out

    def _tcp_closed(self) -> None:
        self._flows.active["TCP"] -= 1

    def _abort_connects(self) -> None:
        """At shutdown: reset the clients whose connects are still in progress."""
        for up, conn, *_ in self._connecting.values():
            up.close()
            self._flows.active["TCP"] -= 1
            reset(conn)
        self._connecting.clear()
        self._deadlines.clear()


def _fmt(key: ListenKey) -> str:
    _, ip, port, proto = key
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}/{proto}"
