"""What ``mesh get`` prints, in kubectl's words and columns (pure: objects and a clock in,
text out).

Columns per kind follow kubectl's built-in printers (k8s.io/kubernetes/pkg/printers/
internalversion); ``-o wide`` adds the wide columns; ``-A`` puts NAMESPACE first. A watch
prints rows under the first table's header with the same column widths.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

KIND_ALIASES: dict[str, str] = {}
for _kind, _aliases in {
    "Namespace": ("ns", "namespace", "namespaces"),
    "Service": ("svc", "service", "services"),
    "EndpointSlice": ("endpointslice", "endpointslices", "eps"),
    "Endpoints": ("ep", "endpoints"),
    "Pod": ("po", "pod", "pods"),
    "Ingress": ("ing", "ingress", "ingresses"),
    "IngressClass": ("ingressclass", "ingressclasses"),
    "HTTPRoute": ("httproute", "httproutes"),
    "Gateway": ("gtw", "gateway", "gateways"),
    "GatewayClass": ("gc", "gatewayclass", "gatewayclasses"),
    "ReferenceGrant": ("refgrant", "referencegrant", "referencegrants"),
    "BackendTLSPolicy": ("btlspolicy", "backendtlspolicy", "backendtlspolicies"),
    "ConfigMap": ("cm", "configmap", "configmaps"),
    "Secret": ("secret", "secrets"),
}.items():
    for _alias in (*_aliases, _kind.lower()):
        KIND_ALIASES[_alias] = _kind

# kubectl's resource names, for "-o name" (service/web) and messages (services "web").
RESOURCE = {
    "Namespace": "namespace",
    "Service": "service",
    "EndpointSlice": "endpointslice.discovery.k8s.io",
    "Endpoints": "endpoints",
    "Pod": "pod",
    "Ingress": "ingress.networking.k8s.io",
    "IngressClass": "ingressclass.networking.k8s.io",
    "HTTPRoute": "httproute.gateway.networking.k8s.io",
    "Gateway": "gateway.gateway.networking.k8s.io",
    "GatewayClass": "gatewayclass.gateway.networking.k8s.io",
    "ReferenceGrant": "referencegrant.gateway.networking.k8s.io",
    "BackendTLSPolicy": "backendtlspolicy.gateway.networking.k8s.io",
    "ConfigMap": "configmap",
    "Secret": "secret",
}
PLURAL = {
    "Namespace": "namespaces",
    "Service": "services",
    "EndpointSlice": "endpointslices.discovery.k8s.io",
    "Endpoints": "endpoints",
    "Pod": "pods",
    "Ingress": "ingresses.networking.k8s.io",
    "IngressClass": "ingressclasses.networking.k8s.io",
    "HTTPRoute": "httproutes.gateway.networking.k8s.io",
    "Gateway": "gateways.gateway.networking.k8s.io",
    "GatewayClass": "gatewayclasses.gateway.networking.k8s.io",
    "ReferenceGrant": "referencegrants.gateway.networking.k8s.io",
    "BackendTLSPolicy": "backendtlspolicies.gateway.networking.k8s.io",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
}
CLUSTER_SCOPED = {"Namespace", "IngressClass", "GatewayClass"}


def resolve_kind(word: str) -> str:
    """``svc`` -> ``Service``; raises ValueError naming the accepted words."""
    kind = KIND_ALIASES.get(word.lower())
    if kind is None:
        known = ", ".join(sorted(set(KIND_ALIASES.values())))
        raise ValueError(f"unknown kind {word!r}; known kinds: {known}")
    return kind


# --- AGE ---------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's AGE (apimachinery duration.HumanDuration)."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    y = h // (24 * 365)
    if y < 8:
        days = (h // 24) % 365
        return f"{y}y{days}d" if days else f"{y}y"
    return f"{y}y"


def age(obj: Obj, now: float) -> str:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    try:
        created = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration(now - created.timestamp())


# --- rows per kind -----------------------------------------------------------------------


def _join(values: Sequence[str], none: str = "<none>") -> str:
    return ",".join(values) or none


def _svc_external_ip(spec: Obj, status: Obj) -> str:
    kind = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs", []))
    if kind == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    if kind == "LoadBalancer":
        ingress = status.get("loadBalancer", {}).get("ingress", [])
        lb = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        return _join([*lb, *external], "<pending>")
    return _join(external)


def _svc_ports(spec: Obj) -> str:
    out = []
    for p in spec.get("ports", []):
        text = str(p.get("port"))
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return _join(out)


def _selector(selector: Obj | None) -> str:
    return _join([f"{k}={v}" for k, v in sorted((selector or {}).items())])


def _service(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    kind = spec.get("type", "ClusterIP")
    cluster_ip = spec.get("clusterIP") or "<none>"
    if kind == "ExternalName":
        cluster_ip = "<none>"
    row = [kind, cluster_ip, _svc_external_ip(spec, status), _svc_ports(spec)]
    return row, ([_selector(spec.get("selector"))] if wide else [])


def _more(items: Sequence[str], limit: int = 3) -> str:
    shown = ",".join(items[:limit])
    if len(items) > limit:
        shown += f" + {len(items) - limit} more..."
    return shown


def _endpoints(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    addrs = []
    for subset in obj.get("subsets", []):
        ports = [p.get("port") for p in subset.get("ports", [])] or [None]
        for a in subset.get("addresses", []):
            addrs += [f"{a.get('ip')}:{p}" if p else str(a.get("ip")) for p in ports]
    return [_more(addrs) or "<none>"], []


def _slice(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    addrs = [a for e in obj.get("endpoints", []) for a in e.get("addresses", [])]
    ports = ",".join(str(p.get("port")) for p in obj.get("ports", [])) or "<unset>"
    return [obj.get("addressType", ""), ports, _more(addrs) or "<unset>"], []


def _pod(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    total = max(1, len(spec.get("containers", [])))
    phase = status.get("phase", "Pending")
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions", [])}
    ready = phase == "Running" and conditions.get("Ready", "True") == "True"
    if obj.get("metadata", {}).get("deletionTimestamp"):
        phase = "Terminating"
    row = [f"{total if ready else 0}/{total}", phase, "0"]
    extra = [status.get("podIP") or "<none>", spec.get("nodeName") or "<none>", "<none>", "<none>"]
    return row, extra if wide else []


def _namespace(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    return [obj.get("status", {}).get("phase", "Active")], []


def _ingress(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    spec = obj.get("spec", {})
    hosts = [r["host"] for r in spec.get("rules", []) if r.get("host")]
    ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress", [])
    address = _join([i.get("ip") or i.get("hostname", "") for i in ingress], "")
    ports = "80, 443" if spec.get("tls") else "80"
    return [spec.get("ingressClassName") or "<none>", _more(hosts) or "*", address, ports], []


def _ingress_class(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    return [obj.get("spec", {}).get("controller", ""), "<none>"], []


def _httproute(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    return [_join(obj.get("spec", {}).get("hostnames", []))], []


def _condition(obj: Obj, kind: str) -> str:
    """A status condition's status ("True", "False", "Unknown"), "" before any is written."""
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return str(c.get("status", ""))
    return ""


def _gateway(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    """kubectl's columns for a Gateway (the CRD's printer columns): class, address, Programmed."""
    addresses = [a.get("value", "") for a in obj.get("status", {}).get("addresses", [])]
    klass = obj.get("spec", {}).get("gatewayClassName", "")
    return [klass, _join(addresses, ""), _condition(obj, "Programmed") or "Unknown"], []


def _gateway_class(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    controller = obj.get("spec", {}).get("controllerName", "")
    return [controller, _condition(obj, "Accepted") or "Unknown"], []


def _secret(obj: Obj, wide: bool) -> tuple[list[str], list[str]]:
    count = len(set(obj.get("data", {})) | set(obj.get("stringData", {})))
    return [obj.get("type", "Opaque"), str(count)], []


Row = Callable[[Obj, bool], tuple[list[str], list[str]]]

# kind -> (columns between NAME and AGE, wide columns after AGE, row function)
COLUMNS: dict[str, tuple[list[str], list[str], Row]] = {
    "Service": (["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"], ["SELECTOR"], _service),
    "Endpoints": (["ENDPOINTS"], [], _endpoints),
    "EndpointSlice": (["ADDRESSTYPE", "PORTS", "ENDPOINTS"], [], _slice),
    "Pod": (
        ["READY", "STATUS", "RESTARTS"],
        ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        _pod,
    ),
    "Namespace": (["STATUS"], [], _namespace),
    "Ingress": (["CLASS", "HOSTS", "ADDRESS", "PORTS"], [], _ingress),
    "IngressClass": (["CONTROLLER", "PARAMETERS"], [], _ingress_class),
    "HTTPRoute": (["HOSTNAMES"], [], _httproute),
    "Gateway": (["CLASS", "ADDRESS", "PROGRAMMED"], [], _gateway),
    "GatewayClass": (["CONTROLLER", "ACCEPTED"], [], _gateway_class),
    "Secret": (["TYPE", "DATA"], [], _secret),
    "ConfigMap": (
        ["DATA"],
        [],
        lambda obj, wide: ([str(len(obj.get("data", {})) + len(obj.get("binaryData", {})))], []),
    ),
}


@dataclass
class Table:
    """Rows of one kind; :meth:`render` lays them out in aligned columns (three spaces
    apart, as kubectl's tabwriter)."""

    kind: str
    all_namespaces: bool = False
    wide: bool = False
    now: float = 0.0
    widths: list[int] = field(default_factory=list)

    def header(self) -> list[str]:
        middle, extra, _ = COLUMNS.get(self.kind, ([], [], lambda o, w: ([], [])))
        lead = ["NAMESPACE"] if self.all_namespaces else []
        return [*lead, "NAME", *middle, "AGE", *(extra if self.wide else [])]

    def row(self, obj: Obj) -> list[str]:
        _, _, fn = COLUMNS.get(self.kind, ([], [], lambda o, w: ([], [])))
        meta = obj.get("metadata", {})
        lead = [meta.get("namespace", "")] if self.all_namespaces else []
        middle, extra = fn(obj, self.wide)
        return [*lead, meta.get("name", ""), *middle, age(obj, self.now), *extra]

    def render(self, items: Sequence[Obj]) -> str:
        """The header and a row per object; remembers the widths for :meth:`line`."""
        rows = [self.header(), *(self.row(o) for o in items)]
        self.widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(self._layout(r) for r in rows)

    def line(self, obj: Obj) -> str:
        """One more row (a watch event) in the columns of the last render."""
        row = self.row(obj)
        if not self.widths:
            self.widths = [max(len(h), len(c)) for h, c in zip(self.header(), row, strict=True)]
        return self._layout(row)

    def _layout(self, row: list[str]) -> str:
        cells = [c.ljust(w) for c, w in zip(row, self.widths, strict=True)]
        return "   ".join(cells).rstrip()


def table(kind: str, items: Sequence[Obj], all_namespaces: bool, *, now: float = 0.0) -> str:
    return Table(kind, all_namespaces, now=now).render(items)


def name_of(kind: str, obj: Obj) -> str:
    """``-o name``: ``service/web``."""
    return f"{RESOURCE.get(kind, kind.lower())}/{obj.get('metadata', {}).get('name', '')}"


def portless_services(services: Sequence[Obj]) -> frozenset[tuple[str, str]]:
    """The (namespace, name) of the Services that declare no port (headless ones may)."""
    return frozenset(
        (s.get("metadata", {}).get("namespace", ""), s.get("metadata", {}).get("name", ""))
        for s in services
        if not (s.get("spec") or {}).get("ports")
    )


def endpoints_from_slices(
    slices: Sequence[Obj], portless: Container[tuple[str, str]] = frozenset()
) -> list[Obj]:
    """The core/v1 Endpoints view of EndpointSlices (what the endpoints controller would
    keep for kubectl): one object per Service, ready addresses and not-ready ones apart.

    A slice with no ports holds the Pods that resolve none of their Service's named
    targetPorts: the endpoints controller lists such a Pod under no port, so it is left
    out, unless the Service has no port at all (``portless``: a headless Service without
    ports lists its addresses with none). Subsets with no address are left out, as there."""
    by_service: dict[tuple[str, str], Obj] = {}
    for es in slices:
        meta = es.get("metadata", {})
        service = meta.get("labels", {}).get("kubernetes.io/service-name")
        if not service:
            continue
        key = (meta.get("namespace", ""), service)
        ep = by_service.setdefault(
            key,
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {
                    "name": service,
                    "namespace": key[0],
                    "creationTimestamp": meta.get("creationTimestamp"),
                },
                "subsets": [],
            },
        )
        ready = [
            {"ip": a}
            for e in es.get("endpoints", [])
            if e.get("conditions", {}).get("ready", True) is not False
            for a in e.get("addresses", [])
        ]
        not_ready = [
            {"ip": a}
            for e in es.get("endpoints", [])
            if e.get("conditions", {}).get("ready", True) is False
            for a in e.get("addresses", [])
        ]
        ports = es.get("ports") or []
        if not ports and key not in portless:
            continue  # no port resolved: not an endpoint of this Service
        if not ready and not not_ready:
            continue
        subset: Obj = {"addresses": ready, "ports": ports}
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        ep["subsets"].append(subset)
    return [by_service[k] for k in sorted(by_service)]
