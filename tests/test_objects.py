"""Cluster objects: the defaults the API server applies, and validation."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pydantic import ValidationError

from mesh.objects import (
    KINDS,
    EndpointSlice,
    Namespace,
    Pod,
    Secret,
    Service,
    share_fields_sets,
)


def svc(spec: dict[str, Any], name: str = "web", **meta: Any) -> Service:
    return Service.model_validate({"metadata": {"name": name, **meta}, "spec": spec})


def test_service_defaults() -> None:
    s = svc({"ports": [{"port": 80}]})
    assert s.api_version == "v1"
    assert s.kind == "Service"
    assert s.namespace == "default"
    assert s.spec.type == "ClusterIP"
    port = s.spec.ports[0]
    assert (port.protocol, port.target_port) == ("TCP", 80)
    assert s.spec.session_affinity == "None"
    assert s.spec.internal_traffic_policy == "Cluster"
    assert s.spec.external_traffic_policy is None
    assert s.key == ("Service", "default", "web")


def test_nodeport_defaults_external_traffic_policy() -> None:
    s = svc({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})
    assert s.spec.external_traffic_policy == "Cluster"


def test_client_ip_affinity_gets_default_timeout() -> None:
    s = svc({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]})
    assert s.spec.session_affinity_config is not None
    assert s.spec.session_affinity_config.client_ip.timeout_seconds == 10800


def test_cluster_ip_fills_cluster_ips_and_families() -> None:
    s = svc({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]})
    assert s.spec.cluster_ips == ("10.0.0.1",)
    assert s.spec.ip_families == ("IPv4",)
    dual = svc({"clusterIPs": ["10.0.0.1", "fd00::1"], "ports": [{"port": 80}]})
    assert dual.spec.cluster_ip == "10.0.0.1"
    assert dual.spec.ip_families == ("IPv4", "IPv6")


def test_headless_needs_no_ports() -> None:
    s = svc({"clusterIP": "None"})
    assert s.spec.headless


def test_named_target_port_kept() -> None:
    s = svc({"ports": [{"port": 80, "targetPort": "http"}]})
    assert s.spec.ports[0].target_port == "http"


def test_numeric_string_target_port_is_a_number() -> None:
    s = svc({"ports": [{"port": 80, "targetPort": "8080"}]})
    assert s.spec.ports[0].target_port == 8080


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({}, "at least one port"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "every port must have a name"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "duplicate port name"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "duplicate port 80"),
        ({"ports": [{"port": 80, "nodePort": 30000}]}, "nodePort"),
        ({"clusterIP": "None", "type": "NodePort", "ports": [{"port": 80}]}, "headless"),
        ({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]}, "not an IP"),
        ({"clusterIPs": ["10.0.0.1", "10.0.0.2"], "ports": [{"port": 80}]}, "one address per"),
        ({"type": "ExternalName"}, "externalName"),
        ({"type": "ExternalName", "externalName": "a..b"}, "DNS-1123"),
        ({"ports": [{"port": 70000}]}, "less than or equal"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "'TCP', 'UDP' or 'SCTP'"),
    ],
)
def test_invalid_service_specs(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        svc(spec)


@pytest.mark.parametrize("name", ["Web", "1web", "web_1", "a" * 64, "web.x"])
def test_service_name_must_be_rfc1035_label(name: str) -> None:
    with pytest.raises(ValidationError, match=r"metadata\.name"):
        svc({"ports": [{"port": 80}]}, name=name)


def test_cluster_scoped_objects_have_no_namespace() -> None:
    ns = Namespace.model_validate({"metadata": {"name": "team", "namespace": "x"}})
    assert ns.key == ("Namespace", "", "team")


def test_unknown_fields_are_ignored() -> None:
    s = svc({"ports": [{"port": 80}], "someFutureField": True})
    assert s.spec.ports[0].port == 80


def test_to_dict_round_trips_with_api_names() -> None:
    s = svc(
        {"type": "NodePort", "clusterIP": "10.0.0.9", "ports": [{"port": 80, "nodePort": 30001}]}
    )
    data = s.to_dict()
    assert data["spec"]["clusterIP"] == "10.0.0.9"
    assert data["spec"]["ports"][0]["nodePort"] == 30001
    assert Service.model_validate(data) == s


def test_objects_are_frozen() -> None:
    s = svc({"ports": [{"port": 80}]})
    with pytest.raises(ValidationError):
        s.spec.type = "NodePort"  # type: ignore[misc]


def test_pod_ip_and_ips_agree() -> None:
    a = Pod.model_validate({"metadata": {"name": "p"}, "status": {"podIP": "10.1.0.1"}})
    assert a.ips == ("10.1.0.1",)
    b = Pod.model_validate({"metadata": {"name": "p"}, "status": {"podIPs": [{"ip": "fd00::1"}]}})
    assert b.status.pod_ip == "fd00::1"
    with pytest.raises(ValidationError, match="podIP must equal"):
        Pod.model_validate(
            {
                "metadata": {"name": "p"},
                "status": {"podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.2"}]},
            }
        )


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ({"phase": "Running"}, True),
        ({"phase": "Pending"}, False),
        ({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}, True),
        ({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}, False),
        ({"phase": "Succeeded"}, False),
    ],
)
def test_pod_readiness(status: dict[str, Any], ready: bool) -> None:
    pod = Pod.model_validate({"metadata": {"name": "p"}, "status": status})
    assert pod.ready is ready


def test_pod_named_port_resolution() -> None:
    pod = Pod.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]},
                    {
                        "name": "d",
                        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}],
                    },
                ]
            },
        }
    )
    assert pod.container_port("http", "TCP") == 8080
    assert pod.container_port("dns", "UDP") == 53
    assert pod.container_port("dns", "TCP") is None


def test_endpoint_conditions_default_to_ready() -> None:
    es = EndpointSlice.model_validate(
        {
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            ],
        }
    )
    assert es.endpoints[0].ready and es.endpoints[0].serving
    assert not es.endpoints[1].ready and not es.endpoints[1].serving


def test_endpoint_slice_address_family_checked() -> None:
    with pytest.raises(ValidationError, match="not an IPv6 address"):
        EndpointSlice.model_validate(
            {
                "metadata": {"name": "s"},
                "addressType": "IPv6",
                "endpoints": [{"addresses": ["10.0.0.1"]}],
            }
        )


def test_secret_values() -> None:
    s = Secret.model_validate(
        {"metadata": {"name": "s"}, "data": {"a": "aGk="}, "stringData": {"b": "yo"}}
    )
    assert s.value("a") == b"hi"
    assert s.value("b") == b"yo"
    assert s.value("c") is None
    with pytest.raises(ValidationError, match=r"tls\.key"):
        Secret.model_validate(
            {"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": ""}}
        )


def test_kinds_registry() -> None:
    assert {"Service", "EndpointSlice", "Endpoints", "Pod", "Namespace"} <= set(KINDS)
    for kind, cls in KINDS.items():
        assert cls.KIND == kind
        assert cls.API_VERSIONS


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1", "0.0.0.0", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3.04", "1.2.3",
     "1.2.3.4\n", " 1.2.3.4", "1.2.3.4.5", "\u0661.2.3.4", "::1", "2001:DB8::1", "::ffff:1.2.3.4",
     "fe80::1%eth0", ""],
)  # fmt: skip
def test_ip_fields_match_ipaddress(text: str) -> None:
    """The canonical dotted-quad shortcut accepts and rewrites exactly as ipaddress does."""
    try:
        expected: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    doc = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    if expected is None:
        with pytest.raises(ValidationError, match="is not an IP address"):
            Pod.model_validate({**doc, "status": {"podIP": text}})
    else:
        assert Pod.model_validate({**doc, "status": {"podIP": text}}).status.pod_ip == expected


def test_with_resource_version_is_model_copy() -> None:
    svc = Service.model_validate({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}})
    stamped = svc.with_resource_version("7")
    meta = svc.metadata.model_copy(update={"resource_version": "7"})
    assert stamped == svc.model_copy(update={"metadata": meta})
    assert stamped.model_fields_set == svc.model_fields_set | {"metadata"}
    assert stamped.metadata.model_fields_set == svc.metadata.model_fields_set | {"resource_version"}
    assert svc.metadata.resource_version == "" and stamped.spec is svc.spec
    assert stamped.with_resource_version("7") is stamped


def test_shared_fields_sets_stay_per_object() -> None:
    """Models share one fields-set per class and variant; a copy with an update still gets
    its own, and dumping without unset fields is unchanged."""
    full = {"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"ports": [{"port": 80}]}}
    a = Service.model_validate(full)
    b = Service.model_validate({**full, "metadata": {"name": "b", "labels": {"x": "y"}}})
    c = Service.model_validate({**full, "metadata": {"name": "c"}})
    dumps = [o.model_dump(exclude_unset=True) for o in (a, b, c)]
    for obj in (a, b, c):
        share_fields_sets(obj)
    assert a.metadata.__pydantic_fields_set__ is b.metadata.__pydantic_fields_set__
    assert c.metadata.model_fields_set == {"name", "namespace"}
    assert [o.model_dump(exclude_unset=True) for o in (a, b, c)] == dumps
    d = b.metadata.model_copy(update={"uid": "u"})
    assert d.model_fields_set == {"name", "namespace", "labels", "uid"}
    assert a.metadata.model_fields_set == {"name", "namespace", "labels"}
