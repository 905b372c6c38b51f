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
they are stable as Pods come and go.

Work is proportional to the change, as in kube-controller-manager: :func:`affected` turns
store events into the Services to re-plan (for a Pod, the Services whose selectors match its
old or its new labels, found through the store's selector index; for a Service or its legacy
Endpoints, that Service), and :func:`plan_services` re-plans only those, reading the Pods a
selector matches through the label index. :func:`plan` (every Service) runs at start and on
the periodic resync. Mirroring legacy Endpoints into slices happens here and nowhere else:
the translators read EndpointSlices only. Everything here is a pure function of a Snapshot;
the loop that applies plans lives with the control plane.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mesh.control.store import Snapshot, WatchEvent
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
    ServicePort,
    built,
)

CONTROLLER_NAME = "mesh-controller"
HEADLESS_LABEL = "service.kubernetes.io/headless"
MAX_ENDPOINTS_PER_SLICE = 100  # the Kubernetes default (--max-endpoints-per-slice)
WATCHED_KINDS = frozenset({"Service", "Pod", "Endpoints", "EndpointSlice"})

SliceKey = tuple[str, str]  # (namespace, name)
ServiceKey = tuple[str, str]  # (namespace, name)
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
    """Diff the desired slices of every Service against the ones this controller owns."""
    keys = {(o.namespace, o.name) for o in snap.list("Service")}
    for obj in snap.list("EndpointSlice"):
        service = obj.metadata.labels.get(SERVICE_NAME_LABEL)
        if service and _owned(obj):
            keys.add((obj.namespace, service))  # a slice whose Service is gone
    return plan_services(snap, keys)


def plan_services(snap: Snapshot, keys: Iterable[ServiceKey]) -> Plan:
    """Diff the desired slices of the Services ``keys`` against the ones this controller
    owns for them; a key naming no Service deletes its slices."""
    out = Plan()
    for key in sorted(keys):
        want = {(es.namespace, es.name): es for es in desired_for(snap, key)}
        have = {(o.namespace, o.name): o for o in snap.by_index("service-slices", key) if _owned(o)}
        for skey, es in sorted(want.items()):
            prior = have.get(skey) or snap.get("EndpointSlice", *skey)
            if prior is None or prior.with_resource_version("", 0) != es:
                out.apply.append(es)
        out.delete.extend(sorted(skey for skey in have if skey not in want))
    return out


def desired_slices(snap: Snapshot) -> dict[SliceKey, EndpointSlice]:
    """Every slice the cluster should hold (the whole plan; tests and the resync)."""
    out: dict[SliceKey, EndpointSlice] = {}
    for obj in snap.list("Service"):
        for es in desired_for(snap, (obj.namespace, obj.name)):
            out[(es.namespace, es.name)] = es
    return out


def desired_for(snap: Snapshot, key: ServiceKey) -> list[EndpointSlice]:
    """The slices one Service should have (none when it does not exist)."""
    svc = snap.get("Service", *key)
    if not isinstance(svc, Service) or svc.spec.type == "ExternalName":
        return []
    if svc.spec.selector:
        return _slices_for_pods(svc, selected_pods(snap, svc), matched=True)
    legacy = snap.get("Endpoints", *key)
    if not isinstance(legacy, Endpoints):
        return []
    return slices_for_endpoints(svc, legacy)


def selected_pods(snap: Snapshot, svc: Service) -> list[Pod]:
    """The Pods of the Service's namespace its selector matches, through the label index:
    the candidates are the Pods under the rarest of the selector's label pairs."""
    selector = svc.spec.selector or {}
    best: list[KubeObject] | None = None
    for k, v in selector.items():
        found = snap.by_index("label", ("Pod", svc.namespace, k, v))
        if best is None or len(found) < len(best):
            best = found
        if not best:
            break
    if len(selector) == 1:
        # The index holds exactly the Pods with that one pair: each one matches.
        return [p for p in best or () if isinstance(p, Pod)]
    return [p for p in best or () if isinstance(p, Pod) and selects(svc, p)]


def affected(snap: Snapshot, events: Iterable[WatchEvent]) -> set[ServiceKey]:
    """The Services whose slices may change because of ``events``."""
    out: set[ServiceKey] = set()
    for ev in events:
        obj = ev.object
        kind = obj.KIND
        if kind == "Pod":
            for version in (obj, ev.old):
                if isinstance(version, Pod):
                    out.update(services_for_pod(snap, version))
        elif kind in ("Service", "Endpoints"):
            out.add((obj.namespace, obj.name))
        elif kind == "EndpointSlice":
            # One of ours changed by someone else (or deleted): re-plan its Service.
            for version in (obj, ev.old):
                if version is not None and _owned(version):
                    service = version.metadata.labels.get(SERVICE_NAME_LABEL)
                    if service:
                        out.add((version.namespace, service))
    return out


def services_for_pod(snap: Snapshot, pod: Pod) -> list[ServiceKey]:
    """The Services of the Pod's namespace whose selector matches its labels."""
    seen: set[ServiceKey] = set()
    out = []
    for k, v in pod.metadata.labels.items():
        for svc in snap.by_index("selector", (pod.namespace, k, v)):
            key = (svc.namespace, svc.name)
            if key not in seen and isinstance(svc, Service) and selects(svc, pod):
                seen.add(key)
                out.append(key)
    return out


def _owned(obj: KubeObject) -> bool:
    return obj.metadata.labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME


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


@functools.lru_cache(maxsize=8)
def _conditions(serving: bool, terminating: bool) -> EndpointConditions:
    """One shared (frozen) conditions model per combination: a start builds one Endpoint per
    Pod address, nearly all with the same three flags."""
    return EndpointConditions(
        ready=serving and not terminating, serving=serving, terminating=terminating
    )


def pod_endpoint(svc: Service, pod: Pod, ip: str) -> Endpoint:
    spec = pod.spec
    meta = pod.metadata
    hostname = spec.hostname if spec.hostname and spec.subdomain == svc.name else None
    # Made from values the Pod's own validation checked (see the note above _REF_FIELDS).
    ref = built(
        ObjectReference,
        {"kind": "Pod", "namespace": meta.namespace, "name": meta.name, "uid": meta.uid},
        _REF_FIELDS,
    )
    fields = {
        "addresses": (ip,),
        "conditions": _conditions(pod.ready, meta.deletion_timestamp is not None),
        "hostname": hostname,
        "node_name": spec.node_name,
        "zone": None,
        "target_ref": ref,
    }
    return built(Endpoint, fields, _ENDPOINT_FIELDS)


def slices_for_pods(svc: Service, pods: Iterable[Pod]) -> list[EndpointSlice]:
    return _slices_for_pods(svc, pods, matched=False)


@functools.lru_cache(maxsize=1024)
def _service_ports(service_ports: tuple[ServicePort, ...]) -> Ports | None:
    """The slice ports of a Service's ports when none names its target port: the same for
    every Pod, so made once per Service rather than once per Pod (None: some Pod must
    resolve a name). By the ports (frozen, hashable): Services with equal ports share one
    tuple of (frozen) slice ports."""
    if any(isinstance(sp.target_port, str) for sp in service_ports):
        return None
    out: list[EndpointPort] = []
    for sp in service_ports:
        number = sp.target_port
        if isinstance(number, int):
            out.append(
                EndpointPort(
                    name=sp.name or "",
                    protocol=sp.protocol,
                    port=number,
                    app_protocol=sp.app_protocol,
                )
            )
    return tuple(out)


def _slices_for_pods(svc: Service, pods: Iterable[Pod], *, matched: bool) -> list[EndpointSlice]:
    """``matched``: the Pods are known to match the selector (``selected_pods`` checked)."""
    families = set(svc.spec.ip_families)
    groups: dict[tuple[Family, Ports], list[Endpoint]] = defaultdict(list)
    shared_ports = _service_ports(svc.spec.ports)
    for pod in pods:
        ips = pod.ips
        if not ips or pod.status.phase in ("Succeeded", "Failed"):
            continue  # not eligible
        if not matched and not selects(svc, pod):
            continue
        ports = shared_ports if shared_ports is not None else pod_ports(svc, pod)
        for ip in ips:
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


@functools.lru_cache(maxsize=4096)
def _group_id(family: Family, ports: Ports) -> str:
    return json.dumps([family, [p.to_dict() for p in ports]], sort_keys=True)


@functools.lru_cache(maxsize=4096)
def _digest(group_id: str, index: int) -> str:
    return hashlib.sha256(f"{group_id}#{index}".encode()).hexdigest()[:10]


def _slice(
    svc: Service,
    family: Family,
    ports: Ports,
    endpoints: Sequence[Endpoint],
    index: int,
    labels: dict[str, str],
) -> EndpointSlice:
    digest = _digest(_group_id(family, ports), index)
    all_labels = {**labels, SERVICE_NAME_LABEL: svc.name, MANAGED_BY_LABEL: CONTROLLER_NAME}
    if svc.spec.headless:
        all_labels[HEADLESS_LABEL] = ""
    # Made from checked values (see the note above _REF_FIELDS): the Service's name is a
    # DNS label, so the slice's name is a valid subdomain and the service-name label a valid label value; the
    # addresses are Pod or Endpoints IPs (validated) grouped by their family.
    svc_meta = svc.metadata
    owner = built(
        OwnerReference,
        {"kind": "Service", "name": svc_meta.name, "api_version": "v1", "uid": svc_meta.uid},
        _OWNER_FIELDS,
    )
    meta = built(
        ObjectMeta,
        {
            "name": f"{svc_meta.name}-{digest}",
            "namespace": svc_meta.namespace,
            "labels": all_labels,
            "annotations": {},
            "resource_version": "",
            "uid": "",
            "generation": 0,
            "deletion_timestamp": None,
            "creation_timestamp": None,
            "owner_references": (owner,),
        },
        _META_FIELDS,
    )
    fields = {
        "api_version": EndpointSlice.API_VERSIONS[0],
        "kind": EndpointSlice.KIND,
        "metadata": meta,
        "address_type": family,
        "endpoints": tuple(endpoints),
        "ports": ports,
    }
    return built(EndpointSlice, fields, _SLICE_FIELDS)


# Endpoints and slices are made with mesh.objects.built, not validated: one Endpoint per Pod
# address and one slice per Service at start, and validating again what the Pods' and
# Services' own validation checked was a third of the plan (tests compare them with
# validated ones). The fields-set each model gets from its validation with the arguments
# the former constructor calls gave (every field named): one set per class, as the store
# shares them.
_REF_FIELDS = {"kind", "namespace", "name", "uid"}
_ENDPOINT_FIELDS = {"addresses", "conditions", "hostname", "node_name", "zone", "target_ref"}
_OWNER_FIELDS = {"api_version", "kind", "name", "uid"}
_META_FIELDS = {"name", "namespace", "labels", "owner_references"}
_SLICE_FIELDS = {"api_version", "kind", "metadata", "address_type", "endpoints", "ports"}


def is_relevant(obj: KubeObject) -> bool:
    """Whether a change to ``obj`` may change the desired slices."""
    return obj.KIND in WATCHED_KINDS
