"""Any annotation value, any backend reference: the translator reports, never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.control.translate.nginx import KNOWN, RAW_CONFIG
from mesh.http.routes import compile_routes
from tests.routing.world import (
    NGINX,
    TLS_DATA,
    ingress,
    ingress_class,
    obj,
    path,
    service,
    snapshot,
)

values = st.one_of(
    st.sampled_from(["true", "false", "0", "1", "-1", "10k", "1m", "/", "/$1", "cookie", "basic",
                     "https://x.example", "127.0.0.1/8", "HTTPS", "(", "*", "", "999999999999"]),
    st.text(max_size=20),
)  # fmt: skip
keys = st.sampled_from(sorted(KNOWN | RAW_CONFIG | {"unknown-thing"}))


@settings(max_examples=300, deadline=None)
@given(
    annotations=st.dictionaries(keys, values, max_size=8),
    canary=st.dictionaries(keys, values, max_size=6),
    p=st.sampled_from(["/", "/app", "/a(/|$)(.*)", "/(("]),
)
def test_any_annotations_translate(
    annotations: dict[str, str], canary: dict[str, str], p: str
) -> None:
    snap = snapshot(
        ingress_class(),
        *service("web"),
        obj("Secret", "users", data={"auth": "YTp7UExBSU59Yg=="}),
        ingress("i", "foo.com", path(p, "web"), annotations=annotations, tls=[{"secretName": "t"}]),
        ingress("c", "foo.com", path(p, "web"), annotations={"canary": "true", **canary}),
    )
    config = translate_gateway(snap)
    compile_routes(config)  # regexes and ranges compile
    gateway_status(snap, ingress_addresses=("127.0.0.1",))
    for problem in config.problems:
        assert problem.object in ("default/i", "default/c")
        assert "\n" not in problem.message and problem.message


def test_a_regex_path_that_does_not_compile_is_reported() -> None:
    snap = snapshot(
        ingress_class(),
        *service("web"),
        ingress("i", "foo.com", path("/((", "web"), annotations={NGINX + "use-regex": "true"}),
    )
    compile_routes(translate_gateway(snap))


listeners = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b", "c"]),
            "port": st.sampled_from([80, 8080, 8443]),
            "protocol": st.sampled_from(["HTTP", "HTTPS", "TCP"]),
        },
        optional={
            "hostname": st.sampled_from(["foo.com", "*.foo.com", "bar.com"]),
            "tls": st.fixed_dictionaries(
                {"certificateRefs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["cert", "nope"])}, optional={"namespace": st.sampled_from(["default", "other"])}), max_size=2)},
                optional={"mode": st.sampled_from(["Terminate", "Passthrough"])},
            ),
            "allowedRoutes": st.fixed_dictionaries({"namespaces": st.fixed_dictionaries({"from": st.sampled_from(["All", "Same", "Selector"])})}),
        },
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda d: d["name"],
)  # fmt: skip
backend_refs = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["web", "ghost"])},
        optional={"port": st.sampled_from([80, 81]), "weight": st.integers(0, 3), "namespace": st.sampled_from(["default", "other"]), "kind": st.sampled_from(["Service", "Bucket"])},
    ),
    max_size=3,
)  # fmt: skip
parents = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["gw", "missing"])},
        optional={"sectionName": st.sampled_from(["a", "b", "z"]), "port": st.sampled_from([80, 8080, 8443])},
    ),
    min_size=1,
    max_size=3,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    listeners=listeners,
    parents=parents,
    hostnames=st.lists(st.sampled_from(["foo.com", "x.foo.com", "*.foo.com", "bar.com"]), max_size=2, unique=True),
    backend_refs=backend_refs,
    addresses=st.lists(st.fixed_dictionaries({"type": st.sampled_from(["IPAddress", "Hostname"]), "value": st.sampled_from(["127.0.0.5", "gw.example", "x"])}), max_size=1),
)  # fmt: skip
def test_any_gateway_and_route_translate(
    listeners: list[dict[str, object]],
    parents: list[dict[str, object]],
    hostnames: list[str],
    backend_refs: list[dict[str, object]],
    addresses: list[dict[str, object]],
) -> None:
    snap = snapshot(
        obj("GatewayClass", "mesh", "", spec={"controllerName": "mesh.dev/gateway"}),
        *service("web"),
        obj("Secret", "cert", type="kubernetes.io/tls", data=TLS_DATA),
        obj(
            "Gateway",
            "gw",
            spec={"gatewayClassName": "mesh", "listeners": listeners, "addresses": addresses},
        ),
        obj(
            "HTTPRoute",
            "r",
            spec={
                "parentRefs": parents,
                "hostnames": hostnames,
                "rules": [{"backendRefs": backend_refs}],
            },
        ),
    )
    config = translate_gateway(snap)
    compile_routes(config)
    status = gateway_status(snap, ingress_addresses=())
    gw = status.gateways[("default", "gw")]
    assert [lis.name for lis in gw.listeners] == [x["name"] for x in listeners]
    served = {
        lis.name.rsplit("/", 1)[1] for lis in config.listeners if lis.name.startswith("gateway/")
    }
    programmed = {
        str(x["port"])
        for x, st_ in zip(listeners, gw.listeners, strict=True)
        if any(c.type == "Programmed" and c.status == "True" for c in st_.conditions)
    }
    if gw.addresses:
        assert served == programmed
