"""The cluster DNS server's UDP loop (a base class of the server, dns/server.py, which holds
the component, its config apply and its TCP answers).

The UDP loop is the hot path. It waits for the epoll set of ``Outbound`` (the listening
socket and the upstream sockets) to become readable, then drains the listening socket with
plain non-blocking ``recvfrom`` calls, answering wire-cache hits (cluster names) and
answer-cache hits (forwarded names) inline, a dict lookup and a ``sendto`` each, with no trio
machinery per packet (an answer-cache entry whose memo is current is read inline, no call);
after ``batch`` packets (one ``_drain``) it reads the upstreams' replies, times out the
exchanges whose upstream is late, and yields to other tasks. A miss is answered from the
FastIndex when it is a standard question of a cluster name (wire bytes in, wire bytes out).
An NXDOMAIN under a name the zone has (a random-subdomain flood, a single label under a
search domain) is made again each time and kept in no cache, so a flood of made-up names
neither grows nor churns any: inline, with no call, once the FastIndex made one of its shape
(its ``flood`` keys: the query without its first label's bytes), else by the FastIndex (one
dict lookup of its parent, no walk); the NXDOMAIN of a dotted name under a search domain (the
FastIndex walked its labels), asked again at every lookup of that name, is kept in a negative
cache of its own that admits while it has room and never evicts (dns/wire_cache.py). The rest
goes through the pure Responder synchronously (cluster names), or is handed to ``Outbound``
with a waiter tuple the relay answers (names outside the zone, classified from their bytes by
the FastIndex when standard, go there straight from the batch): no task and no closure per
forwarded query. ExternalName targets outside the zone, autopath walks and TCP clients use
tasks that await ``Forwarder.resolve`` (the same exchanges). Config swaps replace the
responder and the wire cache in one assignment, so the next packet already sees the new
config; forwarded answers do not depend on the config and stay (reverse names, whose owner a
config can change, are never put in the answer cache).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from mesh.dns.forward_cache import ForwardCache
from mesh.dns.live import Live, handle
from mesh.dns.metrics import DnsMetrics
from mesh.dns.outbound import Outbound
from mesh.dns.relay import Relay, send
from mesh.dns.responder import Drop, Forward, Reply
from mesh.dns.upstream import Forwarder

log = logging.getLogger("mesh.dns.server")

RECV_SIZE = 4096  # a query is far smaller; a longer datagram is cut here


class UdpServing:
    """The UDP loop, as methods of :class:`~mesh.dns.server.DnsServer` (which owns the state
    declared here): ``_drain`` answers a batch of queries, ``_udp_miss`` one the loop's
    caches and FastIndex did not."""

    # The server's state this part uses (set in DnsServer.__init__ and run).
    metrics: DnsMetrics
    _batch: int
    _clock: Callable[[], float]
    _answers: ForwardCache
    _live: Live
    _forwarder: Forwarder
    _relay: Relay

    async def _serve_udp(self, sock: socket.socket) -> None:
        outbound = Outbound(
            self._forwarder,
            sock.fileno(),
            self._relay.spawn_tcp,
            answer_udp=self._relay.udp_answered,
        )
        self._relay.outbound = outbound
        self._forwarder.outbound = outbound
        self._forwarder.wake = self._relay.wake
        try:
            await self._udp_loop(sock, outbound)
        finally:
            self._forwarder.outbound = None
            self._relay.outbound = None
            outbound.close()

    async def _udp_loop(self, sock: socket.socket, outbound: Outbound) -> None:
        batch = self._batch
        clock = self._clock
        while True:
            n = self._drain(sock, batch)
            if outbound.ports or outbound.woken:  # the upstreams' replies, their timeouts
                now = clock()
                outbound.poll(now)
                outbound.sweep(now)
            if n >= batch:
                await trio.lowlevel.checkpoint()
                continue
            # Wait for a query, a reply or a wake-up, or until the next exchange is late (a
            # cancel scope only then: entering one costs more than a cache hit).
            deadline = outbound.next_deadline()
            if deadline is None:
                await trio.lowlevel.wait_readable(outbound.fileno())
            else:  # on time.monotonic's clock: trio's has another origin
                with trio.move_on_at(trio.current_time() + max(0.0, deadline - time.monotonic())):
                    await trio.lowlevel.wait_readable(outbound.fileno())

    def _drain(self, sock: socket.socket, batch: int) -> int:
        """Answer up to ``batch`` queries waiting on ``sock`` (non-blocking), the caches' and
        the FastIndex's inline, the rest by ``_udp_miss``; how many datagrams were read. One
        call per batch: the names below are looked up once per batch, not per packet."""
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        metrics = self.metrics
        queries = metrics.queries
        answer = self._answers.answer
        memo = self._answers.entries.get
        live = self._live
        get = live.cache.entries.get
        negative = live.negative.entries
        fast = live.fast.reply if live.fast is not None else None
        zone = live.fast.zone_wire if live.fast is not None else None
        flood = live.fast.flood if live.fast is not None else {}
        nodes = live.fast.nodes if live.fast is not None else {}
        pods = live.pods  # empty unless autopath: a known pod's NXDOMAIN may be walked
        forward = self._relay.forward_udp
        responder = live.responder
        n = hits = forwarded = answered = relayed = 0
        start = time.perf_counter()
        now = self._clock()
        room = live.negative.room(now)  # NXDOMAIN replies it may take this batch
        while n < batch:
            try:
                data, addr = recvfrom(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:  # e.g. an ICMP error queued on the socket
                n += 1
                continue
            n += 1
            tail = data[2:]
            hit = get(tail)
            if hit is None and negative and not (pods and addr[0] in pods):
                hit = negative.get(tail)
            if hit is not None:
                try:
                    sendto(data[:2] + hit[0], addr)
                except OSError:
                    metrics.dropped["send"] += 1
                queries[hit[1]] += 1
                hits += 1
                continue
            if zone is not None and zone in data:
                # A name in the zone is never in the answer cache: skip its two lookups. A
                # made-up name under a known parent (a flood, a search-path step) is answered
                # here when the FastIndex made an NXDOMAIN of its shape before (``flood``: the
                # key fixes every byte but the first label's; those and the name are checked
                # as ``FastIndex.flood_reply`` does), with no call.
                if flood:
                    try:
                        first = data[12]
                    except IndexError:  # shorter than a header: the general path says so
                        first = 64  # (no key has a first label this long)
                    parts = flood.get(data[2:13] + data[13 + first :])
                    if parts is not None:
                        plain = data[13 : 13 + first]
                        name = data[12 : 13 + first + parts[2]]
                        if (
                            0 not in plain
                            and 46 not in plain  # a dot inside a label: the general path
                            and plain.isascii()
                            and name not in nodes
                            and (name.islower() or name.lower() not in nodes)
                            and not (pods and addr[0] in pods)
                        ):
                            try:
                                sendto(
                                    data[:2]
                                    + parts[0]
                                    + data[12 : 17 + first + parts[2]]
                                    + parts[1],
                                    addr,
                                )
                            except OSError:
                                metrics.dropped["send"] += 1
                            queries[parts[3]] += 1
                            answered += 1
                            continue
            else:
                entry = memo(tail)  # a lower-case question whose memo is current: inline
                if entry is not None and now < entry.refresh:
                    try:
                        sendto(data[:2] + entry.tail, addr)
                    except OSError:
                        metrics.dropped["send"] += 1
                    queries[entry.label] += 1
                    forwarded += 1
                    continue
                # the cache ages the memo, or finds another case's entry: else a miss
                end = data.find(0, 12)
                fwd = (
                    answer(data, tail, now)
                    if entry is not None or not data[12:end].islower()
                    else None
                )
                if fwd is not None:
                    try:
                        sendto(fwd[0], addr)
                    except OSError:
                        metrics.dropped["send"] += 1
                    queries[fwd[1]] += 1
                    forwarded += 1
                    continue
            reply = None
            if fast is not None:
                try:
                    reply = fast(data)
                except Exception:  # a bug must cost one query: the general path answers it
                    log.exception("fast path failed")
            if isinstance(reply, tuple) and not (
                pods and reply[1][1] == "NXDOMAIN" and addr[0] in pods
            ):
                # A standard question of a cluster name, answered from wire bytes.
                wire, label, kind = reply
                try:
                    sendto(wire, addr)
                except OSError:
                    metrics.dropped["send"] += 1
                queries[label] += 1
                answered += 1
                if kind:
                    live.cache.put(tail, wire[2:], label)
                elif kind is False and room:  # an NXDOMAIN of a walked name: kept apart
                    negative[tail] = (wire[2:], label)  # (see NegativeCache)
                    room -= 1
            elif type(reply) is Forward and not (pods and addr[0] in pods):
                # a name outside the zone, classified: to the upstreams, without ``_udp_miss``
                relayed += 1
                forward(sock, data, addr, reply, responder, time.perf_counter())
            else:  # a name outside the zone (its Forward), or one the general path answers
                self._udp_miss(
                    sock, data, addr, live, reply if isinstance(reply, Forward) else None
                )
        if hits or forwarded:
            metrics.latency["cache"].observe((time.perf_counter() - start) / n, hits + forwarded)
            metrics.cache_hits["wire"] += hits
            metrics.cache_hits["answer"] += forwarded
        if answered:
            metrics.latency["cluster"].observe((time.perf_counter() - start) / n, answered)
        if answered or relayed:
            metrics.cache_misses["wire"] += answered + relayed
        return n

    def _udp_miss(
        self, sock: socket.socket, data: bytes, addr: Any, live: Live, fwd: Forward | None = None
    ) -> None:
        """A query the caches did not answer; ``fwd``: the FastIndex classified it already."""
        start = time.perf_counter()
        self.metrics.cache_misses["wire"] += 1
        namespace = live.pods.get(addr[0]) if live.pods else None
        if namespace is not None and self._relay.start_autopath(
            sock, data, addr, live.responder, namespace
        ):
            return
        if fwd is not None:
            self._relay.forward_udp(sock, data, addr, fwd, live.responder, start)
            return
        outcome: Reply | Forward | Drop | None = None
        if live.fast is not None:
            try:  # a standard query of an outside name: classified from its bytes
                outcome = live.fast.forward(data)
            except Exception:  # a bug must cost nothing: the general path decides
                log.exception("fast forward classification failed")
        if outcome is None:
            outcome = handle(live, data, tcp=False, fast=False)  # the loop tried it
        if isinstance(outcome, Reply) and outcome.chase is not None and self._forwarder.upstreams:
            self._relay.spawn_chase(sock, addr, outcome, live.responder)
        elif isinstance(outcome, Reply):
            self._send(sock, outcome.wire, addr)
            self.metrics.queries[outcome.label] += 1
            self.metrics.latency["cluster"].observe(time.perf_counter() - start)
            if outcome.cacheable:
                live.cache.put(data[2:], outcome.wire[2:], outcome.label)
        elif isinstance(outcome, Forward):
            self._relay.forward_udp(sock, data, addr, outcome, live.responder, start)
        else:
            self.metrics.dropped[outcome.reason] += 1

    def _send(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        send(sock, wire, addr, self.metrics)
