"""Gateway API -> routes and status: classes, listeners, attachment, references, filters."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest

from mesh.control.translate.conditions import allocate, intersect
from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.http.plan import Forward, Head, plan
from mesh.http.routes import compile_routes
from mesh.objects import Condition, KubeObject
from tests.routing.world import TLS_DATA, obj, served_by, service, snapshot
from tests.tls.pki import CA

G = "gateway.networking.k8s.io"


def gclass(name: str = "mesh", controller: str = "mesh.dev/gateway") -> KubeObject:
    return obj("GatewayClass", name, "", spec={"controllerName": controller})


def listener(name: str, port: int = 8080, protocol: str = "HTTP", **kw: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": protocol, **kw}


def gateway(
    name: str = "gw",
    *listeners: dict[str, Any],
    namespace: str = "default",
    cls: str = "mesh",
    **spec: Any,
) -> KubeObject:
    return obj(
        "Gateway",
        name,
        namespace,
        spec={"gatewayClassName": cls, "listeners": list(listeners) or [listener("http")], **spec},
    )


def httproute(
    name: str,
    *rules: dict[str, Any],
    parents: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> KubeObject:
    return obj(
        "HTTPRoute", name, namespace, meta={"creationTimestamp": created},
        spec={"parentRefs": parents or [{"name": "gw", "namespace": "default"}], "rules": list(rules) or [rule("web")], **spec},
    )  # fmt: skip


def rule(*backends: str, **kw: Any) -> dict[str, Any]:
    refs = []
    for b in backends:
        name, _, weight = b.partition("=")
        ns, _, svc = name.rpartition("/")
        ref: dict[str, Any] = {"name": svc, "port": 80, "weight": int(weight or 1)}
        if ns:
            ref["namespace"] = ns
        refs.append(ref)
    return {"backendRefs": refs, **kw}


def conds(conditions: tuple[Condition, ...]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conditions}


BASE = [gclass(), *service("web", "127.0.1.1"), *service("api", "127.0.1.2")]
GW = "gateway/default/gw/8080"


def call(snap: Any, target: str = "/", host: str = "foo.com", listener: str = GW, **kw: Any) -> Any:
    routes = compile_routes(translate_gateway(snap))
    rand = kw.pop("rand", 0.5)
    return plan(
        routes, Head(listener, kw.pop("method", "GET"), target, host, **kw), 0.0, lambda: rand
    )


def test_gateway_class_accepted_only_for_our_controller() -> None:
    status = gateway_status(
        snapshot(gclass(), gclass("other", "example.com/x")), ingress_addresses=()
    )
    assert set(status.classes) == {"mesh"}
    assert conds(status.classes["mesh"].conditions) == {"Accepted": ("True", "Accepted")}


def test_gateway_addresses_given_or_allocated() -> None:
    snap = snapshot(
        *BASE,
        gateway("a"),
        gateway("b"),
        gateway("fixed", addresses=[{"type": "IPAddress", "value": "127.0.0.77"}]),
        gateway("named", addresses=[{"type": "Hostname", "value": "gw.example"}]),
    )
    status = gateway_status(snap, ingress_addresses=(), gateway_cidr="127.11.0.0/16")
    a, b = (status.gateways[("default", n)].addresses[0].value for n in ("a", "b"))
    assert a != b and {
        ipaddress.ip_address(x) in ipaddress.ip_network("127.11.0.0/16") for x in (a, b)
    } == {True}
    assert status.gateways[("default", "fixed")].addresses[0].value == "127.0.0.77"
    named = status.gateways[("default", "named")]
    assert conds(named.conditions) == {
        "Accepted": ("False", "UnsupportedAddress"),
        "Programmed": ("False", "AddressNotUsable"),
    }
    # the same objects give the same addresses
    again = gateway_status(snap, ingress_addresses=(), gateway_cidr="127.11.0.0/16")
    assert again.gateways[("default", "a")].addresses[0].value == a


def test_allocation_is_stable_and_fills_a_small_range() -> None:
    first = allocate(["x/a", "x/b"], "127.11.0.0/30", set())
    assert sorted(first.values()) == ["127.11.0.1", "127.11.0.2"]
    assert allocate(["x/a", "x/b", "x/c"], "127.11.0.0/30", set()) == first  # full: c gets none
    # a newer key never moves an older one; a taken address is skipped
    taken = {allocate(["x/a"], "127.11.0.0/16", set())["x/a"]}
    assert allocate(["x/a"], "127.11.0.0/16", taken)["x/a"] not in taken
    assert (
        allocate(["x/a"], "127.11.0.0/16", set())["x/a"]
        == allocate(["x/a", "x/z"], "127.11.0.0/16", set())["x/a"]
    )


def secret(name: str, namespace: str = "default") -> KubeObject:
    return obj("Secret", name, namespace, type="kubernetes.io/tls", data=TLS_DATA)


def https(name: str, ref: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return listener(name, 8443, "HTTPS", tls={"mode": "Terminate", "certificateRefs": [ref]}, **kw)


GRANT_SECRET = obj(
    "ReferenceGrant", "allow-gw", "certs",
    spec={"from": [{"group": G, "kind": "Gateway", "namespace": "default"}], "to": [{"group": "", "kind": "Secret"}]},
)  # fmt: skip

# (listeners, extra objects, privileged, listener name -> (condition type -> (status, reason)))
LISTENERS = [
    ([listener("http")], [], False, {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed"), "ResolvedRefs": ("True", "ResolvedRefs"), "Conflicted": ("False", "NoConflicts")}),
    ([listener("low", 80)], [], False, {"Accepted": ("False", "PortUnavailable"), "Programmed": ("False", "Invalid")}),
    ([listener("low", 80)], [], True, {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}),
    ([listener("tcp", 9000, "TCP")], [], False, {"Accepted": ("False", "UnsupportedProtocol")}),
    ([listener("tls", 8443, "HTTPS")], [], False, {"ResolvedRefs": ("False", "InvalidCertificateRef"), "Programmed": ("False", "Invalid")}),
    ([https("tls", {"name": "cert"})], [secret("cert")], False, {"ResolvedRefs": ("True", "ResolvedRefs"), "Programmed": ("True", "Programmed")}),
    ([https("tls", {"name": "missing"})], [], False, {"ResolvedRefs": ("False", "InvalidCertificateRef")}),
    ([https("tls", {"name": "cert", "namespace": "certs"})], [secret("cert", "certs")], False, {"ResolvedRefs": ("False", "RefNotPermitted")}),
    ([https("tls", {"name": "cert", "namespace": "certs"})], [secret("cert", "certs"), GRANT_SECRET], False, {"ResolvedRefs": ("True", "ResolvedRefs")}),
    ([listener("http", allowedRoutes={"kinds": [{"kind": "TCPRoute"}]})], [], False, {"ResolvedRefs": ("False", "InvalidRouteKinds")}),
]  # fmt: skip


@pytest.mark.parametrize(("listeners", "extra", "privileged", "want"), LISTENERS)
def test_listener_status(
    listeners: list[dict[str, Any]],
    extra: list[KubeObject],
    privileged: bool,
    want: dict[str, tuple[str, str]],
) -> None:
    snap = snapshot(*BASE, *extra, gateway("gw", *listeners))
    status = gateway_status(snap, ingress_addresses=(), privileged=privileged).gateways[
        ("default", "gw")
    ]
    got = conds(status.listeners[0].conditions)
    assert {k: got[k] for k in want} == want
    # Programmed exactly when every other condition is good; only then is it served.
    programmed = got["Programmed"][0] == "True"
    assert programmed == all(s == "True" for t, (s, _) in want.items() if t != "Conflicted")
    config = translate_gateway(snap, privileged=privileged)
    assert any(lis.name.startswith("gateway/") for lis in config.listeners) == programmed


@pytest.mark.parametrize(
    ("ref", "extra", "message"),
    [
        ({"name": "missing"}, [], "Secret default/missing not found"),
        ({"name": "plain"}, [obj("Secret", "plain", "default", data={"k": "dg=="})],
         "Secret default/plain is not a TLS Secret (its type is Opaque)"),
        ({"name": "gone", "namespace": "certs"}, [GRANT_SECRET], "Secret certs/gone not found"),
    ],
)  # fmt: skip
def test_a_certificate_ref_that_does_not_resolve_says_why(
    ref: dict[str, Any], extra: list[KubeObject], message: str
) -> None:
    snap = snapshot(*BASE, *extra, gateway("gw", https("tls", ref)))
    status = gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")]
    (refs,) = [c for c in status.listeners[0].conditions if c.type == "ResolvedRefs"]
    assert (refs.status, refs.reason, refs.message) == ("False", "InvalidCertificateRef", message)


def _tls(name: str, crt: bytes, key: bytes) -> KubeObject:
    data = {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}
    return obj("Secret", name, "default", type="kubernetes.io/tls", data=data)


_CRT = base64.b64decode(TLS_DATA["tls.crt"])
_KEY = base64.b64decode(TLS_DATA["tls.key"])


@pytest.mark.parametrize(
    ("crt", "key", "says"),
    [
        (_CRT[: len(_CRT) // 2], _KEY, "tls.crt has a PEM block that is cut off"),
        (_KEY, _CRT, "tls.crt holds a private key, not a certificate"),
        (_CRT, CA().issue("other.example").key_pem, "tls.key does not belong to the certificate"),
        (b"", _KEY, "needs both tls.crt and tls.key"),
    ],
)
def test_a_secret_whose_certificate_cannot_be_served_is_an_invalid_ref(
    crt: bytes, key: bytes, says: str
) -> None:
    """A malformed TLS Secret is an InvalidCertificateRef (Gateway API), with the reason in
    one sentence, and the listener is not Programmed: the gateway would serve its default
    certificate for it, which no client of the host accepts."""
    snap = snapshot(*BASE, _tls("bad", crt, key), gateway("gw", https("tls", {"name": "bad"})))
    status = gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")]
    got = {c.type: c for c in status.listeners[0].conditions}
    refs = got["ResolvedRefs"]
    assert (refs.status, refs.reason) == ("False", "InvalidCertificateRef")
    assert refs.message.startswith("Secret default/bad: ") and says in refs.message, refs.message
    assert "asn1" not in refs.message.lower()
    assert (got["Programmed"].status, got["Programmed"].reason) == ("False", "Invalid")
    # the same Secret made whole resolves
    snap = snapshot(*BASE, _tls("bad", _CRT, _KEY), gateway("gw", https("tls", {"name": "bad"})))
    status = gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")]
    got = {c.type: c for c in status.listeners[0].conditions}
    assert got["ResolvedRefs"].status == "True"


def test_gateway_conditions_follow_its_listeners() -> None:
    cases = [
        ([listener("a")], {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}),
        ([listener("a"), listener("b", 9000, "UDP")], {"Accepted": ("True", "ListenersNotValid"), "Programmed": ("True", "Programmed")}),
        ([listener("b", 9000, "UDP")], {"Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "Invalid")}),
    ]  # fmt: skip
    for listeners, want in cases:
        snap = snapshot(*BASE, gateway("gw", *listeners))
        assert (
            conds(gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")].conditions)
            == want
        )


def test_listener_conflicts() -> None:
    snap = snapshot(
        *BASE,
        gateway("gw", listener("a", hostname="a.com"), listener("b", hostname="a.com"), listener("c", hostname="c.com"),
                listener("d", 9000), listener("e", 9000, "HTTPS", tls={"certificateRefs": []})),
    )  # fmt: skip
    status = gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")]
    got = {lis.name: conds(lis.conditions)["Conflicted"] for lis in status.listeners}
    assert got == {
        "a": ("True", "HostnameConflict"),
        "b": ("True", "HostnameConflict"),
        "c": ("False", "NoConflicts"),
        "d": ("True", "ProtocolConflict"),
        "e": ("True", "ProtocolConflict"),
    }


def test_certificates_per_listener_hostname() -> None:
    snap = snapshot(
        *BASE,
        secret("a"),
        secret("b"),
        gateway(
            "gw",
            https("a", {"name": "a"}, hostname="a.com"),
            https("b", {"name": "b"}, hostname="*.b.com"),
        ),
    )
    lis = next(x for x in translate_gateway(snap).listeners if x.name == "gateway/default/gw/8443")
    assert [(c.secret, c.hosts) for c in lis.certificates] == [
        ("default/a", ("a.com",)),
        ("default/b", ("*.b.com",)),
    ]


INTERSECT = [
    (None, "foo.com", "foo.com"),
    ("foo.com", "foo.com", "foo.com"),
    ("foo.com", "bar.com", None),
    ("*.example.com", "foo.example.com", "foo.example.com"),
    ("*.example.com", "a.b.example.com", "a.b.example.com"),
    ("*.example.com", "example.com", None),
    ("foo.example.com", "*.example.com", "foo.example.com"),
    ("*.example.com", "*.foo.example.com", "*.foo.example.com"),
    ("*.foo.example.com", "*.example.com", "*.foo.example.com"),
    ("*.example.com", "*.example.org", None),
]


@pytest.mark.parametrize(("listener_host", "route_host", "want"), INTERSECT)
def test_hostname_intersection(
    listener_host: str | None, route_host: str, want: str | None
) -> None:
    assert intersect(listener_host, route_host) == want


def parent_conditions(
    snap: Any, route: str = "r", namespace: str = "default"
) -> list[dict[str, tuple[str, str]]]:
    status = gateway_status(snap, ingress_addresses=()).routes[(namespace, route)]
    return [conds(p.conditions) for p in status.parents]


NS_OTHER = obj("Namespace", "other", "", meta={"labels": {"team": "a"}})

# (gateway listeners, route fields, expected (Accepted, reason) of its only parent)
ATTACH = [
    ([listener("http")], {}, ("True", "Accepted")),
    ([listener("http")], {"parents": [{"name": "gw", "sectionName": "nope"}]}, ("False", "NoMatchingParent")),
    ([listener("http")], {"parents": [{"name": "gw", "port": 9999}]}, ("False", "NoMatchingParent")),
    ([listener("a", 8080), listener("b", 8081)], {"parents": [{"name": "gw", "sectionName": "b"}]}, ("True", "Accepted")),
    ([listener("http", hostname="*.example.com")], {"hostnames": ["foo.example.com"]}, ("True", "Accepted")),
    ([listener("http", hostname="*.example.com")], {"hostnames": ["foo.example.org"]}, ("False", "NoMatchingListenerHostname")),
    ([listener("http")], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("False", "NotAllowedByListeners")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "All"}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("True", "Accepted")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("True", "Accepted")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "b"}}}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("False", "NotAllowedByListeners")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "c"]}]}}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("True", "Accepted")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("False", "NotAllowedByListeners")),
    ([listener("http", allowedRoutes={"namespaces": {"from": "Selector", "selector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}})], {"namespace": "other", "parents": [{"name": "gw", "namespace": "default"}]}, ("True", "Accepted")),
]  # fmt: skip


@pytest.mark.parametrize(("listeners", "fields", "want"), ATTACH)
def test_route_attachment(
    listeners: list[dict[str, Any]], fields: dict[str, Any], want: tuple[str, str]
) -> None:
    ns = fields.get("namespace", "default")
    snap = snapshot(
        *BASE,
        *service("web", namespace="other"),
        NS_OTHER,
        gateway("gw", *listeners),
        httproute("r", **fields),
    )
    assert parent_conditions(snap, namespace=ns)[0]["Accepted"] == want
    status = gateway_status(snap, ingress_addresses=()).gateways[("default", "gw")]
    assert sum(lis.attached_routes for lis in status.listeners) == (1 if want[0] == "True" else 0)


def test_routes_of_other_gateways_get_no_status_from_us() -> None:
    snap = snapshot(*BASE, gclass("theirs", "x.io/gw"), gateway("gw", cls="theirs"), httproute("r"))
    assert gateway_status(snap, ingress_addresses=()).routes == {}
    assert [lis.name for lis in translate_gateway(snap).listeners] == [
        "ingress-http",
        "ingress-https",
    ]


def test_serving_through_the_gateway_with_listener_hostname() -> None:
    snap = snapshot(
        *BASE,
        gateway("gw", listener("http", hostname="*.example.com")),
        httproute("r", rule("web")),
    )
    assert served_by(call(snap, "/", "foo.example.com")) == "web"
    assert served_by(call(snap, "/", "foo.other.com")) == "404 no-route"


def test_weights_and_zero() -> None:
    snap = snapshot(*BASE, gateway("gw"), httproute("r", rule("web=1", "api=3")))
    assert [served_by(call(snap, rand=r)) for r in (0.1, 0.3, 0.9)] == ["web", "api", "api"]
    snap = snapshot(*BASE, gateway("gw"), httproute("r", rule("web=0", "api=1")))
    assert {served_by(call(snap, rand=r)) for r in (0.0, 0.5, 0.99)} == {"api"}


GRANT_SVC = obj(
    "ReferenceGrant", "allow-routes", "other",
    spec={"from": [{"group": G, "kind": "HTTPRoute", "namespace": "default"}], "to": [{"group": "", "kind": "Service", "name": "web"}]},
)  # fmt: skip

# (route rule, extra objects, ResolvedRefs, what a request gets)
REFS = [
    (rule("web"), [], ("True", "ResolvedRefs"), "web"),
    (rule("ghost"), [], ("False", "BackendNotFound"), "500 invalid-backend"),
    (rule("other/web"), [], ("False", "RefNotPermitted"), "500 invalid-backend"),
    (rule("other/web"), [GRANT_SVC], ("True", "ResolvedRefs"), "web"),
    ({"backendRefs": [{"name": "web", "port": 80, "kind": "Bucket", "group": "example.com"}]}, [], ("False", "InvalidKind"), "500 invalid-backend"),
    ({"backendRefs": []}, [], ("True", "ResolvedRefs"), "500 invalid-backend"),
]  # fmt: skip


@pytest.mark.parametrize(("rule_", "extra", "refs", "served"), REFS)
def test_backend_references(
    rule_: dict[str, Any], extra: list[KubeObject], refs: tuple[str, str], served: str
) -> None:
    snap = snapshot(
        *BASE,
        *service("web", "127.0.2.1", namespace="other"),
        *extra,
        gateway("gw"),
        httproute("r", rule_),
    )
    assert parent_conditions(snap)[0]["ResolvedRefs"] == refs
    assert served_by(call(snap)) == served


def test_precedence_across_routes_by_age_then_name() -> None:
    snap = snapshot(
        *BASE,
        gateway("gw"),
        httproute("b-old", rule("web"), created="2026-01-01T00:00:00Z"),
        httproute("a-new", rule("api"), created="2026-02-01T00:00:00Z"),
    )
    assert served_by(call(snap)) == "web"  # the older route wins a tie
    snap = snapshot(*BASE, gateway("gw"), httproute("b", rule("web")), httproute("a", rule("api")))
    assert served_by(call(snap)) == "api"  # same age: alphabetical namespace/name


def test_filters_timeouts_and_retry() -> None:
    filters = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "add": [{"name": "x-b", "value": "2"}], "remove": ["x-c"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-r", "value": "1"}]}},
        {"type": "URLRewrite", "urlRewrite": {"hostname": "in.example", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "api", "port": 80}, "percent": 100}},
    ]  # fmt: skip
    r = rule(
        "web",
        matches=[{"path": {"type": "PathPrefix", "value": "/v1"}}],
        filters=filters,
        timeouts={"request": "10s", "backendRequest": "2s"},
        retry={"codes": [503], "attempts": 3, "backoff": "100ms"},
    )
    snap = snapshot(*BASE, gateway("gw"), httproute("r", r))
    fwd = call(snap, "/v1/users?id=1")
    assert isinstance(fwd, Forward)
    assert (fwd.target, fwd.host) == ("/v2/users?id=1", "in.example")
    assert fwd.request_headers.set == (("x-a", "1"),) and fwd.request_headers.remove == ("x-c",)
    assert fwd.response_headers.set == (("x-r", "1"),)
    assert [m for m, _ in fwd.mirrors] == ["default/api:80"]
    assert (fwd.timeouts.request, fwd.timeouts.backend_request) == (10.0, 2.0)
    assert fwd.retry is not None and (fwd.retry.codes, fwd.retry.attempts, fwd.retry.backoff) == (
        (503,),
        3,
        0.1,
    )


def test_request_redirect_filter() -> None:
    r = {
        "filters": [
            {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
        ]
    }
    snap = snapshot(*BASE, gateway("gw"), httproute("r", r))
    got = call(snap, "/x?y=1")
    assert (got.status, got.headers) == (301, (("location", "https://foo.com/x?y=1"),))


def test_extension_ref_filter_answers_500() -> None:
    r = rule(
        "web",
        filters=[
            {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "Auth", "name": "a"}}
        ],
    )
    snap = snapshot(*BASE, gateway("gw"), httproute("r", r))
    assert served_by(call(snap)) == "500 invalid-backend"
    assert parent_conditions(snap)[0]["ResolvedRefs"] == ("False", "UnsupportedValue")
