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

import functools
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from mesh import endpoint_policy
from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.control.translate.memo import Inputs, ServiceMemo, touched_services
from mesh.objects import (
    EndpointSlice,
    KubeObject,
    Namespace,
    ObjectReference,
    Pod,
    Service,
    ServicePort,
)

if TYPE_CHECKING:  # the store module runs on trio; the translator only reads a snapshot
    from mesh.control.store import Snapshot, WatchEvent

PodMode = Literal["disabled", "insecure", "verified"]


class DnsTranslator:
    """Snapshot -> DnsConfig, rebuilding only the Services whose inputs changed;
    :meth:`update` visits only the Services that store events name (and, for a changed Pod,
    the headless Services whose records read Pods)."""

    reads = frozenset({"Service", "EndpointSlice", "Pod", "Namespace"})

    def __init__(
        self, *, zone: str = "cluster.local", ttl: int = 5, pod_mode: PodMode = "insecure"
    ) -> None:
        self.zone = zone.strip(".").lower()
        self.ttl = ttl
        self.pod_mode = pod_mode
        DnsConfig(zone=self.zone, ttl=ttl, pod_mode=pod_mode)  # checked once: _config trusts them
        self._memo: ServiceMemo[DnsService] = ServiceMemo(self._inputs, _build)
        self._pod_readers: set[tuple[str, str]] = set()
        self._namespaces: tuple[str, ...] = ()
        self._pods: tuple[DnsPod, ...] = ()
        self._pod_namespaces: tuple[tuple[str, str], ...] = ()  # for autopath

    @property
    def built(self) -> int:
        """Services built (not taken from the memo): tests pin the work."""
        return self._memo.built

    def __call__(self, snapshot: Snapshot) -> DnsConfig:
        self._pod_readers = set()
        services = self._memo.full(snapshot)
        self._namespaces = _namespaces(snapshot)
        self._read_pods(snapshot)
        return self._config(snapshot, services)

    def _read_pods(self, snapshot: Snapshot) -> None:
        """The live pods' (address, namespace), and in verified mode the pods themselves
        (in (namespace, name) order: the store's sorted list)."""
        if self.pod_mode == "verified":
            live = _live(snapshot.list(Pod.KIND))
            self._pods = _pods(live)
            self._pod_namespaces = tuple(sorted((ip, p.namespace) for p, ips in live for ip in ips))
        else:  # any order: sorted by address below, no sorted list of 30,000 pods needed
            self._pods = ()
            self._pod_namespaces = _addresses(snapshot.by_kind.get(Pod.KIND, {}).values())

    def update(self, snapshot: Snapshot, events: Sequence[WatchEvent]) -> DnsConfig:
        if not self._memo.warm:
            return self(snapshot)
        touched = touched_services(events)
        kinds = {ev.object.KIND for ev in events}
        if "Pod" in kinds:
            touched.update(self._pod_readers)
        services = self._memo.update(snapshot, touched)
        if "Namespace" in kinds or any(
            ev.type == "DELETED" and ev.object.KIND in ("Pod", "Service") for ev in events
        ):
            self._namespaces = _namespaces(snapshot)
        else:  # an added Pod or Service can only add its namespace: no walk over all objects
            added = {
                ev.object.namespace
                for ev in events
                if ev.type == "ADDED" and ev.object.KIND in ("Pod", "Service")
            }
            if not added <= set(self._namespaces):
                self._namespaces = tuple(sorted(added.union(self._namespaces)))
        if "Pod" in kinds:  # O(pods), as verified mode's list already was
            self._read_pods(snapshot)
        return self._config(snapshot, services)

    def _config(self, snapshot: Snapshot, services: tuple[DnsService, ...]) -> DnsConfig:
        # Every field is already a validated model or a tuple built here from validated
        # objects (zone, ttl and pod_mode were checked when the translator was made):
        # validating 10,000 Services again would cost an edit tens of milliseconds.
        return DnsConfig.model_construct(
            version=snapshot.revision,
            zone=self.zone,
            ttl=self.ttl,
            pod_mode=self.pod_mode,
            services=services,
            pods=self._pods,
            namespaces=self._namespaces,
            pod_namespaces=self._pod_namespaces,
        )

    def _inputs(self, svc: Service, snapshot: Snapshot) -> Inputs:
        """What one Service's record is built from: the Service, its slices by name and,
        when headless, the Pods its endpoints reference (their hostname may come from the
        Pod)."""
        spec = svc.spec
        if not spec.headless or spec.type == "ExternalName":
            if self._pod_readers:
                self._pod_readers.discard((svc.namespace, svc.name))
            return (svc,)
        key = (svc.namespace, svc.name)
        slices = sorted(
            (s for s in snapshot.by_index("service-slices", key) if isinstance(s, EndpointSlice)),
            key=lambda s: s.name,
        )
        pods: list[KubeObject | None] = []
        for sl in slices:
            for ep in sl.endpoints:
                ref = ep.target_ref
                if ep.hostname is None and ref is not None and ref.kind == "Pod" and ref.name:
                    pods.append(snapshot.get(Pod.KIND, ref.namespace or svc.namespace, ref.name))
        if pods:
            self._pod_readers.add(key)
        else:
            self._pod_readers.discard(key)
        return (svc, *slices, *pods)


def translate_dns(
    snapshot: Snapshot,
    *,
    zone: str = "cluster.local",
    ttl: int = 5,
    pod_mode: PodMode = "insecure",
) -> DnsConfig:
    return DnsTranslator(zone=zone, ttl=ttl, pod_mode=pod_mode)(snapshot)


def _build(svc: Service, inputs: Inputs, snapshot: Snapshot) -> DnsService:
    if len(inputs) == 1:  # the Service alone (most of them)
        return _service(svc, [], snapshot)
    return _service(svc, [s for s in inputs[1:] if isinstance(s, EndpointSlice)], snapshot)


def _namespaces(snapshot: Snapshot) -> tuple[str, ...]:
    names = {o.name for o in snapshot.by_kind.get(Namespace.KIND, {}).values()}
    names.update(map(_namespace_of, snapshot.by_kind.get(Service.KIND, {})))  # the keys'
    names.update(map(_namespace_of, snapshot.by_kind.get(Pod.KIND, {})))
    return tuple(sorted(names))


_namespace_of = operator.itemgetter(0)  # of a (namespace, name) key


def _ports(
    ports: Iterable[tuple[str | None, Literal["TCP", "UDP", "SCTP"], int | None]],
) -> tuple[DnsPort, ...]:
    return tuple(_port(name, proto, port) for name, proto, port in ports if port is not None)


def _service_ports(ports: Sequence[ServicePort]) -> tuple[DnsPort, ...]:
    """``_ports`` of a Service's ports; a single port's tuple is shared (most Services have
    one, and most of those one of a handful)."""
    if len(ports) == 1:
        p = ports[0]
        return _one_port(p.name, p.protocol, p.port)
    return _ports((p.name, p.protocol, p.port) for p in ports)


@functools.lru_cache(maxsize=4096)
def _one_port(
    name: str | None, protocol: Literal["TCP", "UDP", "SCTP"], port: int
) -> tuple[DnsPort, ...]:
    return (_port(name, protocol, port),)


@functools.lru_cache(maxsize=4096)
def _port(name: str | None, protocol: Literal["TCP", "UDP", "SCTP"], port: int) -> DnsPort:
    """One shared (frozen) DnsPort per (name, protocol, port): 10,000 Services mostly repeat
    a handful, and validating each anew is a tenth of the translator's start."""
    return DnsPort(name=name, protocol=protocol, port=port)


def _service(svc: Service, slices: list[EndpointSlice], snapshot: Snapshot) -> DnsService:
    spec, meta = svc.spec, svc.metadata
    ports = _service_ports(spec.ports)
    ns, name = meta.namespace, meta.name
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
    ips = spec.cluster_ips
    if len(ips) != 1 or not ips[0] or ips[0] == "None":
        ips = tuple(ip for ip in ips if ip and ip != "None")
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


def _addresses(pods: Iterable[KubeObject]) -> tuple[tuple[str, str], ...]:
    """(pod IP, namespace) of the live pods (``_live``'s), sorted: autopath knows a pod by
    its address. One pass over 30,000 pods at start: the fields read inline."""
    out: list[tuple[str, str]] = []
    add = out.append
    for pod in pods:
        if not isinstance(pod, Pod):
            continue
        status = pod.status
        pod_ips = status.pod_ips  # what Pod.ips reads
        if not pod_ips or status.phase in _DONE:
            continue
        meta = pod.metadata
        if meta.deletion_timestamp is not None:  # Pod.terminating
            continue
        if len(pod_ips) == 1:
            add((pod_ips[0].ip, meta.namespace))
        else:
            namespace = meta.namespace
            out.extend([(p.ip, namespace) for p in pod_ips])
    out.sort()
    return tuple(out)


_DONE = ("Succeeded", "Failed")


def _live(pods: Iterable[KubeObject]) -> list[tuple[Pod, tuple[str, ...]]]:
    """The pods that have addresses and are not finished or going away, with those."""
    out = []
    for pod in pods:
        if not isinstance(pod, Pod):
            continue
        ips = pod.ips
        if pod.terminating or pod.status.phase in _DONE or not ips:
            continue
        out.append((pod, ips))
    return out


def _pods(live: list[tuple[Pod, tuple[str, ...]]]) -> tuple[DnsPod, ...]:
    """The verified mode's pods (records only that mode serves: the others skip them)."""
    return tuple(DnsPod(namespace=pod.namespace, name=pod.name, ips=ips) for pod, ips in live)
