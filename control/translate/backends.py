"""Service references -> gateway backends (name, protocol, endpoints).

``resolve_endpoints`` is the one place that decides which endpoints of a Service the gateway
may use. It applies the rule kube-proxy's topology.go applies (ready endpoints; when none is
ready, the serving-and-terminating ones) and resolves the Service port per endpoint by name.
It is kept to this one function so that it can defer to the shared endpoint policy once that
exists, without touching the translators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.config.gateway import GatewayBackend, GatewayEndpoint
from mesh.objects import Endpoints, EndpointSlice, Service, ServicePort

if TYPE_CHECKING:
    from mesh.control.store import Snapshot


@dataclass(frozen=True)
class Resolved:
    backend: GatewayBackend | None
    error: str | None = None  # why the reference did not resolve (Service or port missing)


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
        )
    )


def _service_port(svc: Service, port: int | str | None) -> ServicePort | None:
    ports = svc.spec.ports
    if port is None:
        return ports[0] if len(ports) == 1 else None
    for sp in ports:
        if (isinstance(port, int) and sp.port == port) or sp.name == port:
            return sp
    return None


@dataclass
class _Candidates:
    ready: list[GatewayEndpoint] = field(default_factory=list)
    fallback: list[GatewayEndpoint] = field(default_factory=list)


def resolve_endpoints(
    snapshot: Snapshot, svc: Service, sp: ServicePort
) -> tuple[GatewayEndpoint, ...]:
    """The endpoints of ``svc`` the gateway may send ``sp`` traffic to, in a stable order."""
    found = _Candidates()
    slices = [
        s
        for s in snapshot.list(EndpointSlice.KIND, svc.namespace)
        if isinstance(s, EndpointSlice) and s.service_name == svc.name and s.address_type != "FQDN"
    ]
    if slices:
        for sl in sorted(slices, key=lambda s: s.name):
            number = next(
                (
                    p.port
                    for p in sl.ports
                    if (p.name or "") == (sp.name or "") and p.protocol == sp.protocol
                ),
                None,
            )
            if number is None:
                continue
            for ep in sl.endpoints:
                gep = GatewayEndpoint(ip=ep.addresses[0], port=number)
                if ep.ready or svc.spec.publish_not_ready_addresses:
                    found.ready.append(gep)
                elif ep.serving and ep.terminating:
                    found.fallback.append(gep)
    else:
        legacy = snapshot.get(Endpoints.KIND, svc.namespace, svc.name)
        if isinstance(legacy, Endpoints):
            for subset in legacy.subsets:
                number = next(
                    (p.port for p in subset.ports if (p.name or "") == (sp.name or "")), None
                )
                if number is None:
                    continue
                found.ready.extend(GatewayEndpoint(ip=a.ip, port=number) for a in subset.addresses)
    chosen = found.ready or found.fallback
    return tuple(sorted(set(chosen), key=lambda e: (e.ip, e.port)))
