"""The endpoints controller: desired EndpointSlices from Services, Pods and Endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.control.endpoints import CONTROLLER_NAME, desired_slices, plan
from mesh.control.store import Snapshot, Store
from mesh.objects import (
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    Endpoints,
    EndpointSlice,
    KubeObject,
    Pod,
    Service,
)

READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
NOT_READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}


def service(name: str = "web", ns: str = "default", **spec: Any) -> Service:
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return Service.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": spec})


def pod(
    name: str,
    ip: str | list[str] | None,
    *,
    app: str = "web",
    ns: str = "default",
    status: dict[str, Any] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> Pod:
    st = dict(status if status is not None else READY)
    if isinstance(ip, str):
        st["podIP"] = ip
    elif ip:
        st["podIPs"] = [{"ip": i} for i in ip]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "labels": {"app": app},
        "uid": f"uid-{name}",
    }
    if spec.pop("terminating", False):
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    spec["containers"] = [{"name": "c", "ports": ports or []}]
    return Pod.model_validate({"metadata": meta, "spec": spec, "status": st})


def snapshot(*objs: KubeObject) -> Snapshot:
    store = Store()
    for obj in objs:
        store.apply(obj)
    return store.snapshot()


def slices(*objs: KubeObject) -> list[EndpointSlice]:
    return sorted(desired_slices(snapshot(*objs)).values(), key=lambda s: s.name)


def conditions(es: EndpointSlice) -> dict[str, tuple[bool | None, bool | None, bool | None]]:
    return {
        ep.addresses[0]: (ep.conditions.ready, ep.conditions.serving, ep.conditions.terminating)
        for ep in es.endpoints
    }


def test_slice_shape() -> None:
    [es] = slices(service(), pod("a", "10.0.0.1", nodeName="node-1"))
    assert es.api_version == "discovery.k8s.io/v1" and es.kind == "EndpointSlice"
    assert es.name.startswith("web-") and len(es.name) == len("web-") + 10
    assert es.namespace == "default"
    assert es.metadata.labels[SERVICE_NAME_LABEL] == "web"
    assert es.metadata.labels[MANAGED_BY_LABEL] == CONTROLLER_NAME
    assert es.address_type == "IPv4"
    assert [(p.name, p.protocol, p.port) for p in es.ports] == [("http", "TCP", 8080)]
    [ep] = es.endpoints
    assert ep.node_name == "node-1"
    assert ep.target_ref is not None
    assert (ep.target_ref.kind, ep.target_ref.name, ep.target_ref.uid) == ("Pod", "a", "uid-a")
    assert es.metadata.owner_references[0].name == "web"


@pytest.mark.parametrize(
    ("status", "terminating", "expected"),
    [
        (READY, False, (True, True, False)),
        (NOT_READY, False, (False, False, False)),
        (READY, True, (False, True, True)),
        (NOT_READY, True, (False, False, True)),
        ({"phase": "Pending"}, False, (False, False, False)),
        ({"phase": "Running"}, False, (True, True, False)),  # no conditions reported
    ],
)
def test_readiness_table(
    status: dict[str, Any], terminating: bool, expected: tuple[bool, bool, bool]
) -> None:
    [es] = slices(service(), pod("a", "10.0.0.1", status=status, terminating=terminating))
    assert conditions(es) == {"10.0.0.1": expected}


@pytest.mark.parametrize(
    "p",
    [
        pod("no-ip", None),
        pod("done", "10.0.0.2", status={"phase": "Succeeded", "podIP": "10.0.0.2"}),
        pod("failed", "10.0.0.3", status={"phase": "Failed"}),
        pod("other-app", "10.0.0.4", app="db"),
        pod("other-ns", "10.0.0.5", ns="elsewhere"),
    ],
)
def test_pods_left_out(p: Pod) -> None:
    assert slices(service(), p) == []


def test_publish_not_ready_does_not_change_conditions() -> None:
    [es] = slices(service(publishNotReadyAddresses=True), pod("a", "10.0.0.1", status=NOT_READY))
    assert conditions(es) == {"10.0.0.1": (False, False, False)}


@pytest.mark.parametrize(
    ("spec", "hostname"),
    [
        ({"hostname": "db-0", "subdomain": "web"}, "db-0"),
        ({"hostname": "db-0", "subdomain": "other"}, None),
        ({"hostname": "db-0"}, None),
        ({"subdomain": "web"}, None),
    ],
)
def test_hostname_only_with_matching_subdomain(spec: dict[str, Any], hostname: str | None) -> None:
    [es] = slices(service(), pod("a", "10.0.0.1", **spec))
    assert es.endpoints[0].hostname == hostname


def test_named_target_ports_resolve_per_pod_into_separate_slices() -> None:
    svc = service(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9090, "targetPort": 9090},
        ]
    )
    a = pod("a", "10.0.0.1", ports=[{"name": "web", "containerPort": 8080}])
    b = pod("b", "10.0.0.2", ports=[{"name": "web", "containerPort": 8080}])
    c = pod("c", "10.0.0.3", ports=[{"name": "web", "containerPort": 9000}])
    d = pod("d", "10.0.0.4", ports=[{"name": "other", "containerPort": 1}])
    got = {
        tuple((p.name, p.port) for p in es.ports): sorted(ep.addresses[0] for ep in es.endpoints)
        for es in slices(svc, a, b, c, d)
    }
    assert got == {
        (("http", 8080), ("metrics", 9090)): ["10.0.0.1", "10.0.0.2"],
        (("http", 9000), ("metrics", 9090)): ["10.0.0.3"],
        (("metrics", 9090),): ["10.0.0.4"],  # cannot resolve "web": left out of that port
    }


def test_named_port_protocol_must_match() -> None:
    svc = service(ports=[{"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}])
    tcp_only = pod("a", "10.0.0.1", ports=[{"name": "dns", "containerPort": 53}])
    [es] = slices(svc, tcp_only)
    assert es.ports == ()


def test_unnamed_port_has_empty_name() -> None:
    [es] = slices(service(ports=[{"port": 80}]), pod("a", "10.0.0.1"))
    assert es.ports[0].name == ""
    assert es.ports[0].port == 80


def test_address_type_per_family() -> None:
    dual = pod("a", ["10.0.0.1", "fd00::1"])
    got = {es.address_type: [ep.addresses for ep in es.endpoints] for es in slices(service(), dual)}
    assert got == {"IPv4": [("10.0.0.1",)], "IPv6": [("fd00::1",)]}
    only4 = slices(service(clusterIP="10.1.0.1"), dual)
    assert [es.address_type for es in only4] == ["IPv4"]


def test_headless_label() -> None:
    [es] = slices(service(clusterIP="None"), pod("a", "10.0.0.1"))
    assert es.metadata.labels["service.kubernetes.io/headless"] == ""


def test_large_services_are_chunked_with_stable_names() -> None:
    pods = [pod(f"p{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    got = slices(service(), *pods)
    assert sorted(len(es.endpoints) for es in got) == [50, 100, 100]
    assert len({es.name for es in got}) == 3
    [few] = slices(service(), *pods[:10])
    assert few.name in {es.name for es in got}


def test_no_selector_and_external_name_get_nothing() -> None:
    assert slices(service(selector={}), pod("a", "10.0.0.1")) == []
    ext = service(type="ExternalName", externalName="example.org", ports=[])
    assert slices(ext, pod("a", "10.0.0.1")) == []


def test_legacy_endpoints_are_mirrored() -> None:
    svc = service("ext", selector=None, ports=[{"name": "pg", "port": 5432}])
    eps = Endpoints.model_validate(
        {
            "metadata": {"name": "ext"},
            "subsets": [
                {
                    "addresses": [{"ip": "127.0.0.5", "hostname": "db-0"}],
                    "notReadyAddresses": [{"ip": "127.0.0.6"}],
                    "ports": [{"name": "pg", "port": 5432}],
                }
            ],
        }
    )
    [es] = slices(svc, eps)
    assert es.metadata.labels[SERVICE_NAME_LABEL] == "ext"
    assert {ep.addresses[0]: ep.ready for ep in es.endpoints} == {
        "127.0.0.5": True,
        "127.0.0.6": False,
    }
    assert es.endpoints[0].hostname == "db-0"
    assert [(p.name, p.port) for p in es.ports] == [("pg", 5432)]
    # Endpoints for a Service with a selector are the controller's business, not mirrored.
    assert slices(service("ext", selector={"app": "x"}), eps) == []


def user_slice(name: str, managed_by: str | None = None) -> EndpointSlice:
    labels = {SERVICE_NAME_LABEL: "ext"}
    if managed_by:
        labels[MANAGED_BY_LABEL] = managed_by
    return EndpointSlice.model_validate(
        {
            "metadata": {"name": name, "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.9"]}],
        }
    )


def test_plan_applies_new_deletes_stale_and_leaves_user_slices() -> None:
    store = Store()
    store.apply(service())
    store.apply(pod("a", "10.0.0.1"))
    store.apply(user_slice("ext-manual"))
    store.apply(user_slice("web-stale", managed_by=CONTROLLER_NAME))
    p = plan(store.snapshot())
    assert [es.name for es in p.apply] == [
        next(iter(desired_slices(store.snapshot()).values())).name
    ]
    assert p.delete == [("default", "web-stale")]
    for es in p.apply:
        store.apply(es)
    for ns, name in p.delete:
        store.delete("EndpointSlice", ns, name)
    assert not plan(store.snapshot())
    assert store.get("EndpointSlice", "default", "ext-manual") is not None
    # A pod change updates the same slice in place.
    store.apply(pod("a", "10.0.0.1", status=NOT_READY))
    again = plan(store.snapshot())
    assert len(again.apply) == 1 and again.delete == []


@pytest.mark.parametrize("module", ["endpoints.py", "ipam.py"])
def test_cores_do_not_import_trio(module: str) -> None:
    import ast
    from pathlib import Path

    import mesh.control

    tree = ast.parse((Path(mesh.control.__file__).parent / module).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "trio" not in imported
