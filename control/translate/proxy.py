"""Store snapshot -> ProxyConfig: what the node proxy load-balances.

The rules (as kube-proxy reads the API):

- A Service is proxied when it has an allocated ClusterIP and is neither headless nor
  ExternalName. NodePorts count for types NodePort and LoadBalancer; load-balancer IPs come
  from ``status.loadBalancer.ingress[].ip`` of a LoadBalancer Service; externalIPs from spec.
- ``internalTrafficPolicy: Local`` restricts ClusterIP traffic, ``externalTrafficPolicy:
  Local`` restricts NodePort, external-IP and load-balancer traffic, to this node's endpoints.
  Which endpoints are eligible is the service table's decision (proxy/table.py); this layer
  passes every endpoint on with its conditions.
- Endpoints come from the EndpointSlices labelled ``kubernetes.io/service-name`` in the
  Service's namespace (the legacy Endpoints object when there are none). Each Service port is
  matched to a slice port by name and protocol, so a named targetPort resolves per endpoint.
  An address found in several slices (whose port lists may differ) becomes one endpoint with
  the union of their ports; its conditions are those of the first slice by name. Only the
  first address of an endpoint is used, as kube-proxy does. FQDN slices are ignored.
- With ``publishNotReadyAddresses`` every endpoint counts as ready.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.control.store import Snapshot
from mesh.objects import Endpoints, EndpointSlice, Service
from mesh.proxy.table import endpoint_order


def translate_proxy(snapshot: Snapshot, *, node_name: str = "") -> ProxyConfig:
    slices: dict[tuple[str, str], list[EndpointSlice]] = {}
    for obj in snapshot.list(EndpointSlice.KIND):
        if isinstance(obj, EndpointSlice) and obj.service_name and obj.address_type != "FQDN":
            slices.setdefault((obj.namespace, obj.service_name), []).append(obj)
    services = []
    for obj in snapshot.list(Service.KIND):
        if not isinstance(obj, Service) or not _proxied(obj):
            continue
        found = slices.get((obj.namespace, obj.name))
        if found:
            endpoints = _from_slices(obj, found)
        else:
            legacy = snapshot.get(Endpoints.KIND, obj.namespace, obj.name)
            endpoints = _from_endpoints(obj, legacy) if isinstance(legacy, Endpoints) else ()
        services.append(_service(obj, endpoints))
    return ProxyConfig(version=snapshot.revision, node_name=node_name, services=tuple(services))


def _proxied(svc: Service) -> bool:
    spec = svc.spec
    return spec.type != "ExternalName" and bool(spec.cluster_ip) and not spec.headless


def _service(svc: Service, endpoints: tuple[ProxyEndpoint, ...]) -> ProxyService:
    spec = svc.spec
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    lb_ips: tuple[str, ...] = ()
    if spec.type == "LoadBalancer":
        lb_ips = tuple(dict.fromkeys(i.ip for i in svc.status.load_balancer.ingress if i.ip))
    affinity = spec.session_affinity == "ClientIP"
    timeout = 10800
    if affinity and spec.session_affinity_config is not None:
        timeout = spec.session_affinity_config.client_ip.timeout_seconds
    kind: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    if spec.type in ("NodePort", "LoadBalancer"):
        kind = "NodePort" if spec.type == "NodePort" else "LoadBalancer"
    return ProxyService(
        namespace=svc.namespace,
        name=svc.name,
        type=kind,
        cluster_ips=spec.cluster_ips,
        external_ips=tuple(dict.fromkeys(spec.external_ips)),
        load_balancer_ips=lb_ips,
        ports=tuple(
            ProxyPort(
                name=p.name or "",
                protocol=p.protocol,
                port=p.port,
                node_port=p.node_port if node_ports else None,
            )
            for p in spec.ports
        ),
        session_affinity=affinity,
        affinity_timeout=timeout,
        internal_traffic_local=spec.internal_traffic_policy == "Local",
        external_traffic_local=spec.external_traffic_policy == "Local",
        endpoints=endpoints,
    )


@dataclass
class _Merged:
    first: ProxyEndpoint
    ports: dict[str, int] = field(default_factory=dict)


def _from_slices(svc: Service, slices: list[EndpointSlice]) -> tuple[ProxyEndpoint, ...]:
    merged: dict[str, _Merged] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        ports: dict[str, int] = {}
        for sp in svc.spec.ports:
            name = sp.name or ""
            for ep_port in sl.ports:
                if (
                    (ep_port.name or "") == name
                    and ep_port.protocol == sp.protocol
                    and ep_port.port
                ):
                    ports[name] = ep_port.port
                    break
        for ep in sl.endpoints:
            ready = ep.ready or svc.spec.publish_not_ready_addresses
            entry = ProxyEndpoint(
                address=ep.addresses[0],
                node_name=ep.node_name,
                ready=ready,
                serving=ep.serving or ready,
                terminating=ep.terminating,
            )
            m = merged.setdefault(entry.address, _Merged(entry))
            for name, port in ports.items():
                m.ports.setdefault(name, port)
    return _sorted(m.first.model_copy(update={"ports": m.ports}) for m in merged.values())


def _from_endpoints(svc: Service, legacy: Endpoints) -> tuple[ProxyEndpoint, ...]:
    merged: dict[str, _Merged] = {}
    for subset in legacy.subsets:
        ports: dict[str, int] = {}
        for sp in svc.spec.ports:
            for ep_port in subset.ports:
                if (ep_port.name or "") == (sp.name or "") and ep_port.protocol == sp.protocol:
                    ports[sp.name or ""] = ep_port.port
                    break
        for addrs, ready in ((subset.addresses, True), (subset.not_ready_addresses, False)):
            for a in addrs:
                ready = ready or svc.spec.publish_not_ready_addresses
                entry = ProxyEndpoint(
                    address=a.ip, node_name=a.node_name, ready=ready, serving=ready
                )
                m = merged.setdefault(entry.address, _Merged(entry))
                for name, port in ports.items():
                    m.ports.setdefault(name, port)
    return _sorted(m.first.model_copy(update={"ports": m.ports}) for m in merged.values())


def _sorted(endpoints: Iterable[ProxyEndpoint]) -> tuple[ProxyEndpoint, ...]:
    return tuple(sorted(endpoints, key=lambda e: endpoint_order((e.address, 0))))
