"""Store snapshot -> ProxyConfig."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.control.store import Store
from mesh.control.translate.proxy import translate_proxy
from mesh.objects import KINDS, KubeObject
from tests.control.plane_fixtures import mirror_legacy_endpoints


def obj(kind: str, name: str, namespace: str = "default", **body: Any) -> KubeObject:
    return KINDS[kind].model_validate(
        {"metadata": {"name": name, "namespace": namespace, **body.pop("meta", {})}, **body}
    )


def service(name: str = "web", **spec: Any) -> KubeObject:
    spec.setdefault("clusterIP", "127.10.0.1")
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    status = spec.pop("status", {})
    return obj("Service", name, spec=spec, status=status)


def slice_(
    name: str, service: str = "web", ports: Any = None, namespace: str = "default", **kw: Any
) -> KubeObject:
    endpoints = kw.pop("endpoints", [{"addresses": ["127.0.1.1"]}])
    return obj(
        "EndpointSlice",
        name,
        namespace,
        meta={"labels": {"kubernetes.io/service-name": service}},
        addressType=kw.pop("addressType", "IPv4"),
        endpoints=endpoints,
        ports=ports if ports is not None else [{"port": 8080}],
    )


def translate(*objects: KubeObject, node_name: str = "") -> ProxyConfig:
    store = Store()
    for o in objects:
        store.apply(o)
    mirror_legacy_endpoints(store)
    return translate_proxy(store.snapshot(), node_name=node_name)


def only(cfg: ProxyConfig) -> ProxyService:
    assert len(cfg.services) == 1
    return cfg.services[0]


def test_cluster_ip_service_with_endpoints() -> None:
    cfg = translate(service(), slice_("web-1"), node_name="n1")
    assert cfg.node_name == "n1" and cfg.version > 0
    assert only(cfg) == ProxyService(
        namespace="default",
        name="web",
        cluster_ips=("127.10.0.1",),
        ports=(ProxyPort(port=80),),
        endpoints=(ProxyEndpoint(address="127.0.1.1", ports={"": 8080}),),
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"clusterIP": "None"},
        {"type": "ExternalName", "externalName": "example.org", "clusterIP": None, "ports": []},
        {"clusterIP": None},
    ],
    ids=["headless", "external-name", "no-cluster-ip"],
)
def test_services_without_a_virtual_ip_are_skipped(spec: dict[str, Any]) -> None:
    assert translate(service(**spec), slice_("web-1")).services == ()


def test_node_ports_external_and_load_balancer_ips() -> None:
    s = service(
        type="LoadBalancer",
        ports=[{"port": 80, "nodePort": 30080}],
        externalIPs=["127.20.0.1"],
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Local",
        status={"loadBalancer": {"ingress": [{"ip": "127.30.0.1"}, {"hostname": "lb.example"}]}},
    )
    svc = only(translate(s))
    assert svc.type == "LoadBalancer"
    assert svc.ports == (ProxyPort(port=80, node_port=30080),)
    assert svc.external_ips == ("127.20.0.1",)
    assert svc.load_balancer_ips == ("127.30.0.1",)
    assert svc.external_traffic_local and svc.internal_traffic_local


def test_session_affinity_and_timeout() -> None:
    s = service(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}
    )
    svc = only(translate(s))
    assert svc.session_affinity and svc.affinity_timeout == 30
    assert not only(translate(service())).session_affinity


def test_named_target_ports_resolve_per_endpoint_across_slices() -> None:
    s = service(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]
    )
    a = slice_(
        "web-a",
        ports=[{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        endpoints=[{"addresses": ["127.0.1.1"], "nodeName": "n1"}],
    )
    b = slice_(
        "web-b",
        ports=[{"name": "http", "port": 9090}, {"name": "dns", "port": 5353, "protocol": "TCP"}],
        endpoints=[{"addresses": ["127.0.1.2"], "conditions": {"ready": False}}],
    )
    svc = only(translate(s, a, b))
    assert svc.endpoints == (
        ProxyEndpoint(address="127.0.1.1", node_name="n1", ports={"http": 8080, "dns": 5353}),
        ProxyEndpoint(address="127.0.1.2", ready=False, serving=False, ports={"http": 9090}),
    )


def test_one_address_in_slices_with_different_ports_is_merged() -> None:
    s = service(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81}])
    one = slice_("web-1", ports=[{"name": "a", "port": 8080}])
    two = slice_("web-2", ports=[{"name": "b", "port": 8081}])
    assert only(translate(s, one, two)).endpoints == (
        ProxyEndpoint(address="127.0.1.1", ports={"a": 8080, "b": 8081}),
    )


def test_conditions_and_order() -> None:
    sl = slice_(
        "web-1",
        endpoints=[
            {"addresses": ["127.0.1.10"]},
            {
                "addresses": ["127.0.1.9"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
            },
        ],
    )
    eps = only(translate(service(), sl)).endpoints
    assert [(e.address, e.ready, e.serving, e.terminating) for e in eps] == [
        ("127.0.1.9", False, True, True),
        ("127.0.1.10", True, True, False),
    ]


def test_publish_not_ready_addresses_counts_every_endpoint_ready() -> None:
    sl = slice_("web-1", endpoints=[{"addresses": ["127.0.1.1"], "conditions": {"ready": False}}])
    eps = only(translate(service(publishNotReadyAddresses=True), sl)).endpoints
    assert eps[0].ready


def test_slices_of_other_services_and_namespaces_are_ignored() -> None:
    others = (
        slice_("x-1", service="other"),
        slice_("web-1", namespace="prod"),
        obj("Namespace", "prod"),
    )
    assert only(translate(service(), *others)).endpoints == ()


def test_legacy_endpoints_when_there_are_no_slices() -> None:
    legacy = obj(
        "Endpoints",
        "web",
        subsets=[
            {
                "addresses": [{"ip": "127.0.1.1", "nodeName": "n1"}],
                "notReadyAddresses": [{"ip": "127.0.1.2"}],
                "ports": [{"port": 8080}],
            }
        ],
    )
    assert only(translate(service(), legacy)).endpoints == (
        ProxyEndpoint(address="127.0.1.1", node_name="n1", ports={"": 8080}),
        ProxyEndpoint(address="127.0.1.2", ready=False, serving=False, ports={"": 8080}),
    )
