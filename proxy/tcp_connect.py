"""The userspace proxy's TCP connection path (proxy/userspace.py holds the listeners): accept,
pick an endpoint, connect, retry the next endpoint when a connect fails or times out (the
pure decision of mesh.attempts), then hand the pair to the relay (tcp_relay).

All of it runs in the relay's reactor, with no task per connection; :class:`TcpConnector` is
a base of :class:`~mesh.proxy.userspace.UserspaceProxy`, which owns the state it declares.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import socket
from collections import deque
from collections.abc import Callable

import trio

from mesh.attempts import ConnectPlan
from mesh.proxy.backend import Backend, Endpoint
from mesh.proxy.listener import Listener, ListenKey, listen_name
from mesh.proxy.metrics import FlowCounters
from mesh.proxy.tcp_relay import Handler, Relay, reset

log = logging.getLogger("mesh.proxy")

_ACCEPT_BURST = 64  # connections accepted per wakeup before other sockets get a turn
_ACCEPT_BACKOFF = 0.1  # seconds a listener rests after accept failed (EMFILE and friends)
_DEADLINE_TICK = 0.01  # seconds: connect timeouts fire at most this late
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
# a connect in progress: (upstream, client, its connect plan (the endpoints tried, the last one
# being the one it connects to), backend, serial number)
Attempt = tuple[socket.socket, socket.socket, ConnectPlan[Endpoint], Backend, int]


class TcpConnector:
    """Accepting, picking and connecting, as methods of the proxy (see the module docstring)."""

    # The proxy's state this part uses (set in UserspaceProxy.__init__).
    connect_timeout: float
    connect_attempts: int
    _flows: FlowCounters
    _relay: Relay
    _listeners: dict[ListenKey, Listener]
    _listen_nursery: trio.Nursery | None
    _connecting: dict[int, Attempt]
    _deadlines: deque[tuple[float, int, int]]
    _serial: int
    _deadline_lot: trio.lowlevel.ParkingLot
    _on_connect: Handler
    _on_closed: Callable[[], None]

    def _backend(self, key: ListenKey) -> Backend | None:
        raise NotImplementedError  # the proxy's: a lookup in its live table

    # Accepting, picking and connecting run in the relay's reactor, with no task per
    # connection: a listening socket is watched for EPOLLIN, a connect in progress for
    # EPOLLOUT (SO_ERROR then says how it went). An attempt is a tuple; its connect timeout
    # is an entry in a deque that one task (``_expire_connects``) works through. Every
    # attempt gets the same timeout, so the deque is in deadline order (were
    # ``connect_timeout`` changed, an entry would at worst wait for the one before it).

    def _accept(self, listener: Listener, fd: int, mask: int) -> None:
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
                log.warning("accept failed", extra={"address": listen_name(key), "error": str(exc)})
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

    def _watch_listener(self, listener: Listener) -> None:
        listener.relay = self._relay
        self._relay.watch(listener.sock.fileno(), _IN, functools.partial(self._accept, listener))

    async def _resume(self, listener: Listener) -> None:
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

    def _next_endpoint(self, fd: int, attempt: Attempt, err: int) -> None:
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
