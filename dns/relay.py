"""The server's forwarding side (trio shell): queries handed to the upstreams, and the tasks that
wait for them.

A UDP query of a name outside the zone is handed to ``Outbound`` with a waiter tuple
(``forward_udp``), and ``udp_answered`` sends the reply: no task, no closure. The rarer kinds
wait in tasks: an ExternalName target outside the zone (``chase``), an autopath walk
(``walk``), a TCP client (``forward``), and the TCP retry of a truncated upstream reply
(``spawn_tcp``). All count against ``max_forwards`` (beyond it: SERVFAIL at once, counted as
``overload``), and a bug costs one SERVFAIL.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from mesh.dns.autopath import AutopathWalk
from mesh.dns.forwarding import ForwardPath
from mesh.dns.metrics import DnsMetrics
from mesh.dns.outbound import Exchange, Outbound, UdpWaiter
from mesh.dns.packet import FORMERR, REFUSED, SERVFAIL, header_reply
from mesh.dns.responder import Forward, Reply, Responder
from mesh.dns.upstream import Answer, Forwarder, UpstreamError, exchange_tcp, question_key

log = logging.getLogger("mesh.dns.server")


def send(sock: socket.socket, wire: bytes, addr: Any, metrics: DnsMetrics) -> None:
    try:
        sock.sendto(wire, addr)
    except OSError:
        metrics.dropped["send"] += 1


class Relay:
    def __init__(
        self,
        path: ForwardPath,
        metrics: DnsMetrics,
        responder: Callable[[], Responder],
        *,
        max_forwards: int,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.metrics = metrics
        self.responder = responder  # the live config's
        self.max_forwards = max_forwards
        self.clock = clock
        self.in_flight = 0
        self.nursery: trio.Nursery | None = None
        self.outbound: Outbound | None = None  # while the UDP loop runs

    @property
    def forwarder(self) -> Forwarder:
        return self.path.forwarder

    def wake(self) -> None:
        """A task added an exchange: the UDP loop must take its deadline into account."""
        if self.outbound is not None:
            self.outbound.wake()

    def send(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        send(sock, wire, addr, self.metrics)

    def forward_udp(
        self,
        sock: socket.socket,
        data: bytes,
        addr: Any,
        fwd: Forward,
        responder: Responder,
        start: float,
    ) -> None:
        """Hand ``fwd`` to the upstream exchanges; the reply is sent when the answer is known
        (at once from the question cache) by ``udp_answered``: no task, no closure."""
        outbound = self.outbound
        if outbound is None or not self.path.forwarder.pool.addresses:
            self._reply_now(sock, addr, responder.failure(fwd.query, REFUSED, tcp=False), start)
            return
        qend = fwd.qend or self.path.question_end(data)
        if not qend:
            self._reply_now(sock, addr, responder.failure(fwd.query, FORMERR, tcp=False), start)
            return
        if self.in_flight >= self.max_forwards:
            # the bound on queries in flight: SERVFAIL at once, counted
            self.metrics.forward_errors["overload"] += 1
            self._reply_now(sock, addr, responder.failure(fwd.query, SERVFAIL, tcp=False), start)
            return
        self.in_flight += 1
        self.metrics.forwards_in_flight = self.in_flight
        cd = data[3] & 0x10
        name = fwd.wire_name  # lower case when classified from bytes: the key without a call
        if name:
            key = name + data[qend - 4 : qend] + (b"\x01" if cd else b"\x00")
        else:
            key = question_key(data[12:qend], bool(cd))
        waiter = (sock, data, addr, fwd, qend, responder, start)
        outbound.ask_key(key, bool(cd), waiter, self.clock())

    def udp_answered(self, got: Answer | None, waiter: UdpWaiter) -> None:
        """The reply to a ``forward_udp`` query from the upstream's answer (None: SERVFAIL),
        sent: ``_relayed`` and ``send`` inlined, a pair instead of a Reply, once per query."""
        sock, data, addr, fwd, qend, responder, start = waiter
        self.in_flight -= 1
        metrics = self.metrics
        metrics.forwards_in_flight = self.in_flight
        try:
            wire, label = self.path.reply_udp(fwd, data, qend, got, responder)
        except Exception:
            log.exception("forwarding failed")
            failure = self._internal_error(fwd, data, responder, tcp=False)
            wire, label = failure.wire, failure.label
        metrics.queries[label] += 1
        try:
            sock.sendto(wire, addr)
        except OSError:
            metrics.dropped["send"] += 1
        metrics.latency["forward"].observe(time.perf_counter() - start)

    def _reply_now(self, sock: socket.socket, addr: Any, reply: Reply, start: float) -> None:
        self.send(sock, reply.wire, addr)
        self.metrics.queries[reply.label] += 1
        self.metrics.latency["forward"].observe(time.perf_counter() - start)

    def _relayed(
        self,
        fwd: Forward,
        data: bytes,
        qend: int,
        got: Answer | None,
        responder: Responder,
        *,
        tcp: bool,
    ) -> Reply:
        """The reply to a forwarded query from the upstream's answer, counted; a bug (or an
        upstream answer we cannot re-encode) costs one SERVFAIL."""
        try:
            reply = self.path.reply(fwd, data, qend, got, responder, tcp=tcp)
        except Exception:
            log.exception("forwarding failed")
            reply = self._internal_error(fwd, data, responder, tcp=tcp)
        self.metrics.queries[reply.label] += 1
        return reply

    def _internal_error(
        self, fwd: Forward, data: bytes, responder: Responder, *, tcp: bool
    ) -> Reply:
        self.metrics.forward_errors["internal"] += 1
        try:
            return responder.failure(fwd.query, SERVFAIL, tcp=tcp)
        except ValueError:  # dnslib cannot read it: a SERVFAIL from the header alone
            return Reply(header_reply(data, SERVFAIL), ("other", "SERVFAIL"))

    def spawn_tcp(self, ex: Exchange, i: int) -> None:
        """A truncated upstream reply: the same question again over TCP, in a task."""
        if self.nursery is None:
            self._finish_tcp(ex, i, "network")
            return
        self.nursery.start_soon(self._exchange_tcp, ex, i)

    async def _exchange_tcp(self, ex: Exchange, i: int) -> None:
        server = self.forwarder.pool.addresses[i]
        got: tuple[bytes, Any] | str
        try:
            with trio.fail_after(self.forwarder.timeout):
                got = await exchange_tcp(server, ex.wire, ex.qend)
        except trio.TooSlowError:
            got = "timeout"
        except UpstreamError as exc:
            got = exc.reason
        self._finish_tcp(ex, i, got)

    def _finish_tcp(self, ex: Exchange, i: int, got: tuple[bytes, Any] | str) -> None:
        if self.outbound is not None:
            self.outbound.tcp_done(ex, i, got, self.clock())
            self.wake()

    def spawn_chase(
        self, sock: socket.socket, addr: Any, reply: Reply, responder: Responder
    ) -> None:
        assert reply.chase is not None
        if self.in_flight >= self.max_forwards or self.nursery is None:
            failure = responder.failure(reply.chase.query, SERVFAIL, tcp=False)
            self.send(sock, failure.wire, addr)
            self.metrics.queries[failure.label] += 1
            self.metrics.forward_errors["overload"] += 1
            return
        self.in_flight += 1
        self.metrics.forwards_in_flight = self.in_flight
        self.nursery.start_soon(self._chase_udp, sock, reply, addr)

    async def _chase_udp(self, sock: socket.socket, reply: Reply, addr: Any) -> None:
        try:
            self.send(sock, (await self.chase(reply, tcp=False)).wire, addr)
        finally:
            self.in_flight -= 1
            self.metrics.forwards_in_flight = self.in_flight

    async def forward(self, fwd: Forward, data: bytes, *, tcp: bool) -> Reply:
        start = time.perf_counter()
        responder = self.responder()
        if not self.forwarder.upstreams:
            reply = responder.failure(fwd.query, REFUSED, tcp=tcp)
            self.metrics.queries[reply.label] += 1
            return reply
        qend = self.path.question_end(data)
        if not qend:
            reply = responder.failure(fwd.query, FORMERR, tcp=tcp)
            self.metrics.queries[reply.label] += 1
            return reply
        got = await self.forwarder.resolve(data[12:qend], bool(data[3] & 0x10))
        reply = self._relayed(fwd, data, qend, got, responder, tcp=tcp)
        self.metrics.latency["forward"].observe(time.perf_counter() - start)
        return reply

    async def chase(self, reply: Reply, *, tcp: bool) -> Reply:
        """Follow an ExternalName's target outside the zone through the upstream."""
        start = time.perf_counter()
        responder = self.responder()
        try:
            out = await self.path.chase(reply, responder, tcp=tcp)
        except Exception:  # a bug: one SERVFAIL
            log.exception("following a CNAME failed")
            self.metrics.forward_errors["internal"] += 1
            assert reply.chase is not None
            out = responder.failure(reply.chase.query, SERVFAIL, tcp=tcp)
        self.metrics.queries[out.label] += 1
        self.metrics.latency["forward"].observe(time.perf_counter() - start)
        return out

    # --- autopath (CoreDNS autopath: the rest of a pod's search path, server-side) -------

    def start_autopath(
        self, sock: socket.socket, data: bytes, addr: Any, responder: Responder, namespace: str
    ) -> bool:
        """Whether the query became a search-path walk (answered later by a task)."""
        walk = AutopathWalk.start(responder, data, namespace)
        if walk is None or self.in_flight >= self.max_forwards or self.nursery is None:
            return False
        self.in_flight += 1
        self.nursery.start_soon(self._autopath_udp, sock, walk, addr)
        return True

    async def _autopath_udp(self, sock: socket.socket, walk: AutopathWalk, addr: Any) -> None:
        try:
            self.send(sock, (await self.walk(walk)).wire, addr)
        finally:
            self.in_flight -= 1

    async def walk(self, walk: AutopathWalk) -> Reply:
        start = time.perf_counter()
        reply = walk.inside()
        if reply is None and walk.outside is not None and self.forwarder.upstreams:
            try:
                result = await self.forwarder.resolve(walk.outside)
            except Exception:  # a bug: the pod gets its NXDOMAIN and walks on itself
                log.exception("autopath forwarding failed")
                result = None
            if result is not None:
                reply = walk.forwarded(result.wire)
        self.metrics.autopath["found" if reply is not None else "missed"] += 1
        if reply is None:
            reply = walk.nxdomain()
        self.metrics.queries[reply.label] += 1
        self.metrics.latency["forward"].observe(time.perf_counter() - start)
        return reply
