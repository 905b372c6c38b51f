"""The cluster DNS server: UDP and TCP on one address, a thin trio shell around the core.

This module holds the component: its sockets and upstreams, the config apply (a new
:class:`~mesh.dns.live.Live` swapped in one assignment, so the next packet already sees the
new config; forwarded answers do not depend on the config and stay), the metrics registry
(with ``--workers N``, worker 0's sums every worker's) and the TCP answers (dns/tcp_server.py
frames the messages). The UDP loop, the hot path, is dns/udp_server.py; the general answer
path both use is dns/live.py.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
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
from mesh.dns.live import Live, handle
from mesh.dns.metrics import DnsMetrics
from mesh.dns.relay import Relay
from mesh.dns.responder import DEFAULT_MAX_UDP, Forward, Reply, Responder
from mesh.dns.tcp_server import TcpServing
from mesh.dns.udp_server import UdpServing
from mesh.dns.upstream import Forwarder
from mesh.dns.wire_cache import NegativeCache, WireCache
from mesh.dns.worker_metrics import Merged, publish
from mesh.dns.zone import ZoneIndex
from mesh.netns import inside

log = logging.getLogger("mesh.dns.server")

RECV_SIZE = 4096  # a query is far smaller; a longer datagram is cut here


class DnsServer(UdpServing):
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
        self._live = Live(None, Responder(None, zone=zone, max_udp=max_udp_payload), WireCache(0))
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
        self._live = Live(
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

    # --- TCP (dns/tcp_server.py frames the messages) -----------------------------------

    async def _answer_tcp(self, data: bytes, peer: str) -> bytes | None:
        start = time.perf_counter()
        live = self._live
        namespace = live.pods.get(peer) if live.pods else None
        if namespace is not None:
            walk = AutopathWalk.start(live.responder, data, namespace, tcp=True)
            if walk is not None:
                return (await self._relay.walk(walk)).wire
        outcome = handle(live, data, tcp=True)
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
