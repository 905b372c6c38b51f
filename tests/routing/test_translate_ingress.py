"""Ingress v1 -> routes: class selection, hosts and paths, merging, backends, status."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.objects import KubeObject
from tests.routing.world import (
    ingress,
    ingress_class,
    obj,
    path,
    request,
    served_by,
    service,
    snapshot,
)

DEFAULT = "ingressclass.kubernetes.io/is-default-class"

SERVICES = [
    *service("web", "127.0.1.1"),
    *service("api", "127.0.1.2"),
    *service("other", "127.0.1.3"),
]

# (IngressClasses, the Ingress's class fields, served?)
CLASSES = [
    ([ingress_class("mesh")], {"class_name": "mesh"}, True),
    ([ingress_class("mesh")], {"class_name": "nginx"}, False),
    ([ingress_class("nginx", controller="k8s.io/ingress-nginx")], {"class_name": "nginx"}, False),
    ([ingress_class("mesh")], {"class_name": None}, False),  # no default class
    ([ingress_class("mesh", default=True)], {"class_name": None}, True),
    ([ingress_class("other", controller="x", default=True)], {"class_name": None}, False),
    # the legacy annotation is read first
    ([ingress_class("mesh")], {"class_name": None, "annotations": {"kubernetes.io/ingress.class": "mesh"}}, True),
    ([ingress_class("mesh")], {"class_name": "mesh", "annotations": {"kubernetes.io/ingress.class": "nginx"}}, False),
    ([], {"class_name": "mesh"}, False),  # the class must exist
]  # fmt: skip


@pytest.mark.parametrize(("classes", "fields", "served"), CLASSES)
def test_ingress_class_selection(
    classes: list[KubeObject], fields: dict[str, Any], served: bool
) -> None:
    snap = snapshot(*classes, *SERVICES, ingress("i", "foo.com", path("/", "web"), **fields))
    assert served_by(request(snap)) == ("web" if served else "404 no-route")


def test_rules_of_one_host_merge_across_ingresses_and_the_oldest_wins_a_tie() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress(
            "b-new",
            "foo.com",
            path("/api", "api"),
            path("/", "other"),
            created="2026-02-01T00:00:00Z",
        ),
        ingress("a-old", "foo.com", path("/", "web"), created="2026-01-01T00:00:00Z"),
    )
    assert served_by(request(snap, "/api/x")) == "api"  # from the newer Ingress
    assert served_by(request(snap, "/x")) == "web"  # "/" in both: the older one
    assert served_by(request(snap, "/x", "bar.com")) == "404 no-route"


def test_wildcard_host_is_one_label_and_exact_host_wins() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress("w", "*.foo.com", path("/", "web")),
        ingress("e", "api.foo.com", path("/", "api")),
    )
    assert served_by(request(snap, "/", "x.foo.com")) == "web"
    assert served_by(request(snap, "/", "api.foo.com")) == "api"
    assert served_by(request(snap, "/", "a.b.foo.com")) == "404 no-route"
    assert served_by(request(snap, "/", "foo.com")) == "404 no-route"


def test_implementation_specific_is_prefix() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress("i", "foo.com", path("/app", "web", "ImplementationSpecific")),
    )
    assert [served_by(request(snap, p)) for p in ("/app", "/app/x", "/apple")] == [
        "web",
        "web",
        "404 no-route",
    ]


def test_default_backend() -> None:
    default = {"service": {"name": "other", "port": {"number": 80}}}
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress("i", "foo.com", path("/api", "api"), defaultBackend=default),
        ingress(
            "catchall",
            None,
            class_name="mesh",
            defaultBackend={"service": {"name": "web", "port": {"number": 80}}},
        ),
    )
    assert served_by(request(snap, "/api")) == "api"
    assert served_by(request(snap, "/nothing")) == "other"  # the Ingress's own default
    assert served_by(request(snap, "/", "unknown.com")) == "web"  # an Ingress with no rules


def test_backend_port_by_name_and_number_and_endpoints() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress(
            "i",
            "foo.com",
            path("/n", "web", port=80),
            path("/s", "web", port="http"),
            path("/bad", "web", port=81),
        ),
    )
    for p in ("/n", "/s"):
        fwd = request(snap, p)
        assert served_by(fwd) == "web" and fwd.endpoints == (("127.0.1.1", 8080),)  # type: ignore[union-attr]
    assert served_by(request(snap, "/bad")) == "503 no-healthy-upstream"
    problems = [p.message for p in translate_gateway(snap).problems]
    assert any("Service default/web has no port 81" in p for p in problems), problems


@pytest.mark.parametrize(("classes", "fields", "served"), CLASSES)
def test_an_ingress_without_any_class_is_reported_only_when_no_class_is_default(
    classes: list[KubeObject], fields: dict[str, Any], served: bool
) -> None:
    snap = snapshot(*classes, *SERVICES, ingress("i", "foo.com", path("/", "web"), **fields))
    said = [p for p in translate_gateway(snap).problems if "no IngressClass" in p.message]
    classless = fields["class_name"] is None and not fields.get("annotations")
    default = any(c.metadata.annotations.get(DEFAULT) == "true" for c in classes)
    assert len(said) == (1 if classless and not default else 0)
    assert not (said and served)
    if said:
        assert (said[0].kind, said[0].object) == ("Ingress", "default/i")
        assert "set spec.ingressClassName" in said[0].message


def test_missing_service_answers_503_and_is_reported() -> None:
    snap = snapshot(ingress_class(), ingress("i", "foo.com", path("/", "ghost")))
    assert served_by(request(snap)) == "503 no-healthy-upstream"
    assert "Service default/ghost not found" in translate_gateway(snap).problems[0].message


def test_resource_backend_is_refused_with_a_reason() -> None:
    resource = {
        "path": "/",
        "pathType": "Prefix",
        "backend": {"resource": {"kind": "Bucket", "name": "b"}},
    }
    snap = snapshot(
        ingress_class(), *SERVICES, ingress("i", "foo.com", resource, path("/ok", "web"))
    )
    assert served_by(request(snap, "/x")) == "404 no-route"
    assert served_by(request(snap, "/ok")) == "web"
    problem = translate_gateway(snap).problems[0]
    assert (problem.kind, problem.object) == ("Ingress", "default/i")
    assert "resource is not supported" in problem.message


def test_endpoints_ready_then_terminating_fallback() -> None:
    svc = obj("Service", "web", spec={"ports": [{"name": "http", "port": 80, "targetPort": 8080}]})

    def eps(*endpoints: dict[str, Any]) -> KubeObject:
        return obj(
            "EndpointSlice", "web-1", meta={"labels": {"kubernetes.io/service-name": "web"}},
            addressType="IPv4", endpoints=list(endpoints), ports=[{"name": "http", "port": 8080}],
        )  # fmt: skip

    ready = {"addresses": ["127.0.1.1"]}
    not_ready = {"addresses": ["127.0.1.2"], "conditions": {"ready": False}}
    draining = {
        "addresses": ["127.0.1.3"],
        "conditions": {"ready": False, "serving": True, "terminating": True},
    }
    route = ingress("i", "foo.com", path("/", "web"))
    cases = [
        ((ready, not_ready, draining), (("127.0.1.1", 8080),)),
        ((not_ready, draining), (("127.0.1.3", 8080),)),
        ((not_ready,), ()),
    ]
    for endpoints, want in cases:
        fwd = request(snapshot(ingress_class(), svc, eps(*endpoints), route))
        assert (fwd.endpoints if want else served_by(fwd)) == (want or "503 no-healthy-upstream")  # type: ignore[union-attr]


def test_ingress_status_load_balancer() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress("mine", "foo.com", path("/", "web")),
        ingress("theirs", "foo.com", path("/", "web"), class_name="nginx"),
    )
    status = gateway_status(snap, ingress_addresses=("127.0.0.1", "gw.example"))
    assert set(status.ingresses) == {("default", "mine")}
    assert status.ingresses[("default", "mine")].to_dict() == {
        "loadBalancer": {"ingress": [{"ip": "127.0.0.1"}, {"hostname": "gw.example"}]}
    }


def test_tls_certificates_reference_their_secrets() -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress(
            "i", "foo.com", path("/", "web"), tls=[{"hosts": ["foo.com"], "secretName": "foo-tls"}]
        ),
    )
    https = next(lis for lis in translate_gateway(snap).listeners if lis.name == "ingress-https")
    assert [(c.secret, c.hosts) for c in https.certificates] == [("default/foo-tls", ("foo.com",))]
