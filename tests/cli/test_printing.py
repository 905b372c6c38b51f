"""``mesh get``'s printing as kubectl prints: tables over the pure printers and parsers."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.getcmd import parse_targets, select
from mesh.printing import (
    Table,
    endpoints_from_slices,
    human_duration,
    name_of,
    portless_services,
)
from mesh.selectors import parse_selector

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CREATED = "2027-01-15T07:00:00Z"  # an hour before NOW


def meta(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": CREATED}


def svc(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Service", "metadata": meta(name), "spec": spec, "status": status or {}}


SERVICES = [
    svc("web", {"type": "ClusterIP", "clusterIP": "10.0.0.1", "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP"}]}),
    svc("db", {"type": "ClusterIP", "clusterIP": "None",
               "ports": [{"port": 5432, "protocol": "TCP"}]}),
    svc("ext", {"type": "ExternalName", "externalName": "example.com"}),
    svc("np", {"type": "NodePort", "clusterIP": "10.0.0.2", "externalIPs": ["192.0.2.1"],
               "ports": [{"port": 53, "nodePort": 30053, "protocol": "UDP"},
                         {"port": 53, "nodePort": 30053, "protocol": "TCP"}]}),
    svc("lb", {"type": "LoadBalancer", "clusterIP": "10.0.0.3",
               "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}),
    svc("lb2", {"type": "LoadBalancer", "clusterIP": "10.0.0.4", "ports": [{"port": 80}]},
        {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
]  # fmt: skip


def test_services_as_kubectl_prints_them() -> None:
    assert Table("Service", now=NOW).render(SERVICES).splitlines() == [
        "NAME   TYPE           CLUSTER-IP   EXTERNAL-IP   PORT(S)                     AGE",
        "web    ClusterIP      10.0.0.1     <none>        80/TCP                      60m",
        "db     ClusterIP      None         <none>        5432/TCP                    60m",
        "ext    ExternalName   <none>       example.com   <none>                      60m",
        "np     NodePort       10.0.0.2     192.0.2.1     53:30053/UDP,53:30053/TCP   60m",
        "lb     LoadBalancer   10.0.0.3     <pending>     443:31443/TCP               60m",
        "lb2    LoadBalancer   10.0.0.4     203.0.113.7   80/TCP                      60m",
    ]


def test_wide_and_all_namespaces_add_columns() -> None:
    lines = Table("Service", all_namespaces=True, wide=True, now=NOW).render(SERVICES[:2])
    assert lines.splitlines() == [
        "NAMESPACE   NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)    AGE   SELECTOR",
        "default     web    ClusterIP   10.0.0.1     <none>        80/TCP     60m   app=web",
        "default     db     ClusterIP   None         <none>        5432/TCP   60m   <none>",
    ]


def pod(name: str, phase: str, ready: str | None, ip: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    if ip:
        status["podIP"] = ip
    spec = {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node-1"}
    return {"kind": "Pod", "metadata": meta(name), "spec": spec, "status": status}


def test_pods_ready_column_and_wide() -> None:
    pods = [
        pod("a", "Running", None, "10.1.0.2"),
        pod("b", "Running", "False"),
        pod("c", "Pending", None),
    ]
    assert Table("Pod", wide=True, now=NOW).render(pods).splitlines() == [
        "NAME   READY   STATUS    RESTARTS   AGE   IP         NODE     NOMINATED NODE   READINESS GATES",
        "a      2/2     Running   0          60m   10.1.0.2   node-1   <none>           <none>",
        "b      0/2     Running   0          60m   <none>     node-1   <none>           <none>",
        "c      0/2     Pending   0          60m   <none>     node-1   <none>           <none>",
    ]


def slice_(name: str, service: str, addrs: list[tuple[str, bool]], port: int) -> dict[str, Any]:
    m = meta(name)
    m["labels"] = {"kubernetes.io/service-name": service}
    return {
        "kind": "EndpointSlice",
        "metadata": m,
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in addrs],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


SLICES = [
    slice_("web-1", "web", [("10.1.0.1", True), ("10.1.0.2", True), ("10.1.0.3", False)], 8080),
    slice_("web-2", "web", [("10.1.0.4", True), ("10.1.0.5", True)], 8080),
    slice_("db-1", "db", [], 5432),
]


def test_endpoint_slices_and_endpoints() -> None:
    assert Table("EndpointSlice", now=NOW).render(SLICES).splitlines() == [
        "NAME    ADDRESSTYPE   PORTS   ENDPOINTS                    AGE",
        "web-1   IPv4          8080    10.1.0.1,10.1.0.2,10.1.0.3   60m",
        "web-2   IPv4          8080    10.1.0.4,10.1.0.5            60m",
        "db-1    IPv4          5432    <unset>                      60m",
    ]
    endpoints = endpoints_from_slices(SLICES)
    assert [e["metadata"]["name"] for e in endpoints] == ["db", "web"]
    assert Table("Endpoints", now=NOW).render(endpoints).splitlines() == [
        "NAME   ENDPOINTS                                               AGE",
        "db     <none>                                                  60m",
        "web    10.1.0.1:8080,10.1.0.2:8080,10.1.0.4:8080 + 1 more...   60m",
    ]


def no_port(s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "ports": []}


@pytest.mark.parametrize(
    ("slices", "portless", "shown"),
    [
        # A Pod that resolves none of its Service's named targetPorts: in a slice of no
        # port, and in no Endpoints subset (the endpoints controller lists it under no port).
        ([slice_("web-1", "web", [("10.1.0.1", True)], 8080),
          no_port(slice_("web-2", "web", [("10.1.0.9", True)], 0))], (),
         {"web": "10.1.0.1:8080"}),
        ([no_port(slice_("web-2", "web", [("10.1.0.9", True)], 0))], (), {"web": "<none>"}),
        # A headless Service without ports lists its addresses with none.
        ([no_port(slice_("db-1", "db", [("10.1.0.7", True)], 0))], {("default", "db")},
         {"db": "10.1.0.7"}),
    ],
)  # fmt: skip
def test_endpoints_leave_out_pods_that_resolve_no_port(
    slices: list[dict[str, Any]], portless: set[tuple[str, str]], shown: dict[str, str]
) -> None:
    rows = Table("Endpoints", now=NOW).render(endpoints_from_slices(slices, portless))
    assert {r.split()[0]: r.split()[1] for r in rows.splitlines()[1:]} == shown


def test_portless_services() -> None:
    services: list[dict[str, Any]] = [
        {"metadata": {"name": "a", "namespace": "x"}, "spec": {"ports": [{"port": 80}]}},
        {"metadata": {"name": "b", "namespace": "x"}, "spec": {"clusterIP": "None"}},
    ]
    assert portless_services(services) == {("x", "b")}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"), (0, "0s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
        (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (3 * 3600 + 300, "3h5m"), (8 * 3600, "8h"),
        (47 * 3600, "47h"), (49 * 3600, "2d1h"), (8 * 86400, "8d"), (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)  # fmt: skip
def test_age_as_kubectl_rounds_it(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_unknown_age_and_name_output() -> None:
    obj = {"metadata": {"name": "web", "namespace": "shop"}}
    assert Table("Service", now=NOW).row(obj)[-1] == "<unknown>"
    assert name_of("Service", obj) == "service/web"
    assert name_of("EndpointSlice", obj) == "endpointslice.discovery.k8s.io/web"


def test_watch_rows_keep_the_first_tables_columns() -> None:
    table = Table("Service", now=NOW)
    first = table.render(SERVICES[:1]).splitlines()
    later = table.line(SERVICES[0])
    assert later == first[1]


LABELS = {
    "a": {"app": "web", "tier": "front"},
    "b": {"app": "db"},
    "c": {"app": "web", "tier": "back", "canary": "true"},
    "d": {},
}


@pytest.mark.parametrize(
    ("selector", "matching"),
    [
        ("", "abcd"),
        ("app=web", "ac"),
        ("app==web", "ac"),
        ("app!=web", "bd"),  # also objects without the key, as Kubernetes
        ("app in (web, db)", "abc"),
        ("app notin (web)", "bd"),
        ("tier", "ac"),
        ("!tier", "bd"),
        ("app=web,tier in (back),canary", "c"),
        ("app=web,!canary", "a"),
        ("example.com/team=x", ""),
    ],
)
def test_label_selectors(selector: str, matching: str) -> None:
    sel = parse_selector(selector)
    assert "".join(k for k, labels in LABELS.items() if sel.matches(labels)) == matching


@pytest.mark.parametrize(
    ("selector", "error"),
    [
        ("app in (a", "unbalanced '('"),
        ("app in a)", "unbalanced ')'"),
        ("app in ()", "'app in ()': invalid value list"),
        ("=x", "'=x' is not a label requirement"),
        ("a b", "'a b' is not a label requirement"),
        ("app=web,", "'' is not a label requirement"),
    ],
)
def test_bad_selectors(selector: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_selector(selector)
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("svc",), ("Service", [])),
        (("po", "a", "b"), ("Pod", ["a", "b"])),
        (("svc/web",), ("Service", ["web"])),
        (("services/web", "svc/db"), ("Service", ["web", "db"])),
        (("endpointslices",), ("EndpointSlice", [])),
    ],
)
def test_targets(args: tuple[str, ...], expected: tuple[str, list[str]]) -> None:
    assert parse_targets(args) == expected


def test_select_by_name_and_labels() -> None:
    objs = [{"metadata": {"name": k, "labels": v}} for k, v in LABELS.items()]
    got = select(objs, ["a", "b", "c"], parse_selector("app=web"))
    assert [o["metadata"]["name"] for o in got] == ["a", "c"]


def test_gateways_and_classes_with_kubectls_columns() -> None:
    """The Gateway API CRDs' printer columns: a Gateway's class, address and Programmed
    condition; a GatewayClass's controller and Accepted condition (Unknown before status)."""
    served = {
        "kind": "Gateway",
        "metadata": meta("demo"),
        "spec": {"gatewayClassName": "mesh"},
        "status": {
            "addresses": [{"type": "IPAddress", "value": "127.11.0.10"}],
            "conditions": [
                {"type": "Accepted", "status": "True"},
                {"type": "Programmed", "status": "False"},
            ],
        },
    }
    fresh = {"kind": "Gateway", "metadata": meta("new"), "spec": {"gatewayClassName": "other"}}
    assert Table("Gateway", now=NOW).render([served, fresh]).splitlines() == [
        "NAME   CLASS   ADDRESS       PROGRAMMED   AGE",
        "demo   mesh    127.11.0.10   False        60m",
        "new    other                 Unknown      60m",
    ]
    klass = {
        "kind": "GatewayClass",
        "metadata": {"name": "mesh", "creationTimestamp": CREATED},
        "spec": {"controllerName": "mesh.dev/gateway"},
        "status": {"conditions": [{"type": "Accepted", "status": "True"}]},
    }
    assert Table("GatewayClass", now=NOW).render([klass]).splitlines() == [
        "NAME   CONTROLLER         ACCEPTED   AGE",
        "mesh   mesh.dev/gateway   True       60m",
    ]
