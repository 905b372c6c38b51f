"""Forwarded questions over kept-open UDP sockets, driven by the server's receive loop.

Theory of operation. ``ask`` takes a question and a callback (the UDP relay: ``ask_key`` and
a ``UdpWaiter`` tuple, which ``answer_udp`` answers); the answer (or None: SERVFAIL) comes
back through it, at once from the question cache, or later from ``poll``
(a reply arrived) or ``sweep`` (a timeout moved the exchange to the next upstream, or gave
up). Nothing here waits: the server's UDP loop waits on ``fileno()`` (an epoll set holding the
listening socket, every upstream socket and the eventfd ``wake`` writes to) and calls ``poll``
and ``sweep``; no task, no socket and no epoll registration per forwarded query.

- Identical questions in flight share one exchange: later askers add their waiter.
- Upstreams are tried in the ``Pool``'s order (policy, health), each within ``timeout``;
  a SERVFAIL or REFUSED makes the next one try, a truncated reply is asked again over TCP
  (a task: rare), and when every upstream fails an entry in its ``serve_stale`` window, or
  else the last SERVFAIL/REFUSED, answers.
- Anti-spoofing (RFC 5452). Each upstream has up to ``PORTS_PER_UPSTREAM`` UDP sockets
  connected to it, so the kernel drops datagrams from any other address (and the source is
  checked again); each is bound by the kernel to a random ephemeral port (Linux picks UDP
  ephemeral ports at random) and retired after ``PORT_QUERIES`` queries or ``PORT_SECONDS``
  seconds, so its port keeps changing. Every query has a random 16-bit ID unused on its socket;
  a reply counts only on the socket it was sent on, with that ID, the QR bit and our question.
  Anything else is dropped (counted as ``stray``): it can neither answer a client nor enter
  the cache.

The trade-off. unbound opens a socket on a fresh random port for every query (about 16 bits
of port entropy on top of the ID); dnsmasq keeps up to 64 random-port sockets and shares
them between queries; CoreDNS's ``forward`` reuses persistent connections per upstream
(expiring after 10 s of idleness) with a random ID each. A socket per query costs
``socket``, ``connect``, an epoll registration and a ``close`` per query, the largest part of
a forwarded query's CPU in Python. We take CoreDNS's and dnsmasq's side: an off-path forger
must hit one of a few open ports (changing every few thousand queries) and the 16-bit ID,
which is weaker than unbound's per-query port, and much stronger than a fixed port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mesh.dns.forward_cache import STALE_TTL, with_ttls
from mesh.dns.layout import HEADER, Layout, opt_record, scan
from mesh.dns.pool import ONE, Address
from mesh.dns.upstream import (
    RCODE_REASONS,
    RETRY_RCODES,
    UPSTREAM_PAYLOAD,
    Answer,
    Forwarder,
    matches,
    new_id,
    question_key,
)

log = logging.getLogger("mesh.dns.outbound")

PORTS_PER_UPSTREAM = 8  # sockets open to one upstream at a time
PORT_QUERIES = 4096  # queries one socket sends before it is retired
PORT_SECONDS = 60.0  # seconds one socket is used before it is retired
DRAIN = 256  # replies read from one socket per poll: the loop must get back to the clients

_OPT = opt_record(UPSTREAM_PAYLOAD)

Waiter = Callable[[Answer | None], None]
# A UDP client's query waiting (the relay's ``udp_answered`` reads it): a tuple, not a closure
# per forwarded query (a closure is a function and a cell per variable, each one more object
# for the collector to track)
UdpWaiter = tuple[Any, ...]
# what the TCP fallback is handed: the exchange and the upstream's index
SpawnTcp = Callable[["Exchange", int], None]


class _Port:
    """One UDP socket connected to one upstream, and the exchanges waiting on it by ID."""

    __slots__ = (
        "born",
        "fd",
        "peer",
        "pending",
        "retired",
        "sent",
        "sock",
        "upstream",
    )

    def __init__(self, upstream: int, address: Address, now: float) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)  # binds a random ephemeral port; filters other sources
            # what replies come from: ``localhost`` (accepted by --upstream) is 127.0.0.1 there
            self.peer = sock.getpeername()[:2]
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.upstream = upstream
        self.born = now
        self.sent = 0
        self.retired = False
        self.pending: dict[bytes, Exchange] = {}


class Exchange:
    """One question on its way through the upstreams, and everyone waiting for it."""

    __slots__ = (
        "attempt",
        "body",
        "done",
        "fallback",
        "id",
        "key",
        "order",
        "port",
        "qend",
        "question",
        "tcp",
        "waiters",
        "wire",
    )

    def __init__(self, key: bytes, question: bytes, cd: bool, order: list[int]) -> None:
        self.key = key
        self.question = question  # the name in lower case, type, class
        flags = b"\x01\x10" if cd else b"\x01\x00"
        # everything after the ID: a new random ID goes in front for every attempt
        self.body = flags + b"\x00\x01\x00\x00\x00\x00\x00\x01" + question + _OPT
        self.qend = HEADER + len(question)
        self.order = order
        self.attempt = 0
        self.port: _Port | None = None
        self.id = b""
        self.wire = b""
        self.tcp = False  # the truncated reply is being asked again over TCP
        self.done = False
        self.fallback: Answer | None = None
        self.waiters: list[Waiter | UdpWaiter] = []


class Outbound:
    def __init__(
        self,
        forwarder: Forwarder,
        listen_fd: int,
        spawn_tcp: SpawnTcp,
        timer: Callable[[], float] = time.monotonic,
        answer_udp: Callable[[Answer | None, UdpWaiter], None] | None = None,
    ) -> None:
        self.forwarder = forwarder
        # what answers a ``UdpWaiter`` (the relay's ``udp_answered``)
        self._answer_udp = answer_udp
        self._single = len(forwarder.pool.addresses) == 1  # its order: no call per query
        self._questions = forwarder.cache.entries  # the question cache's dict
        self._timer = timer  # deadlines (the loop's clock); the caches use forwarder.clock
        self.epoll = select.epoll()
        self.epoll.register(listen_fd, select.EPOLLIN)
        self._listen_fd = listen_fd
        self._spawn_tcp = spawn_tcp
        self.ports: dict[int, _Port] = {}  # by file descriptor
        self._open: list[list[_Port]] = [[] for _ in forwarder.pool.addresses]
        self._next = 0  # which open socket the next query uses
        self.inflight: dict[bytes, Exchange] = {}
        # (deadline, exchange, attempt): one timeout for all, so this is in deadline order
        self._timeouts: deque[tuple[float, Exchange, int]] = deque()
        # ``wake``: a task added an exchange (or a TCP retry ended) while the loop waits with
        # an older deadline or none; the eventfd in the epoll set makes the loop look again
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wakeup, select.EPOLLIN)
        self.woken = False

    def fileno(self) -> int:
        return self.epoll.fileno()

    def wake(self) -> None:
        """Make the loop's wait end (it then polls and takes the new deadlines in)."""
        if not self.woken:
            self.woken = True
            os.eventfd_write(self._wakeup, 1)

    def close(self) -> None:
        for port in list(self.ports.values()):
            self._close(port)
        self.epoll.close()
        os.close(self._wakeup)

    # --- asking ------------------------------------------------------------------------

    def ask(self, question: bytes, cd: bool, waiter: Waiter, now: float) -> None:
        """Answer ``question`` through ``waiter``: now from the cache, or when it is known."""
        self.ask_key(question_key(question, cd), cd, waiter, now)

    def ask_key(self, key: bytes, cd: bool, waiter: Waiter | UdpWaiter, now: float) -> None:
        """``ask`` by the question's key (``question_key``: the UDP relay makes it from the
        name it already holds in lower case); ``waiter`` a callable or a ``UdpWaiter``."""
        f = self.forwarder
        if key in self._questions:  # else a miss without a call (usual: a name asked once)
            cached = f.cached(key, now)
            if cached is not None:
                self._deliver(waiter, cached)
                return
        ex = self.inflight.get(key)
        if ex is not None:
            f.metrics.forward_shared += 1
            ex.waiters.append(waiter)
            return
        f.metrics.cache_misses["forward"] += 1
        order = ONE if self._single else f.pool.order()
        ex = self.inflight[key] = Exchange(key, key[:-1], cd, order)  # lower case
        ex.waiters.append(waiter)
        self._send(ex, now)

    def next_deadline(self) -> float | None:
        """When ``sweep`` has work next (on ``timer``'s clock), None when nothing waits."""
        timeouts = self._timeouts
        while timeouts and (timeouts[0][1].done or timeouts[0][1].attempt != timeouts[0][2]):
            timeouts.popleft()  # answered, or moved on: nothing to time out
        return timeouts[0][0] if timeouts else None

    def _send(self, ex: Exchange, now: float) -> None:
        f = self.forwarder
        # Every attempt starts over UDP: a flag left from an earlier upstream's TCP retry
        # would make ``sweep`` skip this attempt's timeout, and the askers wait forever.
        ex.tcp = False
        while ex.attempt < len(ex.order):
            i = ex.order[ex.attempt]
            try:
                live = self._open[i]
                if len(live) < PORTS_PER_UPSTREAM:
                    port = self._new_port(i, now)
                else:  # take the open ports in turn; a worn one is replaced
                    self._next += 1
                    port = live[self._next % len(live)]
                    if port.sent >= PORT_QUERIES or now - port.born >= PORT_SECONDS:
                        self._retire(port)
                        port = self._new_port(i, now)
                qid = new_id()
                while qid in port.pending:  # unique per socket: a reply names one exchange
                    qid = new_id()
                wire = qid + ex.body
                port.sock.send(wire)
            except OSError as exc:
                f.failed(i, "network", str(exc))
                ex.attempt += 1
                continue
            port.sent += 1
            port.pending[qid] = ex
            ex.port, ex.id, ex.wire = port, qid, wire
            self._timeouts.append((self._timer() + f.timeout, ex, ex.attempt))
            return
        self._give_up(ex, now)

    def _new_port(self, i: int, now: float) -> _Port:
        port = _Port(i, self.forwarder.pool.addresses[i], now)
        self.ports[port.fd] = port
        self.epoll.register(port.fd, select.EPOLLIN)
        self._open[i].append(port)
        return port

    def _retire(self, port: _Port) -> None:
        """No new queries on ``port``; it closes once its last reply came or timed out."""
        if not port.retired:
            port.retired = True
            self._open[port.upstream].remove(port)
        if not port.pending:
            self._close(port)

    def _close(self, port: _Port) -> None:
        if self.ports.pop(port.fd, None) is not None:
            self.epoll.unregister(port.fd)
            port.sock.close()

    # --- replies and timeouts ------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Read what the upstream sockets hold (the loop calls this when any is readable)."""
        if self.woken:
            self.woken = False
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wakeup)
        ports = self.ports
        for fd, _ in self.epoll.poll(0):
            port = ports.get(fd)
            if port is not None:
                self._drain(port, now)

    def _drain(self, port: _Port, now: float) -> None:
        recvfrom = port.sock.recvfrom
        metrics = self.forwarder.metrics
        for _ in range(DRAIN):
            try:
                data, source = recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ICMP port unreachable: this upstream is not there
                self._port_failed(port, str(exc), now)
                return
            ex = port.pending.get(data[:2])  # our ID on this socket
            layout = None
            if ex is not None and len(data) > HEADER and data[2] & 0x80:  # a response (QR)
                qend = ex.qend
                if data[HEADER:qend] == ex.question:  # echoed byte for byte: the usual reply
                    layout = scan(data, qend)
                else:
                    layout = matches(data, ex.wire, qend)  # another case (0x20), or not ours
            if ex is None or layout is None or source[:2] != port.peer:
                metrics.forward_errors["stray"] += 1  # forged, late or broken: never used
                continue
            del port.pending[ex.id]
            ex.port = None
            self._answered(ex, port.upstream, data, layout, now)
        if port.retired and not port.pending:
            self._close(port)

    def _port_failed(self, port: _Port, detail: str, now: float) -> None:
        self._retire(port)
        waiting = list(port.pending.values())
        port.pending.clear()
        self._close(port)
        for ex in waiting:
            ex.port = None
            self.forwarder.failed(port.upstream, "network", detail)
            ex.attempt += 1
            self._send(ex, now)

    def sweep(self, now: float) -> None:
        """Move every exchange whose upstream did not answer in time to the next one."""
        timeouts = self._timeouts
        if not timeouts:
            return
        late = self._timer()
        while timeouts and timeouts[0][0] <= late:
            _, ex, attempt = timeouts.popleft()
            if ex.done or ex.attempt != attempt or ex.tcp:
                continue
            port = ex.port
            if port is not None:
                port.pending.pop(ex.id, None)
                ex.port = None
                if port.retired and not port.pending:
                    self._close(port)
            self.forwarder.failed(ex.order[attempt], "timeout")
            ex.attempt += 1
            self._send(ex, now)

    def _answered(self, ex: Exchange, i: int, data: bytes, layout: Layout, now: float) -> None:
        f = self.forwarder
        if layout.tc and not ex.tcp:
            ex.tcp = True
            self._spawn_tcp(ex, i)
            return
        if layout.rcode in RETRY_RCODES:
            # the upstream is alive: its answer for this name is bad, not its health
            f.metrics.forward_errors[RCODE_REASONS[layout.rcode]] += 1
            ex.fallback = ex.fallback or Answer(data, layout, layout.ttls, 0)
            ex.attempt += 1
            self._send(ex, now)
            return
        if f.pool.fails[i]:  # else nothing to reset (the usual case: no call)
            f.succeeded(i)
        keep = f.cache.keep_for(layout)
        f.cache.put(ex.key, data, layout.ttls, ex.qend, ttl=keep, now=now)
        self._finish(ex, Answer(data, layout, layout.ttls, keep))

    def tcp_done(self, ex: Exchange, i: int, got: tuple[bytes, Layout] | str, now: float) -> None:
        """The TCP fallback's result: the reply, or the failure's metrics reason."""
        if ex.done:
            return
        if isinstance(got, str):
            ex.tcp = False
            self.forwarder.failed(i, got)
            ex.attempt += 1
            self._send(ex, now)
            return
        self._answered(ex, i, got[0], got[1], now)

    def _give_up(self, ex: Exchange, now: float) -> None:
        f = self.forwarder
        answer = ex.fallback
        stale = f.cache.stale(ex.key, now)
        found = scan(stale.wire) if stale is not None else None
        if stale is not None and found is not None:
            f.metrics.cache_hits["stale"] += 1
            wire = bytes(with_ttls(stale.wire, stale.ttls, 0, fixed=STALE_TTL))
            ttls = tuple((o, STALE_TTL) for o, _ in stale.ttls)
            answer = Answer(wire, found, ttls, 0, stale=True)
        self._finish(ex, answer)

    def _finish(self, ex: Exchange, answer: Answer | None) -> None:
        ex.done = True
        self.inflight.pop(ex.key, None)
        answer_udp = self._answer_udp
        for waiter in ex.waiters:
            if type(waiter) is tuple and answer_udp is not None:  # ``_deliver``, no call
                try:
                    answer_udp(answer, waiter)
                except Exception:  # one client's bug must not cost the others their answer
                    log.exception("answering a forwarded query failed")
            else:
                self._deliver(waiter, answer)

    def _deliver(self, waiter: Waiter | UdpWaiter, answer: Answer | None) -> None:
        try:
            if type(waiter) is tuple:
                assert self._answer_udp is not None  # who asked with one set it
                self._answer_udp(answer, waiter)
            else:
                waiter(answer)  # type: ignore[operator]
        except Exception:  # one client's bug must not cost the others their answer
            log.exception("answering a forwarded query failed")
