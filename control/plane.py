"""The control plane: store, sources, controllers and translators in one trio task tree.

::

    manifest dir ──► store (admission: ClusterIP / NodePort allocation)
                       │  ▲
                       │  └── endpoints controller (Services + Pods -> EndpointSlices)
                       ▼
                     translators (one per config kind, pure) ──► published configs

Each loop is woken by a change and then waits ``debounce`` seconds so a burst of changes
costs one run. Work is proportional to the change:

- the endpoints controller reads the store events since its last run, turns them into the
  Services they affect (endpoints.affected: a Pod's old and new labels through the selector
  index) and re-plans only those; it skips the events of its own writes. The whole plan runs
  at start, when the events it needs were compacted away, and every ``resync`` seconds;
- a translator that declares the kinds it ``reads`` is not run when none of them changed,
  and the built-in ones rebuild only the Services whose objects changed;
- a config kind is translated only once something wants it (:meth:`ControlPlane.want`): a
  component fed in process or a config stream subscriber (:meth:`ControlPlane.next_config`),
  a read of its config (:meth:`ControlPlane.current`), or the ``wanted`` kinds given at
  construction. The first want after start builds it in full from the current snapshot;
  from then on it is translated incrementally with the others. ``mesh up --no-proxy`` thus
  never builds the proxy config unless a ``mesh proxy --control`` subscribes. Status
  writers do not depend on any translation (they compute what they write from the
  snapshot) and always run, wanted or not.

A config kind is published again only when its content changed; its version is the store
revision it was translated from, and it is serialised once per version
(:meth:`ControlPlane.encoded`), however many subscribers stream it. Subscribers
(:meth:`ControlPlane.configs`) always get the latest config, never a backlog.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh.config.base import ComponentConfig
from mesh.control import endpoints
from mesh.control.ipam import DEFAULT_NODE_PORTS, DEFAULT_SERVICE_CIDR, ServiceAllocator
from mesh.control.reports import Reports
from mesh.control.source_dir import DirSource
from mesh.control.store import Gone, Snapshot, Store, WatchEvent
from mesh.control.translate.conditions import carry_transitions
from mesh.gcpause import paused_then_frozen
from mesh.manifests import ManifestError
from mesh.objects import KubeObject
from mesh.registry import PlaneSettings, StatusWriter, registrations

log = logging.getLogger("mesh.control")

Translator = Callable[[Snapshot], ComponentConfig]
PodMode = Literal["disabled", "insecure", "verified"]


def default_translators(
    *,
    node_name: str = "",
    dns_zone: str = "cluster.local",
    dns_ttl: int = 5,
    dns_pod_mode: PodMode = "insecure",
    gateway: GatewaySettings | None = None,
) -> dict[str, Translator]:
    """The translators of every registered component (mesh/registry.py)."""
    settings = _settings(node_name, dns_zone, dns_ttl, dns_pod_mode, gateway)
    return {reg.name: reg.translator(settings) for reg in registrations()}


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """What the gateway's translator and status need beyond the snapshot."""

    gateway_cidr: str = "127.11.0.0/16"
    ingress_addresses: tuple[str, ...] = ("127.0.0.1",)
    privileged: bool = False


def _settings(
    node_name: str, zone: str, ttl: int, pod_mode: str, gateway: GatewaySettings | None
) -> PlaneSettings:
    g = gateway or GatewaySettings()
    return PlaneSettings(
        node_name, zone, ttl, pod_mode, g.gateway_cidr, g.ingress_addresses, g.privileged
    )


def _same_content(a: ComponentConfig, b: ComponentConfig) -> bool:
    # Field by field without copying: the built-in translators reuse unchanged records, so
    # most comparisons end at an identity check inside the tuples.
    if type(a) is not type(b):
        return False
    fields = type(a).model_fields
    return all(getattr(a, f) == getattr(b, f) for f in fields if f != "version")


def _reads(translator: Translator) -> frozenset[str] | None:
    """The kinds a translator declares it reads (None: any change may matter)."""
    reads = getattr(translator, "reads", None)
    return frozenset(reads) if reads is not None else None


class _Metrics:
    def __init__(self, plane: ControlPlane) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("mesh_control_store_revision", "Current store revision", registry=r).set_function(
            lambda: plane.store.revision
        )
        Gauge("mesh_control_manifest_errors", "Manifest objects in error", registry=r).set_function(
            lambda: len(plane.errors)
        )
        self.version = Gauge(
            "mesh_control_config_version", "Published config version", ["kind"], registry=r
        )
        self.publishes = Counter(
            "mesh_control_config_publishes", "Configs published", ["kind"], registry=r
        )
        self.translate_errors = Counter(
            "mesh_control_translate_errors", "Translator failures", ["kind"], registry=r
        )
        self.slice_writes = Counter(
            "mesh_control_endpointslice_writes", "EndpointSlices written or deleted", registry=r
        )
        self.stream_lines = Counter(
            "mesh_control_stream_sent",
            "Config stream lines sent, by form (full snapshot or delta)",
            ["kind", "form"],
            registry=r,
        )
        self.stream_bytes = Counter(
            "mesh_control_stream_sent_bytes",
            "Config stream bytes sent, by form (full snapshot or delta)",
            ["kind", "form"],
            registry=r,
        )


class ControlPlane:
    def __init__(
        self,
        manifest_dir: Path | Sequence[Path] | None = None,  # files or directories
        *,
        service_cidr: str | Iterable[str] = DEFAULT_SERVICE_CIDR,
        node_ports: range = DEFAULT_NODE_PORTS,
        node_name: str = "",
        dns_zone: str = "cluster.local",
        dns_ttl: int = 5,
        dns_pod_mode: PodMode = "insecure",
        translators: Mapping[str, Translator] | None = None,
        gateway: GatewaySettings | None = None,
        debounce: float = 0.01,
        poll_interval: float = 0.25,
        resync: float = 300.0,
        tune_gc: bool = False,
        history: int = 10_000,
        wanted: Iterable[str] = (),
    ) -> None:
        self.allocator = ServiceAllocator(service_cidr, node_ports)
        self.store = Store(history, admit=self.allocator.admit)
        self.allocator.lookup = self.store.get
        self.source = (
            DirSource(manifest_dir, self.store, poll_interval=poll_interval)
            if manifest_dir is not None
            else None
        )
        if translators is None:
            translators = default_translators(
                node_name=node_name,
                dns_zone=dns_zone,
                dns_ttl=dns_ttl,
                dns_pod_mode=dns_pod_mode,
                gateway=gateway,
            )
        # Status written back for the objects the components serve (registry ``status``);
        # only with the registered translators (a plane built with its own has none).
        settings = _settings(node_name, dns_zone, dns_ttl, dns_pod_mode, gateway)
        self.status_writers: dict[str, StatusWriter] = {
            reg.name: reg.status(settings)
            for reg in registrations()
            if reg.status is not None and reg.name in translators
        }
        self.translators: dict[str, Translator] = dict(translators)
        self.debounce = debounce
        self.resync = resync
        self.tune_gc = tune_gc
        self.planned = 0  # Services re-planned by the endpoints controller (tests pin it)
        self._own_writes: set[int] = set()  # revisions of the controller's own slice writes
        self._published: dict[str, ComponentConfig] = {}
        self._previous: dict[str, ComponentConfig] = {}  # the version before, for deltas
        self._encoded: dict[str, tuple[ComponentConfig, bytes]] = {}
        self._broken: set[str] = set()  # kinds whose last translation failed
        # The kinds translated (see want): the others cost nothing until someone reads them.
        self._wanted: set[str] = {k for k in wanted if k in self.translators}
        self.builds: dict[str, int] = {}  # translator runs by kind (tests pin laziness)
        self._publish_event = trio.Event()
        self._translated_revision = -1
        self._translated_event = trio.Event()
        self.reports = Reports()  # components' run-time reports (report)
        self._report_event = trio.Event()
        self._metrics = _Metrics(self)
        self.registry = self._metrics.registry

    # --- objects -----------------------------------------------------------------------

    def apply(self, obj: KubeObject) -> KubeObject:
        """Create or replace an object through admission (as ``kubectl apply`` would)."""
        return self.store.apply(obj)

    def delete(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self.store.delete(kind, namespace, name)

    @property
    def errors(self) -> list[ManifestError]:
        return self.source.errors if self.source is not None else []

    @property
    def warnings(self) -> list[str]:
        return self.source.warnings if self.source is not None else []

    # --- configs -----------------------------------------------------------------------

    def register(self, kind: str, translator: Translator) -> None:
        self.translators[kind] = translator

    @property
    def kinds(self) -> list[str]:
        return sorted(self.translators)

    def want(self, kind: str) -> None:
        """Translate ``kind`` from now on. Before the first translation this only marks it;
        after, a kind nobody wanted yet is built in full from the store's current snapshot
        at once (so its first reader gets a complete config, the same as an eager build),
        then follows changes incrementally with the others. Unknown kinds are ignored."""
        if kind in self._wanted or kind not in self.translators:
            return
        self._wanted.add(kind)
        if self._translated_revision < 0:
            return  # the first translation builds it with the others
        with self._gc_paused():  # a first build at scale is start-up work too
            published = self._translate_kind(kind, self.store.snapshot(), None, None)
        log.info("config kind wanted", extra={"kind": kind})
        if published:
            self._wake_subscribers()

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    @property
    def ready(self) -> bool:
        """Translated once, and every wanted kind has a published config."""
        return self._translated_revision >= 0 and all(k in self._published for k in self._wanted)

    def current(self, kind: str) -> ComponentConfig | None:
        """The published config of ``kind``; reading it wants it (:meth:`want`)."""
        self.want(kind)
        return self._published.get(kind)

    def previous(self, kind: str) -> ComponentConfig | None:
        """The version of ``kind`` published before the current one (the base of the delta
        the config stream sends to subscribers that have it)."""
        return self._previous.get(kind)

    def stream_sent(self, kind: str, form: str, size: int) -> None:
        """Count one config stream line of ``form`` ("full" or "delta") sent."""
        self._metrics.stream_lines.labels(kind, form).inc()
        self._metrics.stream_bytes.labels(kind, form).inc(size)

    def encoded(self, config: ComponentConfig) -> bytes:
        """``config`` as one JSON line: serialised once per published version and shared by
        every subscriber of the config stream."""
        kind = next((k for k, c in self._published.items() if c is config), None)
        if kind is None:
            return config.model_dump_json().encode() + b"\n"
        cached = self._encoded.get(kind)
        if cached is None or cached[0] is not config:
            cached = (config, config.model_dump_json().encode() + b"\n")
            self._encoded[kind] = cached
        return cached[1]

    async def configs(self, kind: str) -> AsyncGenerator[ComponentConfig, None]:
        """The current config of ``kind`` (once there is one), then each new version."""
        if kind not in self.translators:
            raise KeyError(f"no translator for config kind {kind!r}")
        last: ComponentConfig | None = None
        while True:
            # Re-checked after each yield: a newer one may have come while the consumer worked.
            last = await self.next_config(kind, last)
            yield last

    async def next_config(self, kind: str, last: ComponentConfig | None) -> ComponentConfig:
        """The current config of ``kind`` unless it is ``last``; else wait for a new one.
        Safe to cancel (unlike an ``__anext__`` of :meth:`configs`). A subscriber wants the
        kind (:meth:`want`)."""
        self.want(kind)
        while True:
            config = self._published.get(kind)
            if config is not None and config is not last:
                return config
            await self._publish_event.wait()

    def translate(self, snap: Snapshot, events: Sequence[WatchEvent] | None = None) -> list[str]:
        """Run the wanted kinds' translators on ``snap``; publish what changed. Returns the
        kinds published.

        ``events`` are the store's events since the last run (None: unknown, translate from
        scratch). A translator that declares what it ``reads``, and has published before, is
        not run when no event is of those kinds; one with an ``update`` method gets the events
        and visits only what they touch."""
        changed = frozenset(ev.object.KIND for ev in events) if events is not None else None
        published = [
            kind
            for kind in sorted(self._wanted)
            if self._translate_kind(kind, snap, events, changed)
        ]
        if published:
            self._wake_subscribers()
        self._write_status(snap, changed)
        self._translated_revision = snap.revision
        self._translated_event.set()
        self._translated_event = trio.Event()
        return published

    def _translate_kind(
        self,
        kind: str,
        snap: Snapshot,
        events: Sequence[WatchEvent] | None,
        changed: frozenset[str] | None,
    ) -> bool:
        """Translate one kind; True when it published a new version."""
        translator = self.translators[kind]
        reads = _reads(translator)
        nothing_read = changed is not None and reads is not None and not reads & changed
        if nothing_read and kind in self._published:
            return False
        update = getattr(translator, "update", None)
        self.builds[kind] = self.builds.get(kind, 0) + 1
        try:
            incremental = kind in self._published and kind not in self._broken
            if update is not None and events is not None and incremental:
                config = update(snap, events)
            else:
                config = translator(snap)
            config = config.model_copy(update={"version": snap.revision})
        except Exception:
            # One broken translation keeps serving its last config; the others go on.
            log.exception("translation failed", extra={"kind": kind})
            self._broken.add(kind)  # its memo may be half updated: rebuild in full next
            self._metrics.translate_errors.labels(kind).inc()
            return False
        self._broken.discard(kind)
        prev = self._published.get(kind)
        if prev is not None and _same_content(prev, config):
            return False
        if prev is not None:
            self._previous[kind] = prev
        self._published[kind] = config
        self._metrics.version.labels(kind).set(config.version)
        self._metrics.publishes.labels(kind).inc()
        log.info("config published", extra={"kind": kind, "version": config.version})
        return True

    def _wake_subscribers(self) -> None:
        self._publish_event.set()
        self._publish_event = trio.Event()

    def takes_reports(self, kind: str) -> bool:
        """Whether ``kind``'s status writer takes run-time reports (:meth:`report`)."""
        return getattr(self.status_writers.get(kind), "report", None) is not None

    def report(
        self, kind: str, report: Any, *, instance: str = "local", expires: float | None = None
    ) -> None:
        """A component's report of its run-time state (the gateway: listeners it could not
        open), from ``instance`` (in process: "local"; over HTTP: the reporter's name) and
        live until ``expires`` (trio time; None: until replaced). What the kind's live reports
        agree on (control/reports.py) goes to its status writer; the status is written again
        at once when that changed it (the next translation would otherwise be the next
        object change)."""
        if not self.takes_reports(kind):
            return
        if self.reports.put(kind, instance, report, expires):
            self._hand_report(kind)
        if expires is not None:
            self._report_event.set()  # the expiry loop may have a later wake-up

    def _hand_report(self, kind: str) -> None:
        take = getattr(self.status_writers.get(kind), "report", None)
        if take is not None and take(self.reports.merged(kind), live=self.reports.live(kind)):
            self._write_status(self.store.snapshot(), None, only=kind)

    async def _reports_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Drop each report whose lease ended (its reporter went away without a word)."""
        task_status.started()
        while True:
            self._report_event = trio.Event()
            wake = self.reports.next_expiry()
            with trio.move_on_at(math.inf if wake is None else wake):
                await self._report_event.wait()
            for kind in self.reports.expire(trio.current_time()):
                log.info("report expired", extra={"kind": kind})
                self._hand_report(kind)

    def _write_status(
        self, snap: Snapshot, changed: frozenset[str] | None, only: str | None = None
    ) -> None:
        for kind, writer in sorted(self.status_writers.items()):
            if only is not None and kind != only:
                continue
            reads = _reads(writer)  # type: ignore[arg-type]
            if changed is not None and reads is not None and not reads & changed:
                continue
            try:
                updates = writer(snap)
            except Exception:
                log.exception("status computation failed", extra={"kind": kind})
                continue
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.store.clock()))
            for obj in updates:
                # Conditions keep the time they last changed status (an unchanged one, its
                # old time: an unchanged status is then no write at all).
                obj = carry_transitions(self.store.get(*obj.key), obj, now)
                try:
                    self.store.apply(obj)
                except Exception as exc:  # a refused write leaves that status as it was
                    log.warning(
                        "status write refused", extra={"object": "/".join(obj.key), "error": exc}
                    )

    async def synced(self) -> int:
        """Wait until the translators have seen the store's current revision; return it."""
        while self._translated_revision < self.store.revision:
            await self._translated_event.wait()
        return self._translated_revision

    # --- loops -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the manifests, reconcile, publish the first configs, then follow changes."""
        async with trio.open_nursery() as nursery:
            with self._gc_paused():
                if self.source is not None:
                    await nursery.start(self.source.run)
                await nursery.start(self._endpoints_loop)
                await nursery.start(self._translate_loop)
                await nursery.start(self._reports_loop)
            log.info("control plane started", extra=self._start_fields())
            task_status.started()

    def _start_fields(self) -> dict[str, Any]:
        """What the start line says of the config kinds: those translated from the start,
        and those built once a component first asks (``mesh control`` alone: all of them;
        never an empty list that reads as "nothing to serve")."""
        fields: dict[str, Any] = {"revision": self.store.revision}
        if self._wanted:
            fields["translating"] = ",".join(sorted(self._wanted))
        idle = sorted(set(self.translators) - self._wanted)
        if idle:
            fields["built_on_first_request"] = ",".join(idle)
        return fields

    @contextlib.contextmanager
    def _gc_paused(self) -> Iterator[None]:
        """With ``tune_gc`` (the process is ours: ``mesh up``, ``mesh control``), no cyclic
        garbage collection while the first objects load, then every object alive is moved
        out of the collector's sight (``gc.freeze``): the collector's full passes over a
        store of 100,000 long-lived objects were half of the start-up time, and those objects
        live as long as the process or die by reference counting."""
        if not self.tune_gc:
            yield
            return
        with paused_then_frozen():
            yield

    def reconcile_endpoints(self, services: set[tuple[str, str]] | None = None) -> int:
        """Bring EndpointSlices in line with the store once, for the given Services (None:
        every Service, the full plan); returns the writes made."""
        snap = self.store.snapshot()
        if services is None:
            plan = endpoints.plan(snap)
            self.planned += len(snap.by_kind.get("Service", {}))
        else:
            plan = endpoints.plan_services(snap, services)
            self.planned += len(services)
        for es in plan.apply:
            self._own_writes.add(int(self.store.apply(es).metadata.resource_version))
        for ns, name in plan.delete:
            gone = self.store.delete("EndpointSlice", ns, name)
            if gone is not None:
                self._own_writes.add(int(gone.metadata.resource_version))
        writes = len(plan.apply) + len(plan.delete)
        if writes:
            self._metrics.slice_writes.inc(writes)
            log.info(
                "endpoint slices reconciled",
                extra={"applied": len(plan.apply), "deleted": len(plan.delete)},
            )
        return writes

    async def _endpoints_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.reconcile_endpoints()
        task_status.started()
        revision = self.store.revision
        self._own_writes.clear()
        next_resync = trio.current_time() + self.resync
        while True:
            with trio.move_on_at(next_resync):
                await self.store.wait_for_change(revision)
                await trio.sleep(self.debounce)
            if trio.current_time() >= next_resync:
                self._own_writes.clear()
                self.reconcile_endpoints()
                next_resync = trio.current_time() + self.resync
            else:
                self.reconcile_endpoints(self._affected_since(revision))
            revision = self.store.revision
            # Own writes at or below ``revision`` are never read again: keep the set small.
            self._own_writes.clear()

    def _affected_since(self, revision: int) -> set[tuple[str, str]] | None:
        """The Services to re-plan for the events after ``revision`` (None: all of them)."""
        try:
            events = self.store.events_since(revision)
        except Gone:
            self._own_writes.clear()
            return None
        theirs: list[WatchEvent] = []
        for ev in events:
            if ev.revision in self._own_writes:
                self._own_writes.discard(ev.revision)
            elif endpoints.is_relevant(ev.object):
                theirs.append(ev)
        return endpoints.affected(self.store.snapshot(), theirs)

    def _events_since(self, revision: int) -> list[WatchEvent] | None:
        try:
            return self.store.events_since(revision)
        except Gone:
            return None

    async def _translate_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.translate(self.store.snapshot())
        task_status.started()
        while True:
            revision = self._translated_revision
            await self.store.wait_for_change(revision)
            await trio.sleep(self.debounce)
            self.translate(self.store.snapshot(), self._events_since(revision))

    def status(self) -> dict[str, Any]:
        return {
            "revision": self.store.revision,
            "configs": {k: c.version for k, c in sorted(self._published.items())},
            "errors": [str(e) for e in self.errors],
            "warnings": self.warnings,
        }
