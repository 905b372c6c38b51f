"""Keep the kernel's table equal to the rendered one: the sync schedule and the syncer.

Theory of operation (kube-proxy's sync loop, in pieces that can be tested alone):

- :func:`~mesh.proxy.nft_script.transaction` (proxy/nft_script.py) turns a rendered
  :class:`Ruleset` into one ``nft -f`` script, applied atomically by the kernel: a full sync
  replaces the table (the first one, after a failure or drift, and every
  ``full_sync_period``), any other is incremental.
- :class:`SyncScheduler` is the pure decision maker, with the time passed in: nothing before
  the first config; a config change syncs at once unless the last sync was less than
  ``min_interval`` ago (rate limit); a failed sync is retried with exponential backoff; with
  nothing to do it probes for drift every ``probe_interval`` and resyncs every
  ``resync_interval`` anyway.
- :class:`Syncer` does one blocking step (render + apply + conntrack cleanup, or a probe)
  through an :class:`NftRunner` (proxy/nft_runner.py: the ``nft`` binary, or a fake that keeps
  the text for tests).
- The drift probe lists the table's dispatch chain and looks for the marker comment the
  renderer puts on its vmap rule (a digest of the whole table): a deleted or flushed table,
  or another ruleset written over ours, fails it and triggers a full sync.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.config.proxy import ProxyConfig
from mesh.proxy.conntrack import ConntrackCleaner, StaleEntry, stale_entries
from mesh.proxy.nft_names import SERVICES_CHAIN, VERSION
from mesh.proxy.nft_render import RenderOptions, Ruleset, render
from mesh.proxy.nft_runner import NftError, NftRunner
from mesh.proxy.nft_script import Lingering, delta_between, retired, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    min_interval: float = 1.0  # at most one sync per this many seconds
    retry_initial: float = 1.0
    retry_max: float = 30.0
    probe_interval: float = 10.0
    resync_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # "sync", "probe" or "wait"
    at: float  # when (seconds, the caller's clock); math.inf: only a new config wakes us


class SyncScheduler:
    """When to sync, retry and probe. Pure: every method takes the current time."""

    def __init__(self, policy: SyncPolicy | None = None) -> None:
        self.policy = policy or SyncPolicy()
        self.has_config = False
        self.dirty = False
        self.failures = 0
        self.last_sync: float = -math.inf  # start of the last attempt
        self.last_success: float = -math.inf
        self.last_probe: float = -math.inf

    def config_changed(self) -> None:
        self.has_config = True
        self.dirty = True

    def next_step(self, now: float) -> Step:
        p = self.policy
        if not self.has_config:
            return Step("wait", math.inf)
        if self.failures:
            backoff = min(p.retry_max, p.retry_initial * 2 ** (self.failures - 1))
            return Step("sync", max(self.last_sync + backoff, self.last_sync + p.min_interval))
        if self.dirty:
            return Step("sync", max(now, self.last_sync + p.min_interval))
        resync = self.last_success + p.resync_interval
        probe = max(self.last_probe, self.last_success) + p.probe_interval
        return Step("sync", resync) if resync <= probe else Step("probe", probe)

    def sync_started(self, now: float) -> None:
        self.last_sync = now
        self.dirty = False

    def sync_done(self, now: float, ok: bool) -> None:
        if ok:
            self.failures = 0
            self.last_success = now
        else:
            self.failures += 1

    def probe_done(self, now: float, ok: bool) -> None:
        self.last_probe = now
        if not ok:
            self.dirty = True


@dataclass(slots=True)
class SyncResult:
    ok: bool
    seconds: float
    ruleset: Ruleset | None
    error: str = ""
    stale: list[StaleEntry] = field(default_factory=list)
    render_seconds: float = 0.0  # of ``seconds``: the render and the script
    apply_seconds: float = 0.0  # of ``seconds``: nft -f, then the conntrack cleanup


class Syncer:
    """One blocking sync or probe at a time; remembers what the kernel holds."""

    def __init__(
        self,
        runner: NftRunner,
        options: RenderOptions | None = None,
        conntrack: ConntrackCleaner | None = None,
        full_sync_period: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.options = options or RenderOptions()
        self.conntrack = conntrack
        self.full_sync_period = full_sync_period  # replace the table at least this often
        self.clock = clock
        self.applied: Ruleset | None = None  # None: unknown, the next sync replaces the table
        self.lingering = Lingering()  # retired, still in the kernel (see LATE_DELETE)
        # UDP targets of the last successful sync (our copy: the renderer's state moves on)
        self.udp: dict[tuple[str, int], frozenset[tuple[str, int]]] | None = None
        self.last_full = -math.inf

    def sync(self, config: ProxyConfig, full: bool = False) -> SyncResult:
        """Render and apply ``config``: incrementally over the table applied last, or by
        replacing the table when ``full``, when nothing is known to be applied, or when
        the last full sync is ``full_sync_period`` old."""
        start = time.perf_counter()
        ruleset: Ruleset | None = None
        now = self.clock()
        if full or now - self.last_full >= self.full_sync_period:
            self.applied = None
        rendered = start
        try:
            ruleset = render(config, self.options, self.applied)
            script = transaction(ruleset, self.applied, self.lingering)
            rendered = time.perf_counter()
            self.runner.apply(script)
        except (NftError, ValueError) as exc:
            self.applied = None
            self.lingering = Lingering()
            log.warning("nftables sync failed", extra={"error": str(exc)})
            return SyncResult(False, time.perf_counter() - start, ruleset, str(exc))
        # A replaced table took everything lingering with it; an update deleted what lingered
        # and left what it retired for the next sync.
        self.lingering = retired(ruleset, self.applied)
        stale = self._stale_udp(ruleset)
        if self.applied is None:
            self.last_full = now
        self.applied = ruleset
        if stale and self.conntrack is not None:
            self.conntrack.delete(stale)
        end = time.perf_counter()
        return SyncResult(
            True, end - start, ruleset, stale=stale,
            render_seconds=rendered - start, apply_seconds=end - rendered,
        )  # fmt: skip

    def _stale_udp(self, ruleset: Ruleset) -> list[StaleEntry]:
        """The conntrack entries to delete after moving to ``ruleset``, and keep its UDP
        targets (a copy of our own: the renderer updates its state in place)."""
        version = VERSION[ruleset.family]
        if self.applied is None or self.udp is None:
            stale = stale_entries(self.udp, ruleset.udp, version)
            self.udp = dict(ruleset.udp)
            return stale
        # An update: only the targets it changed (the others yield nothing anyway).
        changes = delta_between(ruleset, self.applied).udp
        before = {k: b for k, (b, _) in changes.items() if b is not None}
        after = {k: a for k, (_, a) in changes.items() if a is not None}
        stale = stale_entries(before, after, version)
        for k, (_, a) in changes.items():
            if a is None:
                self.udp.pop(k, None)
            else:
                self.udp[k] = a
        return stale

    def probe(self) -> bool:
        """True when the kernel still holds the table we applied last."""
        if self.applied is None:
            return False
        try:
            listing = self.runner.list_chain(
                self.applied.table, SERVICES_CHAIN, self.applied.family
            )
        except NftError as exc:
            log.warning("nftables probe failed", extra={"error": str(exc)})
            return False
        ok = listing is not None and f'comment "sync {self.applied.marker}"' in listing
        if not ok:
            log.warning(
                "nftables table drifted; resyncing",
                extra={"table": f"{self.applied.family} {self.applied.table}"},
            )
            self.applied = None
        return ok
