"""Keep the kernel's table equal to the rendered one: transactions, schedule, runners.

Theory of operation (kube-proxy's sync loop, in pieces that can be tested alone):

- :func:`transaction` turns a rendered :class:`Ruleset` into one ``nft -f`` script, applied
  atomically by the kernel. A full sync replaces the table (``add table; delete table;
  table {...}``): the first one, after a failure or drift, and every ``full_sync_period``.
  Otherwise the sync is incremental, as kube-proxy's: the ruleset's ``delta`` (what its
  render changed, in proportion to the changed Services) says which chains to flush and
  rewrite and which map and set elements to delete and add; chains and affinity sets that
  went away are deleted by the next sync; affinity sets that stay keep their entries
  (clients keep their endpoints across syncs). Two rulesets rendered apart are diffed
  whole instead. When an
  affinity timeout changed, every rule and map is flushed and re-added instead (a set's
  timeout cannot change in place), deleting the sets that went away or changed.
- :class:`SyncScheduler` is the pure decision maker, with the time passed in: nothing before
  the first config; a config change syncs at once unless the last sync was less than
  ``min_interval`` ago (rate limit); a failed sync is retried with exponential backoff; with
  nothing to do it probes for drift every ``probe_interval`` and resyncs every
  ``resync_interval`` anyway.
- :class:`Syncer` does one blocking step (render + apply + conntrack cleanup, or a probe)
  through an :class:`NftRunner`: :class:`SubprocessNftRunner` runs ``nft`` (inside a network
  namespace when given one), :class:`FakeNftRunner` keeps the text for tests.
- The drift probe lists the table's dispatch chain and looks for the marker comment the
  renderer puts on its vmap rule (a digest of the whole table): a deleted or flushed table,
  or another ruleset written over ours, fails it and triggers a full sync.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from mesh.config.proxy import ProxyConfig
from mesh.proxy.conntrack import ConntrackCleaner, StaleEntry, stale_entries
from mesh.proxy.nft_merge import Delta, diff_dicts
from mesh.proxy.nft_names import (
    DISPATCH_MAP,
    DNAT_MAP,
    MAPS,
    SERVICES_CHAIN,
    VERSION,
    map_types,
    set_types,
)
from mesh.proxy.nft_render import RenderOptions, Ruleset, affinity_decl, element_items, render

log = logging.getLogger(__name__)

_MARKER = re.compile(r'comment "sync ([0-9a-f]+)"')


class NftError(Exception):
    """nft refused a script or could not run; ``stderr`` says why."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class NftRunner(Protocol):
    def apply(self, script: str) -> None:
        """Run ``script`` as one transaction (``nft -f -``); raise NftError on failure."""

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        """``nft list chain FAMILY TABLE CHAIN``, or None when it does not exist."""


class SubprocessNftRunner:
    def __init__(self, netns: str | None = None, binary: str = "nft", timeout: float = 60.0):
        self.netns = netns
        self.binary = binary
        self.timeout = timeout

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run nft: {exc}") from exc

    def apply(self, script: str) -> None:
        proc = self._run(["-f", "-"], stdin=script)
        if proc.returncode != 0:
            first = proc.stderr.strip().splitlines()[:1]
            raise NftError(f"nft -f failed: {first[0] if first else proc.returncode}", proc.stderr)

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        proc = self._run(["list", "chain", family, table, chain])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(f"nft list failed: {proc.stderr.strip()}", proc.stderr)
        return proc.stdout

    def delete_table(self, table: str, family: str = "ip") -> None:
        """Remove the table if present (cleanup; errors other than absence are raised)."""
        proc = self._run(["delete", "table", family, table])
        if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
            raise NftError(f"nft delete table failed: {proc.stderr.strip()}", proc.stderr)


_FAMILY = re.compile(r"^(?:add )?table (ip6?) ", re.MULTILINE)


@dataclass
class FakeNftRunner:
    """Records scripts; ``fail`` makes the next applies raise; ``flush``/``delete`` drift.
    Keeps one marker per table family (``marker`` is the ``ip`` table's)."""

    scripts: list[str] = field(default_factory=list)
    fail: int = 0
    marker: str | None = None  # the marker of the ip table "in the kernel", None: no table
    markers: dict[str, str | None] = field(default_factory=dict)  # other families
    listed: int = 0

    def apply(self, script: str) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise NftError("nft -f failed: injected failure")
        self.scripts.append(script)
        found = _MARKER.findall(script)
        family = _FAMILY.findall(script)
        marker = found[-1] if found else None
        if not family or family[0] == "ip":
            self.marker = marker
        else:
            self.markers[family[0]] = marker

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        self.listed += 1
        marker = self.marker if family == "ip" else self.markers.get(family)
        if marker is None:
            return None
        return f'table {family} {table} {{\n\tchain {chain} {{\n\t\t... comment "sync {marker}"\n'

    def flush(self) -> None:
        self.marker = ""  # the table stays, its rules are gone

    def delete(self) -> None:
        self.marker = None


# Maps keyed by a dispatch slot, read by a later chain of the packet's traversal than the rule
# that picked the slot. The kernel reads a chain's rules in the generation the packet started
# in, but looks set elements up in the generation current at lookup time: a packet that ran a
# Service's old chain during a commit could miss a slot that commit deleted, leave un-NATed,
# and its conntrack entry would keep that connection broken. So what an update drops from
# these maps, and the chains their verdicts point at, is deleted late, by the next sync (as
# kube-proxy deletes stale objects late). Slots are not reused before the next full sync, so a
# lingering one is never picked again.
LATE_DELETE = frozenset({DISPATCH_MAP, DNAT_MAP})


@dataclass(frozen=True, slots=True)
class Lingering:
    """What an update retired and left in the kernel for the next sync to delete."""

    elements: dict[str, list[str]] = field(default_factory=dict)  # map -> slot keys
    chains: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()  # affinity sets of retired endpoint chains

    def __bool__(self) -> bool:
        return bool(self.elements or self.chains or self.sets)


def delta_between(new: Ruleset, previous: Ruleset) -> Delta:
    """What differs from ``previous`` to ``new``: the delta ``new`` was rendered with when it
    was rendered from ``previous`` (in proportion to the change), else a diff of the two
    whole tables (both must be current)."""
    if new.state is previous.state and new.base_generation == previous.generation:
        assert new.delta is not None
        return new.delta
    if new is previous:
        return Delta()
    elements = {}
    for name in new.element_sets.keys() | previous.element_sets.keys():
        changes = diff_dicts(previous.element_sets.get(name, {}), new.element_sets.get(name, {}))
        if changes:
            elements[name] = changes
    return Delta(
        chains=diff_dicts(previous.chain_blocks, new.chain_blocks),
        elements=elements,
        affinity=diff_dicts(previous.affinity_sets, new.affinity_sets),
        udp=diff_dicts(previous.udp, new.udp),
    )


def transaction(new: Ruleset, previous: Ruleset | None, lingering: Lingering | None = None) -> str:
    """One atomic nft script that makes the table equal to ``new``, given that the kernel
    holds ``previous`` (None: unknown, replace the table) plus what ``lingering`` names,
    which this script deletes."""
    t = f"{new.family} {new.table}"
    kind = transaction_kind(new, previous)
    if kind == "replace" or previous is None:
        return f"add table {t}\ndelete table {t}\n{new.body}"
    delta = delta_between(new, previous)
    if kind == "rewrite":
        return _rewrite(new, delta, lingering or Lingering())
    return _update(new, previous, delta, lingering or Lingering())


def transaction_kind(
    new: Ruleset, previous: Ruleset | None
) -> Literal["replace", "rewrite", "update"]:
    """replace: a new table; rewrite: flush and refill it (an affinity timeout changed, and
    the entries of the others must be kept); update: only what changed."""
    if previous is None or (previous.table, previous.static) != (new.table, new.static):
        return "replace"
    changed = delta_between(new, previous).affinity.values()
    if any(before is not None and after is not None for before, after in changed):
        return "rewrite"
    return "update"


def retired(new: Ruleset, previous: Ruleset | None) -> Lingering:
    """What an update from ``previous`` to ``new`` leaves in the kernel for later (nothing
    after a replace or a rewrite, which remove everything ``new`` does not hold)."""
    if previous is None or transaction_kind(new, previous) != "update":
        return Lingering()
    delta = delta_between(new, previous)
    elements = {}
    for name in sorted(LATE_DELETE):
        keys = [k for k, (_, after) in delta.elements.get(name, {}).items() if after is None]
        if keys:
            elements[name] = sorted(keys, key=_slot_order)
    chains = tuple(sorted(c for c, (_, after) in delta.chains.items() if after is None))
    sets = tuple(sorted(a for a, (_, after) in delta.affinity.items() if after is None))
    return Lingering(elements, chains, sets)


def _slot_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (0, key)


def _update(new: Ruleset, previous: Ruleset, delta: Delta, lingering: Lingering) -> str:
    """Only what changed: chains flushed and rewritten, elements deleted and added. Slots and
    chains dropped now stay for the next sync; the ``lingering`` ones go now."""
    t = f"{new.family} {new.table}"
    late_chains = set(lingering.chains)
    changed: list[str] = []
    added: list[str] = []
    for c, (before, after) in delta.chains.items():
        if after is None:
            continue  # retired: deleted by the next sync
        # A chain retired by the last sync and wanted again is still in the kernel.
        (changed if before is not None or c in late_chains else added).append(c)
    blocks_now = new.chain_blocks
    back = [c for c in lingering.chains if c in blocks_now and c not in delta.chains]
    changed += back  # retired last time, unchanged since it came back: still rewrite it
    late = [c for c in lingering.chains if c not in blocks_now]
    lines = [f"add table {t}"]
    lines.extend(f"flush chain {t} {c}" for c in (*changed, *late))
    blocks = [
        affinity_decl(a, after, new.family)
        for a, (before, after) in delta.affinity.items()
        if before is None and after is not None and a not in lingering.sets
    ]
    blocks.extend(blocks_now[c] for c in (*changed, *added))
    if new.services_chain != previous.services_chain:
        lines.append(f"flush chain {t} {SERVICES_CHAIN}")
        blocks.append(new.services_chain)
    elements_now = new.element_sets
    for name, keys in lingering.elements.items():
        gone = [k for k in keys if k not in elements_now.get(name, {})]
        if gone:
            lines.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
    adds = []
    for name, changes in delta.elements.items():
        late_map = name in LATE_DELETE  # changed values now, dropped keys later
        stale = [
            k
            for k, (before, after) in changes.items()
            if before is not None and (after is not None or not late_map)
        ]
        fresh = {k: after for k, (_, after) in changes.items() if after is not None}
        if stale:
            lines.append(f"delete element {t} {name} {{ {', '.join(stale)} }}")
        if fresh:
            adds.append(f"add element {t} {name} {{ {', '.join(element_items(fresh))} }}")
    if blocks:
        lines.append(f"table {t} {{\n" + "".join(blocks) + "}")
    lines.extend(adds)
    lines.extend(f"delete chain {t} {c}" for c in late)
    lines.extend(f"delete set {t} {a}" for a in lingering.sets if a not in new.affinity_sets)
    return "\n".join(lines) + "\n"


def _rewrite(new: Ruleset, delta: Delta, lingering: Lingering) -> str:
    """Every rule and element again, keeping the affinity sets whose timeout stays."""
    t = f"{new.family} {new.table}"
    lines = [f"add table {t}", f"flush table {t}"]
    types = map_types(new.family)
    for name in MAPS:
        lines.append(f"add map {t} {name} {{ type {types[name]}; }}")
        lines.append(f"flush map {t} {name}")
    for name, kind in set_types(new.family).items():
        lines.append(f"add set {t} {name} {{ type {kind}; }}")
        lines.append(f"flush set {t} {name}")
    gone = {c for c, (_, after) in delta.chains.items() if after is None}
    gone.update(c for c in lingering.chains if c not in new.chain_blocks)
    for chain in sorted(gone):
        lines.append(f"delete chain {t} {chain}")
    sets = {a for a, (before, _) in delta.affinity.items() if before is not None}
    sets.update(a for a in lingering.sets if a not in new.affinity_sets)
    for aff in sorted(sets):
        lines.append(f"delete set {t} {aff}")  # gone, or its timeout changed
    lines.append(new.body)
    return "\n".join(lines)


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
