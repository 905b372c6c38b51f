"""Service references -> gateway backends (name, protocol, endpoints).

``resolve_endpoints`` is the one place that decides which endpoints of a Service the gateway
may use, and it defers to the shared endpoint policy (mesh/endpoint_policy.py): ready
endpoints, else the serving-and-terminating ones, the Service port resolved per endpoint by
name, as kube-proxy's topology.go. Legacy Endpoints reach it as the EndpointSlices the
endpoints controller mirrors them into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh import endpoint_policy
from mesh.config.gateway import GatewayBackend, GatewayEndpoint
from mesh.objects import EndpointSlice, Service, ServicePort

if TYPE_CHECKING:
    from mesh.control.store import Snapshot


@dataclass(frozen=True)
class Resolved:
    backend: GatewayBackend | None
    error: str | None = None  # why the reference did not resolve (Service or port missing)
    port_name: str = ""  # the Service port's name (a BackendTLSPolicy's sectionName)


def backend_name(namespace: str, service: str, port: int) -> str:
    return f"{namespace}/{service}:{port}"


def resolve_service(
    snapshot: Snapshot,
    namespace: str,
    name: str,
    port: int | str | None,
    protocol: str = "http",
) -> Resolved:
    """A Service port, by number or name, with its usable endpoints."""
    svc = snapshot.get(Service.KIND, namespace, name)
    if not isinstance(svc, Service):
        return Resolved(None, f"Service {namespace}/{name} not found")
    sp = _service_port(svc, port)
    if sp is None:
        want = "a port" if port is None else f"port {port!r}"
        return Resolved(None, f"Service {namespace}/{name} has no {want}")
    endpoints = resolve_endpoints(snapshot, svc, sp)
    return Resolved(
        GatewayBackend(
            name=backend_name(namespace, name, sp.port),
            protocol="https" if protocol == "https" else "http",
            endpoints=endpoints,
        ),
        port_name=sp.name or "",
    )


def _service_port(svc: Service, port: int | str | None) -> ServicePort | None:
    ports = svc.spec.ports
    if port is None:
        return ports[0] if len(ports) == 1 else None
    for sp in ports:
        if (isinstance(port, int) and sp.port == port) or sp.name == port:
            return sp
    return None


class _SliceIndex:
    """EndpointSlices by (namespace, service), built once per snapshot: without it every
    backend would scan every slice of its namespace. Keyed by the identity of the snapshot's
    (immutable) EndpointSlice mapping, which it keeps alive, so the key cannot be reused."""

    def __init__(self) -> None:
        self._source: object = None
        self._by_service: dict[tuple[str, str], list[EndpointSlice]] = {}

    def slices(self, snapshot: Snapshot, namespace: str, service: str) -> list[EndpointSlice]:
        source = snapshot.by_kind.get(EndpointSlice.KIND)
        if source is not self._source:
            by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
            for sl in (source or {}).values():
                if isinstance(sl, EndpointSlice) and sl.service_name and sl.address_type != "FQDN":
                    by_service.setdefault((sl.namespace, sl.service_name), []).append(sl)
            for group in by_service.values():
                group.sort(key=lambda s: s.name)
            self._source, self._by_service = source, by_service
        return self._by_service.get((namespace, service), [])


_INDEX = _SliceIndex()


def resolve_endpoints(
    snapshot: Snapshot, svc: Service, sp: ServicePort
) -> tuple[GatewayEndpoint, ...]:
    """The endpoints of ``svc`` the gateway may send ``sp`` traffic to, by the shared endpoint
    policy (ready ones, else serving-and-terminating; the port by name per endpoint)."""
    slices = _INDEX.slices(snapshot, svc.namespace, svc.name)
    if not slices:
        return ()
    name = sp.name or ""
    found = endpoint_policy.from_slices(
        [(name, sp.protocol)], slices, publish_not_ready=svc.spec.publish_not_ready_addresses
    )
    return tuple(
        GatewayEndpoint(ip=ip, port=port) for ip, port in endpoint_policy.targets(found, name)
    )
