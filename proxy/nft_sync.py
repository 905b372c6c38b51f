"""Keep the kernel's table equal to the rendered one: transactions, schedule, runners.

Theory of operation (kube-proxy's sync loop, in pieces that can be tested alone):

- :func:`transaction` turns a rendered :class:`Ruleset` into one ``nft -f`` script, applied
  atomically by the kernel. A full sync replaces the table (``add table; delete table;
  table {...}``): the first one, after a failure or drift, and every ``full_sync_period``.
  Otherwise the sync is incremental, as kube-proxy's: only the chains whose text changed
  are flushed and rewritten, map and set elements are diffed (``delete element`` /
  ``add element``), chains and affinity sets that went away are deleted last; affinity sets
  that stay keep their entries (clients keep their endpoints across syncs). When an
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
from mesh.proxy.conntrack import ConntrackCleaner, StaleEntry, UdpTargets, stale_entries
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


def transaction(new: Ruleset, previous: Ruleset | None, lingering: Lingering | None = None) -> str:
    """One atomic nft script that makes the table equal to ``new``, given that the kernel
    holds ``previous`` (None: unknown, replace the table) plus what ``lingering`` names,
    which this script deletes."""
    t = f"{new.family} {new.table}"
    kind = transaction_kind(new, previous)
    if kind == "replace" or previous is None:
        return f"add table {t}\ndelete table {t}\n{new.body}"
    if kind == "rewrite":
        return _rewrite(new, previous)
    return _update(new, previous, lingering or Lingering())


def transaction_kind(
    new: Ruleset, previous: Ruleset | None
) -> Literal["replace", "rewrite", "update"]:
    """replace: a new table; rewrite: flush and refill it (an affinity timeout changed, and
    the entries of the others must be kept); update: only what changed."""
    if previous is None or (previous.table, previous.static) != (new.table, new.static):
        return "replace"
    if any(new.affinity_sets.get(a, v) != v for a, v in previous.affinity_sets.items()):
        return "rewrite"
    return "update"


def retired(new: Ruleset, previous: Ruleset | None) -> Lingering:
    """What an update from ``previous`` to ``new`` leaves in the kernel for later (nothing
    after a replace or a rewrite, which remove everything ``new`` does not hold)."""
    if previous is None or transaction_kind(new, previous) != "update":
        return Lingering()
    elements = {}
    for name in sorted(LATE_DELETE):
        keys = previous.element_sets.get(name, {}).keys() - new.element_sets.get(name, {}).keys()
        if keys:
            elements[name] = sorted(keys, key=_slot_order)
    chains = tuple(sorted(previous.chain_blocks.keys() - new.chain_blocks.keys()))
    sets = tuple(sorted(previous.affinity_sets.keys() - new.affinity_sets.keys()))
    return Lingering(elements, chains, sets)


def _slot_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (0, key)


def _update(new: Ruleset, previous: Ruleset, lingering: Lingering) -> str:
    """Only what changed: chains flushed and rewritten, elements deleted and added. Slots and
    chains dropped now stay for the next sync; the ``lingering`` ones go now."""
    t = f"{new.family} {new.table}"
    old = previous.chain_blocks
    back = [c for c in lingering.chains if c in new.chain_blocks]  # retired, now wanted again
    changed = [c for c, block in new.chain_blocks.items() if c in old and old[c] != block]
    changed += back
    added = [c for c in new.chain_blocks if c not in old and c not in back]
    late = [c for c in lingering.chains if c not in new.chain_blocks]
    lines = [f"add table {t}"]
    lines.extend(f"flush chain {t} {c}" for c in (*changed, *late))
    blocks = [affinity_decl(a, s, new.family) for a, s in new.affinity_sets.items()
              if a not in previous.affinity_sets and a not in lingering.sets]  # fmt: skip
    blocks.extend(new.chain_blocks[c] for c in (*changed, *added))
    if new.services_chain != previous.services_chain:
        lines.append(f"flush chain {t} {SERVICES_CHAIN}")
        blocks.append(new.services_chain)
    for name, keys in lingering.elements.items():
        gone = [k for k in keys if k not in new.element_sets.get(name, {})]
        if gone:
            lines.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
    adds = []
    for name, elems in new.element_sets.items():
        was = previous.element_sets.get(name, {})
        if name in LATE_DELETE:  # changed values now, dropped keys later
            stale = [k for k, v in was.items() if k in elems and elems[k] != v]
        else:
            stale = [k for k, v in was.items() if elems.get(k) != v]
        fresh = {k: v for k, v in elems.items() if was.get(k) != v}
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


def _rewrite(new: Ruleset, previous: Ruleset) -> str:
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
    for chain in sorted(previous.chains - new.chains):
        lines.append(f"delete chain {t} {chain}")
    for aff, timeout in sorted(previous.affinity_sets.items()):
        if new.affinity_sets.get(aff) != timeout:
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
        self.udp: UdpTargets | None = None  # UDP targets of the last successful sync
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
        try:
            ruleset = render(config, self.options, self.applied)
            self.runner.apply(transaction(ruleset, self.applied, self.lingering))
        except (NftError, ValueError) as exc:
            self.applied = None
            self.lingering = Lingering()
            log.warning("nftables sync failed", extra={"error": str(exc)})
            return SyncResult(False, time.perf_counter() - start, ruleset, str(exc))
        # A replaced table took everything lingering with it; an update deleted what lingered
        # and left what it retired for the next sync.
        self.lingering = retired(ruleset, self.applied)
        stale = stale_entries(self.udp, ruleset.udp, VERSION[ruleset.family])
        if self.applied is None:
            self.last_full = now
        self.applied = ruleset
        self.udp = ruleset.udp
        if stale and self.conntrack is not None:
            self.conntrack.delete(stale)
        return SyncResult(True, time.perf_counter() - start, ruleset, stale=stale)

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
