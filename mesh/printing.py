"""Tables for ``mesh get``, in the columns kubectl prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    "Secret": ("secret", "secrets"),
}.items():
    for _alias in (*_aliases, _kind.lower()):
        KIND_ALIASES[_alias] = _kind


def resolve_kind(word: str) -> str:
    """``svc`` -> ``Service``; raises ValueError naming the accepted words."""
    kind = KIND_ALIASES.get(word.lower())
    if kind is None:
        known = ", ".join(sorted({k for k in KIND_ALIASES.values()}))
        raise ValueError(f"unknown kind {word!r}; known kinds: {known}")
    return kind


def _ports(obj: dict[str, Any]) -> str:
    out = []
    for p in obj.get("spec", {}).get("ports", []):
        text = str(p["port"])
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _service_row(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec", {})
    external = spec.get("externalName") or ",".join(spec.get("externalIPs", [])) or "<none>"
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", external, _ports(obj)]


def _pod_row(obj: dict[str, Any]) -> list[str]:
    status = obj.get("status", {})
    ready = status.get("phase") == "Running" and all(
        c.get("status") == "True" for c in status.get("conditions", []) if c.get("type") == "Ready"
    )
    return [
        status.get("phase", "Pending"),
        "true" if ready else "false",
        status.get("podIP") or "<none>",
    ]


def _slice_row(obj: dict[str, Any]) -> list[str]:
    eps = obj.get("endpoints", [])
    addrs = [a for e in eps for a in e.get("addresses", [])]
    shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    ports = ",".join(str(p.get("port")) for p in obj.get("ports", [])) or "<unset>"
    return [obj.get("addressType", ""), ports, shown or "<unset>"]


COLUMNS: dict[str, tuple[list[str], Callable[[dict[str, Any]], list[str]]]] = {
    "Service": (["TYPE", "CLUSTER-IP", "EXTERNAL", "PORT(S)"], _service_row),
    "Pod": (["STATUS", "READY", "IP"], _pod_row),
    "EndpointSlice": (["ADDRESSTYPE", "PORTS", "ENDPOINTS"], _slice_row),
}


def table(kind: str, items: Sequence[dict[str, Any]], all_namespaces: bool) -> str:
    headers, row = COLUMNS.get(kind, ([], lambda _obj: []))
    head = (["NAMESPACE"] if all_namespaces else []) + ["NAME", *headers]
    rows = [head]
    for obj in items:
        meta = obj.get("metadata", {})
        lead = [meta.get("namespace", "")] if all_namespaces else []
        rows.append([*lead, meta.get("name", ""), *row(obj)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
