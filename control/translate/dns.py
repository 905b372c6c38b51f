"""Store snapshot -> DnsConfig: which Services, endpoints and Pods the cluster DNS publishes.

The rules (Kubernetes DNS specification, schema 1.1.0):

- A Service with ClusterIPs publishes them (NodePort and LoadBalancer Services have
  ClusterIPs too); one whose ClusterIP is not allocated yet publishes a name with no address.
- A headless Service publishes its ready endpoints, or all of them when the Service sets
  ``publishNotReadyAddresses``. Endpoints come from the EndpointSlices labelled
  ``kubernetes.io/service-name`` (the legacy Endpoints object when there are none). An
  endpoint without a hostname takes the one of the Pod it references when that Pod's
  ``spec.subdomain`` names the Service (StatefulSet pods), as the EndpointSlice controller does.
- An ExternalName Service publishes a CNAME.
- Pods are listed only in ``verified`` pod mode, where ``a-b-c-d.<ns>.pod.<zone>`` must
  match a running Pod.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.objects import (
    Endpoints,
    EndpointSlice,
    Namespace,
    ObjectReference,
    Pod,
    Service,
)

if TYPE_CHECKING:  # the store module runs on trio; the translator only reads a snapshot
    from mesh.control.store import Snapshot

PodMode = Literal["disabled", "insecure", "verified"]


def translate_dns(
    snapshot: Snapshot,
    *,
    zone: str = "cluster.local",
    ttl: int = 5,
    pod_mode: PodMode = "insecure",
) -> DnsConfig:
    services = [s for s in snapshot.list(Service.KIND) if isinstance(s, Service)]
    slices = _slices_by_service(snapshot)
    pods = {(p.namespace, p.name): p for p in snapshot.list(Pod.KIND) if isinstance(p, Pod)}
    out = tuple(_service(svc, slices, snapshot, pods) for svc in services)
    namespaces = {o.name for o in snapshot.list(Namespace.KIND)}
    namespaces.update(s.namespace for s in services)
    namespaces.update(ns for ns, _ in pods)
    dns_pods = tuple(_pods(pods.values())) if pod_mode == "verified" else ()
    return DnsConfig(
        version=snapshot.revision,
        zone=zone.strip(".").lower(),
        ttl=ttl,
        pod_mode=pod_mode,
        services=out,
        pods=dns_pods,
        namespaces=tuple(sorted(namespaces)),
    )


def _slices_by_service(snapshot: Snapshot) -> dict[tuple[str, str], list[EndpointSlice]]:
    out: dict[tuple[str, str], list[EndpointSlice]] = {}
    for obj in snapshot.list(EndpointSlice.KIND):
        if isinstance(obj, EndpointSlice) and obj.service_name:
            out.setdefault((obj.namespace, obj.service_name), []).append(obj)
    return out


def _ports(
    ports: Iterable[tuple[str | None, Literal["TCP", "UDP", "SCTP"], int | None]],
) -> tuple[DnsPort, ...]:
    return tuple(
        DnsPort(name=name, protocol=proto, port=port)
        for name, proto, port in ports
        if port is not None
    )


def _service(
    svc: Service,
    slices: dict[tuple[str, str], list[EndpointSlice]],
    snapshot: Snapshot,
    pods: dict[tuple[str, str], Pod],
) -> DnsService:
    spec = svc.spec
    ports = _ports((p.name, p.protocol, p.port) for p in spec.ports)
    ns, name = svc.namespace, svc.name
    if spec.type == "ExternalName":
        target = (spec.external_name or "").rstrip(".").lower()
        return DnsService(
            namespace=ns, name=name, kind="ExternalName", external_name=target, ports=ports
        )
    if spec.headless:
        endpoints = _endpoints(svc, slices.get((ns, name)), snapshot, pods)
        return DnsService(
            namespace=ns, name=name, kind="Headless", endpoints=endpoints, ports=ports
        )
    ips = tuple(ip for ip in spec.cluster_ips if ip and ip != "None")
    return DnsService(namespace=ns, name=name, kind="ClusterIP", cluster_ips=ips, ports=ports)


def _endpoints(
    svc: Service,
    slices: list[EndpointSlice] | None,
    snapshot: Snapshot,
    pods: dict[tuple[str, str], Pod],
) -> tuple[DnsEndpoint, ...]:
    everyone = svc.spec.publish_not_ready_addresses
    out: list[DnsEndpoint] = []
    seen: set[tuple[tuple[str, ...], str | None]] = set()
    if slices is None:
        legacy = snapshot.get(Endpoints.KIND, svc.namespace, svc.name)
        if isinstance(legacy, Endpoints):
            out.extend(_legacy_endpoints(legacy, everyone))
        return tuple(out)
    for sl in sorted(slices, key=lambda s: s.name):
        if sl.address_type == "FQDN":
            continue
        ports = _ports((p.name, p.protocol, p.port) for p in sl.ports)
        for ep in sl.endpoints:
            if not (ep.ready or everyone):
                continue
            hostname = ep.hostname or _pod_hostname(ep.target_ref, svc, pods)
            key = (ep.addresses, hostname)
            if key in seen:
                continue
            seen.add(key)
            out.append(DnsEndpoint(addresses=ep.addresses, hostname=hostname, ports=ports))
    return tuple(out)


def _pod_hostname(
    ref: ObjectReference | None, svc: Service, pods: dict[tuple[str, str], Pod]
) -> str | None:
    if ref is None or ref.kind != "Pod" or not ref.name:
        return None
    pod = pods.get((ref.namespace or svc.namespace, ref.name))
    if pod is None or pod.spec.subdomain != svc.name:
        return None
    return pod.spec.hostname


def _legacy_endpoints(eps: Endpoints, everyone: bool) -> Iterable[DnsEndpoint]:
    for subset in eps.subsets:
        ports = _ports((p.name, p.protocol, p.port) for p in subset.ports)
        addrs = subset.addresses + (subset.not_ready_addresses if everyone else ())
        for a in addrs:
            yield DnsEndpoint(addresses=(a.ip,), hostname=a.hostname, ports=ports)


def _pods(pods: Iterable[Pod]) -> Iterable[DnsPod]:
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.terminating or pod.status.phase in ("Succeeded", "Failed") or not pod.ips:
            continue
        yield DnsPod(namespace=pod.namespace, name=pod.name, ips=pod.ips)
