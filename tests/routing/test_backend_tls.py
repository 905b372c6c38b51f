"""Re-encryption in the translator: ingress-nginx's backend-protocol and proxy-ssl-*
annotations, and BackendTLSPolicy with the status the specification gives it."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mesh.config.gateway import BackendTls, GatewayConfig
from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.control.translate.gateway_served import status_updates
from mesh.objects import BackendTLSPolicy, KubeObject
from tests.routing.test_translate_gatewayapi import gateway, gclass, httproute, rule
from tests.routing.world import ingress, ingress_class, obj, path, service, snapshot
from tests.tls.pki import CA

CA_PEM = CA().pem.decode()
HOST = "shop.example.com"


def ca_secret(name: str = "up-ca", pem: str = CA_PEM, namespace: str = "default") -> KubeObject:
    return obj("Secret", name, namespace, data={"ca.crt": base64.b64encode(pem.encode()).decode()})


def tls_of(config: GatewayConfig) -> dict[str, BackendTls | None]:
    return {b.name: b.tls for b in config.backends}


def problems(config: GatewayConfig) -> list[str]:
    return [p.message for p in config.problems]


def translate_ingress(annotations: dict[str, str], *extra: KubeObject) -> GatewayConfig:
    return translate_gateway(
        snapshot(
            ingress_class(default=True),
            *service("api"),
            *extra,
            ingress("shop", HOST, path("/", "api"), annotations=annotations),
        )
    )


HTTPS = {"backend-protocol": "HTTPS"}
VERIFY = {**HTTPS, "proxy-ssl-verify": "on", "proxy-ssl-secret": "default/up-ca"}

# (annotations, backend name, its TLS settings (None: plain), problem substring or "")
INGRESS_CASES: list[tuple[dict[str, str], str | None, BackendTls | None, str]] = [
    ({}, "default/api:80", None, ""),
    ({"backend-protocol": "HTTP"}, "default/api:80", None, ""),
    (HTTPS, "default/api:80/https", BackendTls(source="Ingress default/shop"), ""),
    (
        {**HTTPS, "proxy-ssl-server-name": "on"},
        None,
        BackendTls(source="Ingress default/shop", server_name="api.default.svc"),
        "",
    ),
    (
        {**HTTPS, "proxy-ssl-server-name": "on", "proxy-ssl-name": "API.internal"},
        None,
        BackendTls(source="Ingress default/shop", server_name="api.internal"),
        "",
    ),
    (
        VERIFY,
        None,
        BackendTls(
            source="Ingress default/shop",
            verify=True,
            verify_names=("api.default.svc",),
            ca_pem=CA_PEM,
        ),
        "",
    ),
    (
        {**VERIFY, "proxy-ssl-name": "api.internal"},
        None,
        BackendTls(
            source="Ingress default/shop",
            verify=True,
            verify_names=("api.internal",),
            ca_pem=CA_PEM,
        ),
        "",
    ),
    # A verification that cannot be set up never connects unverified: not served.
    ({**HTTPS, "proxy-ssl-verify": "on"}, None, None, "proxy-ssl-verify: on needs"),
    ({**VERIFY, "proxy-ssl-secret": "default/nowhere"}, None, None, "not found"),
    ({**VERIFY, "proxy-ssl-secret": "other/up-ca"}, None, None, "default/NAME"),
    ({**HTTPS, "proxy-ssl-verify": "yes"}, None, None, "is not on or off"),
    # Without backend-protocol HTTPS the proxy-ssl annotations do nothing, and say so.
    ({"proxy-ssl-server-name": "on"}, "default/api:80", None, "has no effect without"),
    ({**HTTPS, "proxy-ssl-name": "-bad-"}, "default/api:80/https", None, "not a server name"),
]


@pytest.mark.parametrize(("annotations", "name", "tls", "problem"), INGRESS_CASES)
def test_ingress_nginx_backend_tls(
    annotations: dict[str, str], name: str | None, tls: BackendTls | None, problem: str
) -> None:
    config = translate_ingress(annotations, ca_secret())
    found = tls_of(config)
    if problem:
        assert any(problem in p for p in problems(config)), problems(config)
    else:
        assert problems(config) == []
    if name is None and tls is None:  # not served at all
        assert config.routes == () and found == {}
        return
    if name is None:
        (name,) = found
        assert name.startswith("default/api:80/https-")
    if tls is None and name.endswith("/https"):
        tls = BackendTls(source="Ingress default/shop")
    assert found == {name: tls}
    (route,) = config.routes
    assert route.backends[0].backend == name


def test_a_bad_ca_bundle_is_refused() -> None:
    config = translate_ingress(VERIFY, ca_secret(pem="-----BEGIN CERTIFICATE-----\nxx\n"))
    assert config.routes == ()
    assert any("ca.crt holds no usable PEM CA" in p for p in problems(config))


def test_the_same_service_port_with_and_without_tls_are_two_backends() -> None:
    config = translate_gateway(
        snapshot(
            ingress_class(default=True),
            *service("api"),
            ingress("plain", "a.example.com", path("/", "api")),
            ingress("tls", "b.example.com", path("/", "api"), annotations=HTTPS),
        )
    )
    assert {b.name: b.protocol for b in config.backends} == {
        "default/api:80": "http",
        "default/api:80/https": "https",
    }


# --- BackendTLSPolicy -----------------------------------------------------------------------


def policy(
    name: str = "api-tls",
    hostname: str = "api.internal",
    targets: list[dict[str, Any]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    version: str = "v1",
    **validation: Any,
) -> KubeObject:
    if "wellKnownCACertificates" not in validation:
        validation.setdefault(
            "caCertificateRefs", [{"group": "", "kind": "ConfigMap", "name": "ca"}]
        )
    return obj(
        "BackendTLSPolicy",
        name,
        "default",
        apiVersion=f"gateway.networking.k8s.io/{version}",
        meta={"creationTimestamp": created, "generation": 3},
        spec={
            "targetRefs": targets or [{"group": "", "kind": "Service", "name": "api"}],
            "validation": {"hostname": hostname, **validation},
        },
    )


def ca_map(name: str = "ca", pem: str = CA_PEM) -> KubeObject:
    return obj("ConfigMap", name, "default", data={"ca.crt": pem})


def world(*objects: KubeObject) -> list[KubeObject]:
    return [gclass(), gateway(), httproute("r", rule("api")), *service("api"), *objects]


def conditions(objects: list[KubeObject], name: str = "api-tls") -> dict[str, tuple[str, str]]:
    snap = snapshot(*objects)
    statuses = gateway_status(snap, ingress_addresses=()).backend_tls
    (ancestor,) = statuses[("default", name)].ancestors
    assert ancestor.ancestor_ref.name == "gw" and ancestor.controller_name == "mesh.dev/gateway"
    assert all(c.observed_generation == 3 for c in ancestor.conditions)
    return {c.type: (c.status, c.reason) for c in ancestor.conditions}


OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}

# (objects besides the route world, Accepted/ResolvedRefs, re-encrypted)
POLICY_CASES: list[tuple[str, list[KubeObject], dict[str, tuple[str, str]], bool]] = [
    ("configmap", [policy(), ca_map()], OK, True),
    ("v1alpha3", [policy(version="v1alpha3"), ca_map()], OK, True),
    ("system", [policy(wellKnownCACertificates="System")], OK, True),
    (
        "unknown well-known set",
        [policy(wellKnownCACertificates="example.com/corp")],
        {"Accepted": ("False", "Invalid"), "ResolvedRefs": ("True", "ResolvedRefs")},
        False,
    ),
    (
        "missing configmap",
        [policy()],
        {
            "Accepted": ("False", "NoValidCACertificate"),
            "ResolvedRefs": ("False", "InvalidCACertificateRef"),
        },
        False,
    ),
    (
        "no ca.crt",
        [policy(), obj("ConfigMap", "ca", "default", data={"other": CA_PEM})],
        {
            "Accepted": ("False", "NoValidCACertificate"),
            "ResolvedRefs": ("False", "InvalidCACertificateRef"),
        },
        False,
    ),
    (
        "not a certificate",
        [policy(), ca_map(pem="garbage")],
        {
            "Accepted": ("False", "NoValidCACertificate"),
            "ResolvedRefs": ("False", "InvalidCACertificateRef"),
        },
        False,
    ),
    (
        "a Secret is the wrong kind",
        [policy(caCertificateRefs=[{"group": "", "kind": "Secret", "name": "ca"}]), ca_map()],
        {"Accepted": ("False", "NoValidCACertificate"), "ResolvedRefs": ("False", "InvalidKind")},
        False,
    ),
    (
        "one of two references invalid",
        [
            policy(
                caCertificateRefs=[
                    {"group": "", "kind": "ConfigMap", "name": "ca"},
                    {"group": "", "kind": "ConfigMap", "name": "nowhere"},
                ]
            ),
            ca_map(),
        ],
        {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "InvalidCACertificateRef")},
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "objects", "want", "encrypted"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES]
)
def test_backend_tls_policy(
    case: str, objects: list[KubeObject], want: dict[str, tuple[str, str]], encrypted: bool
) -> None:
    everything = world(*objects)
    assert conditions(everything) == want
    config = translate_gateway(snapshot(*everything))
    (route,) = config.routes
    if encrypted:
        (backend,) = config.backends
        assert backend.name == "default/api:80/tls:api-tls"
        assert backend.protocol == "https" and backend.tls is not None
        assert backend.tls.server_name == "api.internal" and backend.tls.verify
        assert backend.tls.verify_names == ("api.internal",)
        assert (backend.tls.ca_pem is None) == (case == "system")
        assert route.backends[0].backend == backend.name
    else:  # never plain text where TLS was asked for: the request answers 500
        assert route.backends[0].backend is None
        assert config.backends == ()


def test_subject_alt_names_are_verified_instead_of_the_hostname() -> None:
    sans = [{"type": "Hostname", "hostname": "*.internal"}, {"type": "URI", "uri": "spiffe://c/x"}]
    config = translate_gateway(snapshot(*world(policy(subjectAltNames=sans), ca_map())))
    (backend,) = config.backends
    assert backend.tls is not None
    assert backend.tls.server_name == "api.internal"  # still the SNI
    assert (backend.tls.verify_names, backend.tls.verify_uris) == (
        ("*.internal",),
        ("spiffe://c/x",),
    )


def test_section_name_targets_one_port_and_beats_the_whole_service() -> None:
    svc = obj(
        "Service", "api", "default",
        spec={"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                        {"name": "https", "port": 443, "targetPort": 8443}]},
    )  # fmt: skip
    eps = service("api")[1]
    routes = httproute(
        "r", {"backendRefs": [{"name": "api", "port": 80}, {"name": "api", "port": 443}]}
    )
    port_policy = policy("port", "port.internal",
                         targets=[{"group": "", "kind": "Service", "name": "api", "sectionName": "https"}],
                         created="2026-02-01T00:00:00Z")  # fmt: skip
    whole = policy("whole", "whole.internal")
    config = translate_gateway(
        snapshot(gclass(), gateway(), routes, svc, eps, ca_map(), port_policy, whole)
    )
    names = {b.name: b.tls.server_name if b.tls else None for b in config.backends}
    assert names == {
        "default/api:80/tls:whole": "whole.internal",
        "default/api:443/tls:port": "port.internal",
    }


def test_the_older_policy_wins_and_the_other_is_conflicted() -> None:
    old = policy("old", "old.internal", created="2026-01-01T00:00:00Z")
    new = policy("new", "new.internal", created="2026-03-01T00:00:00Z")
    objects = world(old, new, ca_map())
    config = translate_gateway(snapshot(*objects))
    (backend,) = config.backends
    assert backend.tls is not None and backend.tls.server_name == "old.internal"
    assert conditions(objects, "old") == OK
    assert conditions(objects, "new") == {
        "Accepted": ("False", "Conflicted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


def test_a_policy_no_route_uses_has_no_ancestor_and_other_controllers_entries_stay() -> None:
    foreign = {
        "ancestorRef": {"name": "theirs", "namespace": "default"},
        "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}],
    }
    unused = obj(
        "BackendTLSPolicy", "lonely", "default",
        spec={"targetRefs": [{"group": "", "kind": "Service", "name": "nobody"}],
              "validation": {"hostname": "x.internal", "wellKnownCACertificates": "System"}},
        status={"ancestors": [foreign]},
    )  # fmt: skip
    snap = snapshot(*world(unused))
    (status,) = gateway_status(snap, ingress_addresses=()).backend_tls.values()
    assert [a.controller_name for a in status.ancestors] == ["example.com/other"]
    # The status writer changes nothing: what the store holds already says so.
    assert not [u for u in status_updates(snap, ingress_addresses=(), gateway_cidr="127.11.0.0/16")
                if isinstance(u, BackendTLSPolicy)]  # fmt: skip


def test_status_is_written_back_for_the_policy() -> None:
    snap = snapshot(*world(policy(), ca_map()))
    updates = [
        u
        for u in status_updates(snap, ingress_addresses=(), gateway_cidr="127.11.0.0/16")
        if isinstance(u, BackendTLSPolicy)
    ]
    (written,) = updates
    (ancestor,) = written.status.ancestors
    assert {c.type: c.status for c in ancestor.conditions} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
    }


def test_manifest_validation_refuses_what_the_api_server_would() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        policy(
            wellKnownCACertificates="System", caCertificateRefs=[{"kind": "ConfigMap", "name": "c"}]
        )
    with pytest.raises(ValueError, match="IP address"):
        policy(hostname="10.0.0.1")
    with pytest.raises(ValueError, match="wildcard"):
        policy(hostname="*.internal")


MANIFEST = """
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: {name: old-spelling, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: api, sectionName: https}]
  validation: {hostname: api.shop.svc, wellKnownCACertificates: System}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: wildcard, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: api}]
  validation: {hostname: "*.shop.svc", caCertificateRefs: [{group: "", kind: ConfigMap, name: ca}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ca, namespace: shop}
data: {ca.crt: x}
"""


def test_manifests_of_both_api_versions_and_a_refused_one() -> None:
    from mesh.manifests import load_text

    loaded = load_text(MANIFEST, "policies.yaml")
    assert [o.key for o in loaded.objects] == [
        ("BackendTLSPolicy", "shop", "old-spelling"),
        ("ConfigMap", "shop", "ca"),
    ]
    (error,) = loaded.errors
    assert (error.object, error.field) == (
        "BackendTLSPolicy/shop/wildcard",
        "spec.validation.hostname",
    )
    assert "no wildcard" in error.message


def test_a_policy_conflicted_on_one_service_still_encrypts_the_one_it_alone_targets() -> None:
    # "new" loses Service api to an older policy, but is the only policy for Service web:
    # web's traffic must not go out in plain text (nor lose its TLS to a 500).
    old = policy("old", "old.internal", created="2026-01-01T00:00:00Z")
    both = [{"group": "", "kind": "Service", "name": n} for n in ("api", "web")]
    new = policy("new", "new.internal", targets=both, created="2026-03-01T00:00:00Z")
    objects = [
        gclass(), gateway(), httproute("r", rule("web")), *service("web", ip="127.0.1.2"),
        *service("api"), old, new, ca_map(),
    ]  # fmt: skip
    config = translate_gateway(snapshot(*objects))
    (route,) = config.routes
    (backend,) = config.backends
    assert route.backends[0].backend == backend.name == "default/web:80/tls:new"
    assert backend.protocol == "https" and backend.tls is not None
    assert backend.tls.server_name == "new.internal" and backend.tls.verify
