"""Cluster objects for translator tables: a snapshot from a few dicts."""

from __future__ import annotations

import base64
from typing import Any

from mesh.control.store import Snapshot, Store
from mesh.control.translate.gateway import translate_gateway
from mesh.http.plan import Forward, Head, Respond, plan
from mesh.http.routes import compile_routes
from mesh.objects import KINDS, KubeObject
from tests.tls.pki import CA

NGINX = "nginx.ingress.kubernetes.io/"


_ISSUED = CA().issue("example.com", ["example.com", "*.example.com"])
# A kubernetes.io/tls Secret's data that the control plane accepts (a real certificate and
# its key: a Gateway listener's ResolvedRefs checks that they parse and belong together).
TLS_DATA = {
    "tls.crt": base64.b64encode(_ISSUED.cert_pem).decode(),
    "tls.key": base64.b64encode(_ISSUED.key_pem).decode(),
}


def obj(kind: str, name: str, namespace: str = "default", **body: Any) -> KubeObject:
    meta = {"name": name, "namespace": namespace, **body.pop("meta", {})}
    return KINDS[kind].model_validate({"metadata": meta, **body})


def snapshot(*objects: KubeObject) -> Snapshot:
    store = Store()
    for o in objects:
        store.apply(o)
    return store.snapshot()


def ingress_class(
    name: str = "mesh", controller: str = "mesh.dev/ingress", default: bool = False
) -> KubeObject:
    meta = (
        {"annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}} if default else {}
    )
    return obj("IngressClass", name, "", meta=meta, spec={"controller": controller})


def service(
    name: str, ip: str = "127.0.1.1", namespace: str = "default", port: int = 80
) -> list[KubeObject]:
    """A Service with one named port (http: port -> 8080) and one ready endpoint."""
    svc = obj(
        "Service",
        name,
        namespace,
        spec={"ports": [{"name": "http", "port": port, "targetPort": 8080}]},
    )
    eps = obj(
        "EndpointSlice",
        f"{name}-1",
        namespace,
        meta={"labels": {"kubernetes.io/service-name": name}},
        addressType="IPv4",
        endpoints=[{"addresses": [ip]}],
        ports=[{"name": "http", "port": 8080}],
    )
    return [svc, eps]


def path(p: str, svc: str, path_type: str = "Prefix", port: int | str = 80) -> dict[str, Any]:
    port_ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {
        "path": p,
        "pathType": path_type,
        "backend": {"service": {"name": svc, "port": port_ref}},
    }


def ingress(
    name: str,
    host: str | None,
    *paths: dict[str, Any],
    annotations: dict[str, str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    namespace: str = "default",
    class_name: str | None = "mesh",
    **spec: Any,
) -> KubeObject:
    ann = {k if "/" in k else NGINX + k: v for k, v in (annotations or {}).items()}
    if paths:
        rule: dict[str, Any] = {"http": {"paths": list(paths)}}
        if host:
            rule["host"] = host
        spec.setdefault("rules", [rule])
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return obj(
        "Ingress",
        name,
        namespace,
        meta={"annotations": ann, "creationTimestamp": created},
        spec=spec,
    )


def request(
    snap: Snapshot, target: str = "/", host: str = "foo.com", **kw: Any
) -> Forward | Respond:
    routes = compile_routes(translate_gateway(snap))
    rand = kw.pop("rand", 0.5)
    h = Head(
        listener=kw.pop("listener", "ingress-http"),
        method=kw.pop("method", "GET"),
        target=target,
        host=host,
        **kw,
    )
    return plan(routes, h, 0.0, lambda: rand)


def served_by(decision: Forward | Respond) -> str:
    """``svc`` (the Service) for a Forward, ``status reason`` for a Respond."""
    if isinstance(decision, Forward):
        return decision.backend.split("/", 1)[1].split(":", 1)[0]
    return f"{decision.status} {decision.reason}"
