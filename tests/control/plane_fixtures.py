"""A tiny config kind and objects for control-plane tests: the plane publishes the names of
the Services it holds, so a test sees at once which snapshot a component got."""

from __future__ import annotations

from mesh.config.base import ComponentConfig
from mesh.control import endpoints
from mesh.control.store import Snapshot, Store
from mesh.objects import Service
from mesh.stream_client import Backoff

FAST = Backoff(initial=0.02, maximum=0.1)


class NamesConfig(ComponentConfig):
    services: tuple[str, ...] = ()


def names(snap: Snapshot) -> NamesConfig:
    return NamesConfig(services=tuple(o.name for o in snap.list("Service")))


def svc(name: str) -> Service:
    return Service.model_validate({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})


def mirror_legacy_endpoints(store: Store) -> None:
    """Mirror the store's legacy Endpoints into EndpointSlices, as the control plane's
    endpoints controller does before any translator reads them."""
    snap = store.snapshot()
    keys = [(o.namespace, o.name) for o in snap.list("Endpoints")]
    for es in endpoints.plan_services(snap, keys).apply:
        store.apply(es)
