"""The control plane: store, sources, controllers and translators in one trio task tree.

::

    manifest dir ──► store (admission: ClusterIP / NodePort allocation)
                       │  ▲
                       │  └── endpoints controller (Services + Pods -> EndpointSlices)
                       ▼
                     translators (one per config kind, pure) ──► published configs

Each loop is level-triggered, as kube-proxy's sync runner is: a change only wakes it; it then
waits ``debounce`` seconds so a burst of changes costs one run, and rebuilds its whole output
from one snapshot. A config kind is published again only when its content changed; its
version is the store revision it was translated from. Subscribers (:meth:`ControlPlane.configs`)
always get the latest config, never a backlog.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh.config.base import ComponentConfig
from mesh.control import endpoints
from mesh.control.ipam import DEFAULT_NODE_PORTS, DEFAULT_SERVICE_CIDR, ServiceAllocator
from mesh.control.source_dir import DirSource
from mesh.control.store import Gone, Snapshot, Store
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
    return type(a) is type(b) and a.model_copy(update={"version": 0}) == b.model_copy(
        update={"version": 0}
    )


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


class ControlPlane:
    def __init__(
        self,
        manifest_dir: Path | None = None,
        *,
        service_cidr: str | Iterable[str] = DEFAULT_SERVICE_CIDR,
        node_ports: range = DEFAULT_NODE_PORTS,
        node_name: str = "",
        dns_zone: str = "cluster.local",
        dns_ttl: int = 5,
        dns_pod_mode: PodMode = "insecure",
        translators: Mapping[str, Translator] | None = None,
        gateway: GatewaySettings | None = None,
        debounce: float = 0.05,
        poll_interval: float = 0.25,
        history: int = 10_000,
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
        self._published: dict[str, ComponentConfig] = {}
        self._publish_event = trio.Event()
        self._translated_revision = -1
        self._translated_event = trio.Event()
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

    def current(self, kind: str) -> ComponentConfig | None:
        return self._published.get(kind)

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
        Safe to cancel (unlike an ``__anext__`` of :meth:`configs`)."""
        while True:
            config = self._published.get(kind)
            if config is not None and config is not last:
                return config
            await self._publish_event.wait()

    def translate(self, snap: Snapshot) -> list[str]:
        """Run every translator on ``snap``; publish what changed. Returns the kinds published."""
        published = []
        for kind, translator in sorted(self.translators.items()):
            try:
                config = translator(snap).model_copy(update={"version": snap.revision})
            except Exception:
                # One broken translation keeps serving its last config; the others go on.
                log.exception("translation failed", extra={"kind": kind})
                self._metrics.translate_errors.labels(kind).inc()
                continue
            prev = self._published.get(kind)
            if prev is not None and _same_content(prev, config):
                continue
            self._published[kind] = config
            self._metrics.version.labels(kind).set(config.version)
            self._metrics.publishes.labels(kind).inc()
            published.append(kind)
            log.info("config published", extra={"kind": kind, "version": config.version})
        if published:
            self._publish_event.set()
            self._publish_event = trio.Event()
        self._write_status(snap)
        self._translated_revision = snap.revision
        self._translated_event.set()
        self._translated_event = trio.Event()
        return published

    def _write_status(self, snap: Snapshot) -> None:
        for kind, writer in sorted(self.status_writers.items()):
            try:
                updates = writer(snap)
            except Exception:
                log.exception("status computation failed", extra={"kind": kind})
                continue
            for obj in updates:
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
            if self.source is not None:
                await nursery.start(self.source.run)
            await nursery.start(self._endpoints_loop)
            await nursery.start(self._translate_loop)
            log.info(
                "control plane started",
                extra={"revision": self.store.revision, "kinds": self.kinds},
            )
            task_status.started()

    def reconcile_endpoints(self) -> int:
        """Bring EndpointSlices in line with the store once; returns the writes made."""
        plan = endpoints.plan(self.store.snapshot())
        for es in plan.apply:
            self.store.apply(es)
        for ns, name in plan.delete:
            self.store.delete("EndpointSlice", ns, name)
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
        while True:
            await self.store.wait_for_change(revision)
            await trio.sleep(self.debounce)
            if self._relevant_since(revision):
                self.reconcile_endpoints()
            revision = self.store.revision

    def _relevant_since(self, revision: int) -> bool:
        try:
            events = self.store.events_since(revision)
        except Gone:
            return True
        return any(endpoints.is_relevant(ev.object) for ev in events)

    async def _translate_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.translate(self.store.snapshot())
        task_status.started()
        while True:
            await self.store.wait_for_change(self._translated_revision)
            await trio.sleep(self.debounce)
            self.translate(self.store.snapshot())

    def status(self) -> dict[str, Any]:
        return {
            "revision": self.store.revision,
            "configs": {k: c.version for k, c in sorted(self._published.items())},
            "errors": [str(e) for e in self.errors],
            "warnings": self.warnings,
        }
