"""Store snapshot -> DnsConfig: which Services, endpoints and Pods the cluster DNS publishes.

The rules (Kubernetes DNS specification, schema 1.1.0):

- A Service with ClusterIPs publishes them (NodePort and LoadBalancer Services have
  ClusterIPs too); one whose ClusterIP is not allocated yet publishes a name with no address.
- A headless Service publishes its ready endpoints, or all of them when the Service sets
  ``publishNotReadyAddresses``. Endpoints come from the EndpointSlices labelled
  ``kubernetes.io/service-name`` (legacy Endpoints are mirrored into slices by the endpoints
  controller, and not read here). An
  endpoint without a hostname takes the one of the Pod it references when that Pod's
  ``spec.subdomain`` names the Service (StatefulSet pods), as the EndpointSlice controller does.
- An ExternalName Service publishes a CNAME.
- Pods are listed only in ``verified`` pod mode, where ``a-b-c-d.<ns>.pod.<zone>`` must
  match a running Pod.

Incremental: a :class:`DnsTranslator` keeps each Service's record with the objects it was
built from (the Service, its slices, and for a headless Service the Pods its endpoints
reference) and rebuilds a Service only when one of them is not the very object it saw last
time; stored objects are immutable, so identity is change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from mesh import endpoint_policy
from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.objects import (
    EndpointSlice,
    KubeObject,
    Namespace,
    ObjectReference,
    Pod,
    Service,
)

if TYPE_CHECKING:  # the store module runs on trio; the translator only reads a snapshot
    from mesh.control.store import Snapshot

PodMode = Literal["disabled", "insecure", "verified"]
_Inputs = tuple[KubeObject | None, ...]


class DnsTranslator:
    """Snapshot -> DnsConfig, rebuilding only the Services whose inputs changed."""

    reads = frozenset({"Service", "EndpointSlice", "Pod", "Namespace"})

    def __init__(
        self, *, zone: str = "cluster.local", ttl: int = 5, pod_mode: PodMode = "insecure"
    ) -> None:
        self.zone = zone.strip(".").lower()
        self.ttl = ttl
        self.pod_mode = pod_mode
        self._memo: dict[tuple[str, str], tuple[_Inputs, DnsService]] = {}
        self.built = 0  # Services built (not taken from the memo): tests pin the work

    def __call__(self, snapshot: Snapshot) -> DnsConfig:
        services = [s for s in snapshot.list(Service.KIND) if isinstance(s, Service)]
        memo: dict[tuple[str, str], tuple[_Inputs, DnsService]] = {}
        out = []
        for svc in services:
            key = (svc.namespace, svc.name)
            inputs, slices = _inputs(svc, snapshot)
            prior = self._memo.get(key)
            if prior is not None and _same_objects(prior[0], inputs):
                record = prior[1]
            else:
                record = _service(svc, slices, snapshot)
                self.built += 1
            memo[key] = (inputs, record)
            out.append(record)
        self._memo = memo
        namespaces = {o.name for o in snapshot.list(Namespace.KIND)}
        namespaces.update(s.namespace for s in services)
        namespaces.update(ns for ns, _ in snapshot.by_kind.get(Pod.KIND, {}))
        pods = [p for p in snapshot.list(Pod.KIND) if isinstance(p, Pod)]
        dns_pods = tuple(_pods(pods)) if self.pod_mode == "verified" else ()
        return DnsConfig(
            version=snapshot.revision,
            zone=self.zone,
            ttl=self.ttl,
            pod_mode=self.pod_mode,
            services=tuple(out),
            pods=dns_pods,
            namespaces=tuple(sorted(namespaces)),
        )


def translate_dns(
    snapshot: Snapshot,
    *,
    zone: str = "cluster.local",
    ttl: int = 5,
    pod_mode: PodMode = "insecure",
) -> DnsConfig:
    return DnsTranslator(zone=zone, ttl=ttl, pod_mode=pod_mode)(snapshot)


def _inputs(svc: Service, snapshot: Snapshot) -> tuple[_Inputs, list[EndpointSlice]]:
    """What one Service's record is built from: the Service, its slices by name and, when
    headless, the Pods its endpoints reference (their hostname may come from the Pod)."""
    if not svc.spec.headless or svc.spec.type == "ExternalName":
        return (svc,), []
    slices = sorted(
        (
            s
            for s in snapshot.by_index("service-slices", (svc.namespace, svc.name))
            if isinstance(s, EndpointSlice)
        ),
        key=lambda s: s.name,
    )
    pods: list[KubeObject | None] = []
    for sl in slices:
        for ep in sl.endpoints:
            ref = ep.target_ref
            if ep.hostname is None and ref is not None and ref.kind == "Pod" and ref.name:
                pods.append(snapshot.get(Pod.KIND, ref.namespace or svc.namespace, ref.name))
    return (svc, *slices, *pods), slices


def _same_objects(a: _Inputs, b: _Inputs) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _ports(
    ports: Iterable[tuple[str | None, Literal["TCP", "UDP", "SCTP"], int | None]],
) -> tuple[DnsPort, ...]:
    return tuple(
        DnsPort(name=name, protocol=proto, port=port)
        for name, proto, port in ports
        if port is not None
    )


def _service(svc: Service, slices: list[EndpointSlice], snapshot: Snapshot) -> DnsService:
    spec = svc.spec
    ports = _ports((p.name, p.protocol, p.port) for p in spec.ports)
    ns, name = svc.namespace, svc.name
    if spec.type == "ExternalName":
        target = (spec.external_name or "").rstrip(".").lower()
        return DnsService(
            namespace=ns, name=name, kind="ExternalName", external_name=target, ports=ports
        )
    if spec.headless:
        endpoints = _endpoints(svc, slices, snapshot)
        return DnsService(
            namespace=ns, name=name, kind="Headless", endpoints=endpoints, ports=ports
        )
    ips = tuple(ip for ip in spec.cluster_ips if ip and ip != "None")
    return DnsService(namespace=ns, name=name, kind="ClusterIP", cluster_ips=ips, ports=ports)


def _endpoints(
    svc: Service, slices: list[EndpointSlice], snapshot: Snapshot
) -> tuple[DnsEndpoint, ...]:
    everyone = svc.spec.publish_not_ready_addresses
    out: list[DnsEndpoint] = []
    seen: set[tuple[tuple[str, ...], str | None]] = set()
    for sl in slices:
        if sl.address_type == "FQDN":
            continue
        ports = _ports((p.name, p.protocol, p.port) for p in sl.ports)
        for ep in sl.endpoints:
            if not endpoint_policy.published(ep.ready, everyone):
                continue
            hostname = ep.hostname or _pod_hostname(ep.target_ref, svc, snapshot)
            key = (ep.addresses, hostname)
            if key in seen:
                continue
            seen.add(key)
            out.append(DnsEndpoint(addresses=ep.addresses, hostname=hostname, ports=ports))
    return tuple(out)


def _pod_hostname(ref: ObjectReference | None, svc: Service, snapshot: Snapshot) -> str | None:
    if ref is None or ref.kind != "Pod" or not ref.name:
        return None
    pod = snapshot.get(Pod.KIND, ref.namespace or svc.namespace, ref.name)
    if not isinstance(pod, Pod) or pod.spec.subdomain != svc.name:
        return None
    return pod.spec.hostname


def _pods(pods: Iterable[Pod]) -> Iterable[DnsPod]:
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.terminating or pod.status.phase in ("Succeeded", "Failed") or not pod.ips:
            continue
        yield DnsPod(namespace=pod.namespace, name=pod.name, ips=pod.ips)
