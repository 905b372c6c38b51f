"""The cluster DNS server: UDP and TCP on one address, a thin trio shell around the core.

The UDP loop is the hot path. It waits for the epoll set of ``Outbound`` (the listening
socket and the upstream sockets) to become readable, then drains the listening socket with
plain non-blocking ``recvfrom`` calls, answering wire-cache hits (cluster names) and
answer-cache hits (forwarded names) inline, a dict lookup and a ``sendto`` each, with no trio
machinery per packet (an answer-cache entry whose memo is current is read inline, no call);
after ``batch`` packets (one ``_drain``) it reads the upstreams' replies, times out the
exchanges whose upstream is late, and yields to other tasks. A miss is answered from the
FastIndex when it is a standard question of a cluster name (wire bytes in, wire bytes out).
An NXDOMAIN under a name the zone has (a random-subdomain flood, a single label under a
search domain) is made again each time (one dict lookup of its parent, no walk) and kept in
no cache, so a flood of made-up names neither grows nor churns any; the NXDOMAIN of a dotted name under a
search domain (the FastIndex walked its labels), asked again at every lookup of that name, is
kept in a negative cache of its own that admits while it has room and never evicts
(dns/wire_cache.py). The rest goes through the pure Responder synchronously (cluster
names), or is handed to ``Outbound`` with a callback that sends the reply (names outside the
zone, classified from their bytes by the FastIndex when standard): no task per forwarded
query. ExternalName targets outside the zone, autopath walks and TCP clients use tasks that
await ``Forwarder.resolve`` (the same exchanges). Config swaps replace the responder and the
wire cache in one assignment, so the next packet already sees the new config; forwarded
answers do not depend on the config and stay (reverse names, whose owner a config can change,
are never put in the answer cache).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from mesh.component import ConfigRejected
from mesh.config.dns import DnsConfig
from mesh.dns import autopath, resolvconf
from mesh.dns.autopath import AutopathWalk
from mesh.dns.fast_index import FastIndex
from mesh.dns.forward_cache import ForwardCache
from mesh.dns.forwarding import ForwardPath
from mesh.dns.listen import bind
from mesh.dns.metrics import DnsMetrics
from mesh.dns.outbound import Outbound
from mesh.dns.packet import SERVFAIL, header_reply
from mesh.dns.relay import Relay, send
from mesh.dns.responder import DEFAULT_MAX_UDP, Drop, Forward, Reply, Responder
from mesh.dns.tcp_server import TcpServing
from mesh.dns.upstream import Forwarder
from mesh.dns.wire_cache import NegativeCache, WireCache
from mesh.dns.worker_metrics import Merged, publish
from mesh.dns.zone import ZoneIndex
from mesh.netns import inside

log = logging.getLogger("mesh.dns.server")

RECV_SIZE = 4096  # a query is far smaller; a longer datagram is cut here


@dataclass(frozen=True, slots=True)
class _Live:
    """Everything that changes with a config, swapped as one object."""

    config: DnsConfig | None
    responder: Responder
    cache: WireCache
    fast: FastIndex | None = None  # standard questions of cluster names, in wire form
    pods: Mapping[str, str] = field(default_factory=dict)  # pod IP -> namespace (autopath)
    # NXDOMAIN replies of the fast path that are worth keeping: apart, so made-up names never
    # touch the wire cache of names that exist
    negative: NegativeCache = field(default_factory=lambda: NegativeCache(0))


class DnsServer:
    name = "dns"

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 5353),
        upstreams: Sequence[tuple[str, int]] | None = None,
        *,
        zone: str = "cluster.local",
        resolv_conf: str = "/etc/resolv.conf",
        max_udp_payload: int = DEFAULT_MAX_UDP,
        wire_cache_size: int = 65536,
        forward_cache_size: int = 10_000,
        forward_timeout: float = 2.0,
        max_forwards: int = 1024,
        upstream_policy: str = "random",
        max_fails: int = 2,
        health_check: float = 0.5,
        serve_stale: float = 0.0,
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        max_tcp_queries: int = 10_000,
        batch: int = 64,
        netns: str | None = None,
        reuse_port: bool = False,
        autopath: bool = False,
        worker: int = 0,
        metrics_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listen = listen
        self.port = listen[1]
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = DnsMetrics()
        # ``--workers N``: worker 0's /metrics sums every worker's (dns/worker_metrics.py)
        self._worker = worker
        self._metrics_dir = metrics_dir
        if metrics_dir is not None and worker == 0:
            self.registry.register(Merged(self.metrics, metrics_dir))
        else:
            self.registry.register(self.metrics)
        self._explicit_upstreams = None if upstreams is None else list(upstreams)
        self._resolv_conf = resolv_conf
        self._max_udp = max_udp_payload
        self._wire_cache_size = wire_cache_size
        self._forward_timeout = forward_timeout
        self._tcp = TcpServing(
            self._answer_tcp,
            self.metrics,
            idle=tcp_idle_timeout,
            max_connections=max_tcp_connections,
            max_queries=max_tcp_queries,
        )
        self._batch = batch
        self._netns = netns  # bind inside this network namespace (the cluster in a box)
        self._reuse_port = reuse_port  # one of several worker processes on one port
        self._autopath = autopath  # walk known pods' search paths server-side (dns/autopath.py)
        self._clock = clock
        self._policy = upstream_policy
        self._max_fails = max_fails
        self._health_check = health_check
        # upstream answers by question, and the replies built from them by client query
        self._forward_cache = ForwardCache(forward_cache_size, serve_stale=serve_stale)
        self._answers = ForwardCache(forward_cache_size)
        self._forwarder = Forwarder(
            [], metrics=self.metrics, cache=self._forward_cache, policy=upstream_policy
        )
        self._path = ForwardPath(
            self._forwarder, self._answers, self.metrics, max_udp=max_udp_payload, clock=clock
        )
        self._live = _Live(None, Responder(None, zone=zone, max_udp=max_udp_payload), WireCache(0))
        self._relay = Relay(
            self._path,
            self.metrics,
            lambda: self._live.responder,
            max_forwards=max_forwards,
            clock=clock,
        )

    # --- Component ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._live.config is not None

    @property
    def upstreams(self) -> list[tuple[str, int]]:
        return list(self._forwarder.upstreams)

    def apply(self, config: DnsConfig) -> None:
        try:
            index = ZoneIndex.build(config, self._live.responder.index)
            fast = FastIndex(index, max_udp=self._max_udp, previous=self._live.fast)
        except Exception as exc:
            raise ConfigRejected(f"dns config {config.version}: {exc}") from exc
        live = self._live
        if index.zone != live.responder.zone:
            self._answers.clear()  # names that were forwarded may now be the cluster's
        pods = live.pods
        if self._autopath and (
            live.config is None or live.config.pod_namespaces is not config.pod_namespaces
        ):
            pods = autopath.pod_namespaces(config)  # only when they changed: 30,000 pods
        # The caches start empty: a cached reply may hold the old SOA serial, and a name
        # asked is answered again from the FastIndex at the cost of one miss.
        self._live = _Live(
            config,
            Responder(index, max_udp=self._max_udp),
            WireCache(self._wire_cache_size),
            fast,
            pods,
            NegativeCache(self._wire_cache_size),
        )
        self.metrics.config_version = config.version
        self.metrics.config_applies += 1
        log.info(
            "config applied",
            extra={
                "version": config.version,
                "names": len(index),
                "services": len(config.services),
            },
        )

    def config_json(self) -> Any:
        config = self._live.config
        return None if config is None else config.model_dump(mode="json")

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        udp, tcp = self._bind()
        with udp, tcp:
            self.port = udp.getsockname()[1]
            self._forwarder = Forwarder(
                self._resolve_upstreams(),
                metrics=self.metrics,
                cache=self._forward_cache,
                timeout=self._forward_timeout,
                policy=self._policy,
                max_fails=self._max_fails,
                health_check=self._health_check,
                clock=self._clock,
            )
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
            log.info(
                "listening",
                extra={"address": f"{self.listen[0]}:{self.port}", "upstreams": self.upstreams},
            )
            async with trio.open_nursery() as nursery:
                self._relay.nursery = nursery
                self._path.forwarder = self._forwarder
                await nursery.start(self._forwarder.run)
                nursery.start_soon(self._serve_udp, udp)
                if self._metrics_dir is not None and self._worker > 0:
                    nursery.start_soon(publish, self.metrics, self._metrics_dir, self._worker)
                nursery.start_soon(trio.serve_listeners, self._tcp.serve, [listener])
                task_status.started(self.port)

    # --- sockets -------------------------------------------------------------------------

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        with inside(self._netns):
            return bind(*self.listen, reuse_port=self._reuse_port)

    def _resolve_upstreams(self) -> list[tuple[str, int]]:
        if self._explicit_upstreams is not None:
            return self._explicit_upstreams
        try:
            text = Path(self._resolv_conf).read_text()
        except OSError as exc:
            log.warning("no resolv.conf; not forwarding", extra={"error": str(exc)})
            return []
        return resolvconf.upstreams(text, (self.listen[0], self.port))

    # --- UDP -----------------------------------------------------------------------------

    async def _serve_udp(self, sock: socket.socket) -> None:
        outbound = Outbound(self._forwarder, sock.fileno(), self._relay.spawn_tcp)
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
        pods = live.pods  # empty unless autopath: a known pod's NXDOMAIN may be walked
        n = hits = forwarded = answered = 0
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
            # A name in the zone is never in the answer cache: skip its two lookups.
            if zone is None or zone not in data:
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
            metrics.cache_misses["wire"] += answered
        return n

    def _udp_miss(
        self, sock: socket.socket, data: bytes, addr: Any, live: _Live, fwd: Forward | None = None
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
            outcome = self._handle(live, data, tcp=False, fast=False)  # the loop tried it
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

    def _handle(
        self, live: _Live, data: bytes, *, tcp: bool, fast: bool = True
    ) -> Reply | Forward | Drop:
        try:
            if fast and live.fast is not None:
                reply = live.fast.answer(data, tcp=tcp)
                if reply is not None:
                    return reply
            return live.responder.handle(data, tcp=tcp)
        except Exception:  # a bug must cost one query, never the server
            log.exception("query failed")
            if len(data) < 12 or data[2] & 0x80:
                return Drop("error")
            return Reply(header_reply(data, SERVFAIL), ("other", "SERVFAIL"))

    def _send(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        send(sock, wire, addr, self.metrics)

    # --- TCP (dns/tcp_server.py frames the messages) -----------------------------------

    async def _answer_tcp(self, data: bytes, peer: str) -> bytes | None:
        start = time.perf_counter()
        live = self._live
        namespace = live.pods.get(peer) if live.pods else None
        if namespace is not None:
            walk = AutopathWalk.start(live.responder, data, namespace, tcp=True)
            if walk is not None:
                return (await self._relay.walk(walk)).wire
        outcome = self._handle(live, data, tcp=True)
        if isinstance(outcome, Reply) and outcome.chase is not None and self._forwarder.upstreams:
            return (await self._relay.chase(outcome, tcp=True)).wire
        if isinstance(outcome, Reply):
            self.metrics.queries[outcome.label] += 1
            self.metrics.latency["cluster"].observe(time.perf_counter() - start)
            return outcome.wire
        if isinstance(outcome, Forward):
            return (await self._relay.forward(outcome, data, tcp=True)).wire
        self.metrics.dropped[outcome.reason] += 1
        return None
