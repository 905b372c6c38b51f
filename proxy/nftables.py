"""The node proxy in nftables mode: a Component that keeps one kernel table in sync.

``apply`` only records the config and wakes the sync task (as kube-proxy's watch handlers
only queue a sync); ``run`` loops on :class:`SyncScheduler` decisions and does each blocking
step (render + ``nft -f``, or the drift probe) in a worker thread, so the event loop never
waits on the kernel. Ready after the first successful sync.

Dual-stack as kube-proxy: one table per address family (``ip`` and ``ip6``, same name and
structure), each synced by its own :class:`Syncer` from the same config in the same step; a
step succeeds when every table did. On a host where IPv6 is off (:func:`table_families`) only
the ``ip`` table is synced: an ``ip6`` table there would fail every sync (no IPv6 in the kernel)
or serve no traffic (disabled by sysctl), and the proxy would never become ready for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.config.proxy import ProxyConfig
from mesh.proxy.conntrack import ConntrackCleaner
from mesh.proxy.nft_names import Family
from mesh.proxy.nft_render import RenderOptions, Ruleset
from mesh.proxy.nft_runner import NftRunner, SubprocessNftRunner
from mesh.proxy.nft_sync import Syncer, SyncPolicy, SyncResult, SyncScheduler

log = logging.getLogger(__name__)
T = TypeVar("T")


PROC_SYS_NET = Path("/proc/sys/net")  # per network namespace: the reader's own


def ipv6_off(read: Callable[[str], str | None]) -> str | None:
    """Why IPv6 is off on this host, or None when it is on. ``read(path)`` returns a file
    under /proc/sys/net, None when it does not exist (the decision is pure; see
    :func:`read_sysctl`)."""
    value = read("ipv6/conf/all/disable_ipv6")
    if value is None:
        return "the kernel has no IPv6 (booted with ipv6.disable=1 or built without it)"
    if value.strip() == "1":
        return "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)"
    return None


def table_families(read: Callable[[str], str | None]) -> tuple[tuple[Family, ...], str | None]:
    """The nftables families to sync (``ip``, and ``ip6`` unless IPv6 is off) and why
    ``ip6`` was left out (None when it was not)."""
    reason = ipv6_off(read)
    families: tuple[Family, ...] = ("ip",) if reason else ("ip", "ip6")
    return families, reason


def read_sysctl(path: str, root: Path = PROC_SYS_NET) -> str | None:
    try:
        return (root / path).read_text()
    except FileNotFoundError:
        return None


def host_families() -> tuple[Family, ...]:
    """:func:`table_families` of this host's network namespace; says once when ``ip6`` is
    left out."""
    families, reason = table_families(read_sysctl)
    if reason:
        log.warning("IPv6 is off here: only the ip table is synced", extra={"reason": reason})
    return families


class NftMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sync_duration = Histogram(
            "mesh_proxy_sync_duration_seconds",
            "Time to render the ruleset and apply it with nft -f",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.sync_errors = Counter(
            "mesh_proxy_sync_errors_total", "nftables syncs that failed", registry=r
        )
        self.syncs = Counter("mesh_proxy_syncs_total", "nftables syncs applied", registry=r)
        self.drift = Counter(
            "mesh_proxy_drift_repairs_total",
            "Times the kernel table no longer matched and was rewritten",
            registry=r,
        )
        self.config_version = Gauge(
            "mesh_proxy_config_version", "Version of the config last applied", registry=r
        )
        self.rules = Gauge("mesh_proxy_rules", "Rules in the nftables table", registry=r)
        self.chains = Gauge(
            "mesh_proxy_chains", "Service and endpoint chains in the table", registry=r
        )
        self.elements = Gauge("mesh_proxy_map_elements", "Elements in the verdict maps", registry=r)
        self.last_sync = Gauge(
            "mesh_proxy_last_sync_timestamp_seconds", "Unix time of the last good sync", registry=r
        )
        self.conntrack_deleted = Counter(
            "mesh_proxy_conntrack_deletions_total",
            "Stale UDP conntrack deletions run (one per Service address and endpoint)",
            registry=r,
        )


class NftablesProxy:
    """``NftablesProxy(netns="mesh-x-node")`` syncs the table inside that namespace;
    ``options`` is one table's options or a sequence of them (one per address family, e.g.
    ``ip`` and ``ip6``); ``runner`` replaces nft (tests pass a FakeNftRunner); ``conntrack``
    False disables the stale UDP cleanup; ``threaded`` False runs nft steps inline (for a
    fake in virtual time)."""

    name = "proxy"

    def __init__(
        self,
        *,
        netns: str | None = None,
        options: RenderOptions | Sequence[RenderOptions] | None = None,
        policy: SyncPolicy | None = None,
        runner: NftRunner | None = None,
        conntrack: bool | ConntrackCleaner = True,
        threaded: bool = True,
    ) -> None:
        self.metrics = NftMetrics()
        self.registry = self.metrics.registry
        if conntrack is True:
            cleaner: ConntrackCleaner | None = ConntrackCleaner(netns)
        else:
            cleaner = conntrack or None
        tables = [options] if options is None or isinstance(options, RenderOptions) else options
        if not tables:
            raise ValueError("NftablesProxy needs at least one table's options")
        nft = runner or SubprocessNftRunner(netns)
        self.syncers = [Syncer(nft, opts, cleaner) for opts in tables]
        self.syncer = self.syncers[0]  # the first family's (the primary one)
        self.scheduler = SyncScheduler(policy)
        self.netns = netns
        self._config: ProxyConfig | None = None
        self._synced: ProxyConfig | None = None
        self._last: SyncResult | None = None
        self._wake = trio.Event()
        self._running = False
        self._threaded = threaded  # False: run nft steps inline (a fake runner, virtual time)

    # --- Component ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._synced is not None

    def apply(self, config: ProxyConfig) -> None:
        self._config = config
        self.scheduler.config_changed()
        self._wake.set()

    def config_json(self) -> Any:
        last = self._last
        ruleset: Ruleset | None = self.syncer.applied
        return {
            "mode": "nftables",
            "netns": self.netns,
            "table": f"{self.syncer.options.family} {self.syncer.options.table}",
            "tables": [f"{s.options.family} {s.options.table}" for s in self.syncers],
            "config": self._config.model_dump(mode="json") if self._config else None,
            "synced_version": self._synced.version if self._synced else None,
            "last_sync": None
            if last is None
            else {"ok": last.ok, "seconds": round(last.seconds, 6), "error": last.error},
            "failures": self.scheduler.failures,
            "ruleset": None
            if ruleset is None
            else {
                "service_ports": ruleset.service_ports,
                "endpoints": ruleset.endpoints,
                "chains": ruleset.chain_count,
                "rules": ruleset.rules,
                "elements": ruleset.elements,
                "marker": ruleset.marker,
            },
        }

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("NftablesProxy.run is already running")
        self._running = True
        try:
            task_status.started()
            while True:
                step = self.scheduler.next_step(trio.current_time())
                if step.at > trio.current_time():
                    await self._sleep_until(step.at)
                    continue
                if step.kind == "sync":
                    await self._sync()
                elif step.kind == "probe":
                    await self._probe()
        finally:
            self._running = False

    # --- steps -------------------------------------------------------------------------

    async def _sleep_until(self, deadline: float) -> None:
        if self._wake.is_set():
            self._wake = trio.Event()
            return
        if math.isinf(deadline):
            await self._wake.wait()
        else:
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self._threaded:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def _sync(self) -> None:
        config = self._config
        assert config is not None  # the scheduler syncs only once a config was applied
        self.scheduler.sync_started(trio.current_time())
        result = await self._blocking(self._sync_tables, config)
        self.scheduler.sync_done(trio.current_time(), result.ok)
        self._last = result
        m = self.metrics
        m.sync_duration.observe(result.seconds)
        if not result.ok:
            m.sync_errors.inc()
            return
        self._synced = config
        m.syncs.inc()
        m.config_version.set(config.version)
        m.last_sync.set(time.time())
        applied = [s.applied for s in self.syncers if s.applied is not None]
        m.rules.set(sum(r.rules for r in applied))
        m.chains.set(sum(r.chain_count for r in applied))
        m.elements.set(sum(r.elements for r in applied))
        if result.stale:
            m.conntrack_deleted.inc(len(result.stale))
        log.info(
            "nftables synced",
            extra={"version": config.version, "seconds": round(result.seconds, 4)},
        )

    def _sync_tables(self, config: ProxyConfig) -> SyncResult:
        """Sync every table; one result: ok when all were, the first table's ruleset."""
        results = [s.sync(config) for s in self.syncers]
        if len(results) == 1:
            return results[0]
        return SyncResult(
            ok=all(r.ok for r in results),
            seconds=sum(r.seconds for r in results),
            ruleset=results[0].ruleset,
            error="; ".join(r.error for r in results if r.error),
            stale=[e for r in results for e in r.stale],
        )

    def _probe_tables(self) -> bool:
        return all([s.probe() for s in self.syncers])  # probe each, also after a failure

    async def _probe(self) -> None:
        ok = await self._blocking(self._probe_tables)
        self.scheduler.probe_done(trio.current_time(), ok)
        if not ok:
            self.metrics.drift.inc()
