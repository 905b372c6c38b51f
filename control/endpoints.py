"""The endpoints controller: which EndpointSlices the cluster should hold.

As kube-controller-manager's EndpointSlice controller (and its mirroring controller) do:

- A Service with a selector gets slices built from the ready-or-not Pods it selects in its
  namespace. Only Pods with an IP and not in a terminal phase count. Conditions: ``serving``
  is the Pod's readiness (kept while terminating), ``terminating`` is a set
  deletionTimestamp, ``ready`` is serving and not terminating. ``publishNotReadyAddresses``
  is left to the consumers (the DNS translator), so the conditions always tell the truth.
- Named targetPorts are resolved per Pod through its container ports; Pods that resolve
  the ports to different numbers land in different slices, and a Pod that cannot resolve a
  port is left out of that port (it stays in a slice carrying the ports it does resolve).
- A Service without a selector gets its hand-written core/v1 Endpoints mirrored into slices
  (``addresses`` ready, ``notReadyAddresses`` not ready); hand-written EndpointSlices are
  left alone and used as they are.
- ExternalName Services get none.

Slice names are ``<service>-<hash>`` with the hash over address type, ports and chunk, so
they are stable as Pods come and go. Everything here is a pure function of a Snapshot; the
loop that applies :func:`plan` lives with the control plane.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mesh.control.store import Snapshot
from mesh.objects import (
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    Endpoints,
    EndpointSlice,
    EndpointSubset,
    KubeObject,
    ObjectMeta,
    ObjectReference,
    OwnerReference,
    Pod,
    Service,
)

CONTROLLER_NAME = "mesh-controller"
HEADLESS_LABEL = "service.kubernetes.io/headless"
MAX_ENDPOINTS_PER_SLICE = 100  # the Kubernetes default (--max-endpoints-per-slice)
WATCHED_KINDS = frozenset({"Service", "Pod", "Endpoints", "EndpointSlice"})

SliceKey = tuple[str, str]  # (namespace, name)
Ports = tuple[EndpointPort, ...]
Family = Literal["IPv4", "IPv6"]


@dataclass(slots=True)
class Plan:
    """What to write to make the store hold the desired slices."""

    apply: list[EndpointSlice] = field(default_factory=list)
    delete: list[SliceKey] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def plan(snap: Snapshot) -> Plan:
    """Diff the desired slices against the ones this controller owns in ``snap``."""
    want = desired_slices(snap)
    out = Plan()
    for key, es in sorted(want.items()):
        have = snap.get("EndpointSlice", *key)
        if have is None or have.with_resource_version("") != es:
            out.apply.append(es)
    for obj in snap.list("EndpointSlice"):
        key = (obj.namespace, obj.name)
        if obj.metadata.labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME and key not in want:
            out.delete.append(key)
    return out


def desired_slices(snap: Snapshot) -> dict[SliceKey, EndpointSlice]:
    pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
    for obj in snap.list("Pod"):
        if isinstance(obj, Pod):
            pods_by_ns[obj.namespace].append(obj)
    out: dict[SliceKey, EndpointSlice] = {}
    for obj in snap.list("Service"):
        if not isinstance(obj, Service) or obj.spec.type == "ExternalName":
            continue
        if obj.spec.selector:
            slices = slices_for_pods(obj, pods_by_ns.get(obj.namespace, ()))
        else:
            legacy = snap.get("Endpoints", obj.namespace, obj.name)
            if not isinstance(legacy, Endpoints):
                continue
            slices = slices_for_endpoints(obj, legacy)
        out.update({(es.namespace, es.name): es for es in slices})
    return out


# --- from Pods -------------------------------------------------------------------------


def selects(svc: Service, pod: Pod) -> bool:
    selector = svc.spec.selector or {}
    labels = pod.metadata.labels
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def eligible(pod: Pod) -> bool:
    return bool(pod.ips) and pod.status.phase not in ("Succeeded", "Failed")


def pod_ports(svc: Service, pod: Pod) -> Ports:
    """The Service's ports as this Pod serves them; unresolvable named ports left out."""
    out: list[EndpointPort] = []
    for sp in svc.spec.ports:
        target = sp.target_port
        number = target if isinstance(target, int) else None
        if isinstance(target, str):
            number = pod.container_port(target, sp.protocol)
        if number is None:
            continue
        out.append(
            EndpointPort(
                name=sp.name or "", protocol=sp.protocol, port=number, app_protocol=sp.app_protocol
            )
        )
    return tuple(out)


def pod_endpoint(svc: Service, pod: Pod, ip: str) -> Endpoint:
    serving = pod.ready
    terminating = pod.terminating
    spec = pod.spec
    hostname = spec.hostname if spec.hostname and spec.subdomain == svc.name else None
    return Endpoint(
        addresses=(ip,),
        conditions=EndpointConditions(
            ready=serving and not terminating, serving=serving, terminating=terminating
        ),
        hostname=hostname,
        node_name=spec.node_name,
        target_ref=ObjectReference(
            kind="Pod", namespace=pod.namespace, name=pod.name, uid=pod.metadata.uid
        ),
    )


def slices_for_pods(svc: Service, pods: Iterable[Pod]) -> list[EndpointSlice]:
    families = set(svc.spec.ip_families)
    groups: dict[tuple[Family, Ports], list[Endpoint]] = defaultdict(list)
    for pod in pods:
        if not (eligible(pod) and selects(svc, pod)):
            continue
        ports = pod_ports(svc, pod)
        for ip in pod.ips:
            family = _family(ip)
            if families and family not in families:
                continue
            groups[(family, ports)].append(pod_endpoint(svc, pod, ip))
    return _build(svc, groups, svc.metadata.labels)


# --- from legacy Endpoints -------------------------------------------------------------


def slices_for_endpoints(svc: Service, legacy: Endpoints) -> list[EndpointSlice]:
    groups: dict[tuple[Family, Ports], list[Endpoint]] = defaultdict(list)
    for subset in legacy.subsets:
        ports = _subset_ports(subset)
        for ready, addresses in ((True, subset.addresses), (False, subset.not_ready_addresses)):
            for addr in addresses:
                groups[(_family(addr.ip), ports)].append(
                    Endpoint(
                        addresses=(addr.ip,),
                        conditions=EndpointConditions(ready=ready),
                        hostname=addr.hostname,
                        node_name=addr.node_name,
                        target_ref=addr.target_ref,
                    )
                )
    return _build(svc, groups, legacy.metadata.labels)


def _subset_ports(subset: EndpointSubset) -> Ports:
    return tuple(
        EndpointPort(
            name=p.name or "", protocol=p.protocol, port=p.port, app_protocol=p.app_protocol
        )
        for p in subset.ports
    )


# --- building slices -------------------------------------------------------------------


def _family(ip: str) -> Family:
    return "IPv6" if ":" in ip else "IPv4"


def _build(
    svc: Service, groups: dict[tuple[Family, Ports], list[Endpoint]], labels: dict[str, str]
) -> list[EndpointSlice]:
    out: list[EndpointSlice] = []
    for (family, ports), endpoints in sorted(groups.items(), key=lambda kv: _group_id(*kv[0])):
        endpoints.sort(key=lambda ep: ep.addresses)
        for chunk in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            part = endpoints[chunk : chunk + MAX_ENDPOINTS_PER_SLICE]
            index = chunk // MAX_ENDPOINTS_PER_SLICE
            out.append(_slice(svc, family, ports, part, index, labels))
    return out


def _group_id(family: Family, ports: Ports) -> str:
    return json.dumps([family, [p.to_dict() for p in ports]], sort_keys=True)


def _slice(
    svc: Service,
    family: Family,
    ports: Ports,
    endpoints: Sequence[Endpoint],
    index: int,
    labels: dict[str, str],
) -> EndpointSlice:
    digest = hashlib.sha256(f"{_group_id(family, ports)}#{index}".encode()).hexdigest()[:10]
    all_labels = {**labels, SERVICE_NAME_LABEL: svc.name, MANAGED_BY_LABEL: CONTROLLER_NAME}
    if svc.spec.headless:
        all_labels[HEADLESS_LABEL] = ""
    meta = ObjectMeta(
        name=f"{svc.name}-{digest}",
        namespace=svc.namespace,
        labels=all_labels,
        owner_references=(
            OwnerReference(api_version="v1", kind="Service", name=svc.name, uid=svc.metadata.uid),
        ),
    )
    return EndpointSlice(
        metadata=meta,
        address_type=family,
        endpoints=tuple(endpoints),
        ports=ports,
    )


def is_relevant(obj: KubeObject) -> bool:
    """Whether a change to ``obj`` may change the desired slices."""
    return obj.KIND in WATCHED_KINDS
