"""The service table: eligibility, order, round robin, affinity, traffic policies, state carry."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pydantic
import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.backend import Backend, Endpoint, ServicePortName
from mesh.proxy.table import ServiceTable
from mesh.proxy.table_build import eligible

VIP = "127.10.0.1"
NODE = "node-a"


def ep(
    address: str, port: int = 8080, node: str | None = NODE, **conditions: bool
) -> ProxyEndpoint:
    return ProxyEndpoint(address=address, node_name=node, ports={"": port}, **conditions)


def svc(*endpoints: ProxyEndpoint, **kw: Any) -> ProxyService:
    kw.setdefault("cluster_ips", (VIP,))
    kw.setdefault("ports", (ProxyPort(port=80),))
    return ProxyService(namespace="default", name=kw.pop("name", "web"), endpoints=endpoints, **kw)


def table(*services: ProxyService, previous: ServiceTable | None = None) -> ServiceTable:
    return ServiceTable.build(ProxyConfig(node_name=NODE, services=services), previous)


def picks(
    backend: Backend | None, n: int, client: str = "127.0.0.1", now: float = 0.0
) -> list[Any]:
    assert backend is not None
    return [backend.pick(client, now) for _ in range(n)]


# --- eligibility ---------------------------------------------------------------------------

ELIGIBILITY = [
    # (name, endpoints, expected addresses)
    ("all ready", [ep("127.0.1.1"), ep("127.0.1.2")], ["127.0.1.1", "127.0.1.2"]),
    ("not ready dropped", [ep("127.0.1.1"), ep("127.0.1.2", ready=False)], ["127.0.1.1"]),
    (
        "ready wins over serving-terminating",
        [ep("127.0.1.1"), ep("127.0.1.2", ready=False, serving=True, terminating=True)],
        ["127.0.1.1"],
    ),
    (
        "fallback to serving-terminating",
        [
            ep("127.0.1.1", ready=False, serving=True, terminating=True),
            ep("127.0.1.2", ready=False, serving=False, terminating=True),
            ep("127.0.1.3", ready=False, serving=True, terminating=False),
        ],
        ["127.0.1.1"],
    ),
    ("none usable", [ep("127.0.1.1", ready=False, serving=False)], []),
    ("no endpoints", [], []),
]


@pytest.mark.parametrize(
    ("name", "endpoints", "want"), ELIGIBILITY, ids=[c[0] for c in ELIGIBILITY]
)
def test_eligibility(name: str, endpoints: list[ProxyEndpoint], want: list[str]) -> None:
    assert [e.address for e in eligible(endpoints)] == want
    backend = table(svc(*endpoints)).lookup(VIP, 80, "TCP")
    assert backend is not None  # a Service address is known even with nothing to pick
    assert [a for a, _ in backend.endpoints] == want
    if not want:
        assert backend.pick("127.0.0.1", 0.0) is None


def test_unknown_address_is_not_a_service() -> None:
    t = table(svc(ep("127.0.1.1")))
    assert t.lookup("127.10.0.2", 80, "TCP") is None
    assert t.lookup(VIP, 81, "TCP") is None
    assert t.lookup(VIP, 80, "UDP") is None


# --- order and round robin -----------------------------------------------------------------


def test_round_robin_in_numeric_address_order() -> None:
    t = table(svc(ep("127.0.1.10"), ep("127.0.1.2"), ep("127.0.1.2", 8079), ep("127.0.1.9")))
    want = [("127.0.1.2", 8079), ("127.0.1.2", 8080), ("127.0.1.9", 8080), ("127.0.1.10", 8080)]
    assert picks(t.lookup(VIP, 80, "TCP"), 8) == want + want


def test_duplicate_endpoints_collapse() -> None:
    t = table(svc(ep("127.0.1.1"), ep("127.0.1.1")))
    assert picks(t.lookup(VIP, 80, "TCP"), 2) == [("127.0.1.1", 8080)] * 2


def test_exclude_moves_on_and_exhausts() -> None:
    b = table(svc(ep("127.0.1.1"), ep("127.0.1.2"), ep("127.0.1.3"))).lookup(VIP, 80, "TCP")
    assert b is not None
    first = b.pick("c", 0)
    assert first == ("127.0.1.1", 8080)
    assert b.pick("c", 0, exclude={first}) == ("127.0.1.2", 8080)
    assert b.pick("c", 0, exclude=set(b.endpoints)) is None
    assert b.pick("c", 0) == ("127.0.1.3", 8080)  # the cursor kept moving


# --- session affinity ----------------------------------------------------------------------


def affine(timeout: int = 60) -> Backend:
    t = table(
        svc(ep("127.0.1.1"), ep("127.0.1.2"), session_affinity=True, affinity_timeout=timeout)
    )
    b = t.lookup(VIP, 80, "TCP")
    assert b is not None
    return b


def test_affinity_holds_per_client() -> None:
    b = affine()
    assert picks(b, 3, "127.0.0.5") == [("127.0.1.1", 8080)] * 3
    assert picks(b, 3, "127.0.0.6") == [("127.0.1.2", 8080)] * 3
    assert b.affinity("127.0.0.5", 1.0) == ("127.0.1.1", 8080)


def test_affinity_expires_when_idle_and_is_refreshed_by_use() -> None:
    b = affine(timeout=10)
    assert b.pick("c", 0.0) == ("127.0.1.1", 8080)
    assert b.pick("c", 9.0) == ("127.0.1.1", 8080)  # refreshed: expires at 19
    assert b.pick("c", 18.9) == ("127.0.1.1", 8080)  # refreshed: expires at 28.9
    assert b.affinity("c", 28.9) is None
    assert b.pick("c", 28.9) == ("127.0.1.2", 8080)  # expired: round robin again


def test_affinity_dropped_for_failed_endpoint() -> None:
    b = affine()
    first = b.pick("c", 0)
    assert first is not None
    second = b.pick("c", 0, exclude={first})
    assert second == ("127.0.1.2", 8080)
    assert b.pick("c", 1) == second


def test_affinity_table_is_swept() -> None:
    b = affine(timeout=1)
    for i in range(3000):
        b.pick(f"10.0.{i // 256}.{i % 256}", float(i))
    assert b.describe()["affinities"] <= 1024


# --- traffic policies and NodePorts --------------------------------------------------------

LOCAL, REMOTE = ep("127.0.1.1", node=NODE), ep("127.0.1.2", node="node-b")
BOTH = [("127.0.1.1", 8080), ("127.0.1.2", 8080)]
ONLY_LOCAL = [("127.0.1.1", 8080)]
EXT = "127.20.0.1"
LB = "127.30.0.1"

POLICIES = [
    # (name, internal Local, external Local, endpoints, ClusterIP picks, external picks)
    ("cluster/cluster", False, False, [LOCAL, REMOTE], BOTH, BOTH),
    ("internal local", True, False, [LOCAL, REMOTE], ONLY_LOCAL, BOTH),
    ("external local", False, True, [LOCAL, REMOTE], BOTH, ONLY_LOCAL),
    ("both local", True, True, [LOCAL, REMOTE], ONLY_LOCAL, ONLY_LOCAL),
    ("local, none local", True, True, [REMOTE], [], []),
    (
        "local falls back to local serving-terminating",
        True,
        True,
        [ep("127.0.1.1", ready=False, serving=True, terminating=True), REMOTE],
        ONLY_LOCAL,
        ONLY_LOCAL,
    ),
]


@pytest.mark.parametrize(
    ("name", "internal", "external", "endpoints", "want_cluster", "want_external"),
    POLICIES,
    ids=[c[0] for c in POLICIES],
)
def test_traffic_policy(
    name: str,
    internal: bool,
    external: bool,
    endpoints: list[ProxyEndpoint],
    want_cluster: list[Endpoint],
    want_external: list[Endpoint],
) -> None:
    s = svc(
        *endpoints,
        type="LoadBalancer",
        ports=(ProxyPort(port=80, node_port=30080),),
        external_ips=(EXT,),
        load_balancer_ips=(LB,),
        internal_traffic_local=internal,
        external_traffic_local=external,
    )
    t = table(s)
    for backend, want in (
        (t.lookup(VIP, 80, "TCP"), want_cluster),
        (t.lookup(EXT, 80, "TCP"), want_external),
        (t.lookup(LB, 80, "TCP"), want_external),
        (t.lookup_node_port(30080, "TCP"), want_external),
    ):
        assert backend is not None
        assert list(backend.endpoints) == want


def test_cluster_policy_shares_one_cursor() -> None:
    s = svc(LOCAL, REMOTE, type="NodePort", ports=(ProxyPort(port=80, node_port=30080),))
    t = table(s)
    assert t.lookup(VIP, 80, "TCP") is t.lookup_node_port(30080, "TCP")
    assert len(list(t.backends())) == 1


def test_node_ports_only_for_node_port_types() -> None:
    s = svc(LOCAL, ports=(ProxyPort(port=80, node_port=30080),))  # type ClusterIP
    assert table(s).lookup_node_port(30080, "TCP") is None


def test_route_prefers_virtual_ip_then_node_port() -> None:
    s = svc(LOCAL, type="NodePort", ports=(ProxyPort(port=80, node_port=30080),))
    t = table(s)
    assert t.route(VIP, 80, "TCP") is not None
    assert t.route("127.0.0.1", 30080, "TCP") is None
    assert t.route("127.0.0.1", 30080, "TCP", node_ips={"127.0.0.1"}) is not None
    assert t.route("127.0.0.1", 30080, "UDP", node_ips={"127.0.0.1"}) is None


# --- address families ----------------------------------------------------------------------

VIP6 = "fd00:10::1"
DUAL = (  # two dual-stack pods: one address of each family
    ep("127.0.1.1"),
    ep("fd00:1::1"),
    ep("127.0.1.2"),
    ep("fd00:1::2"),
)
FAMILY_CASES = [
    # (name, service keyword arguments, endpoints, address, family, wanted endpoint addresses)
    (
        "v4 ClusterIP: v4 endpoints",
        {"cluster_ips": (VIP, VIP6)},
        DUAL,
        VIP,
        4,
        ["127.0.1.1", "127.0.1.2"],
    ),
    (
        "v6 ClusterIP: v6 endpoints",
        {"cluster_ips": (VIP, VIP6)},
        DUAL,
        VIP6,
        6,
        ["fd00:1::1", "fd00:1::2"],
    ),
    ("v6 primary", {"cluster_ips": (VIP6, VIP)}, DUAL, VIP, 4, ["127.0.1.1", "127.0.1.2"]),
    ("v4 only, v6 endpoints only", {}, (ep("fd00:1::1"),), VIP, 4, []),
    ("v6 only, v4 endpoints only", {"cluster_ips": (VIP6,)}, (ep("127.0.1.1"),), VIP6, 6, []),
    (
        "fallback per family",
        {"cluster_ips": (VIP, VIP6)},
        (ep("127.0.1.1", ready=False, serving=True, terminating=True), ep("fd00:1::1")),
        VIP,
        4,
        ["127.0.1.1"],
    ),
    (
        "v6 external IP",
        {"cluster_ips": (VIP, VIP6), "external_ips": ("fd00:20::1",)},
        DUAL,
        "fd00:20::1",
        6,
        ["fd00:1::1", "fd00:1::2"],
    ),
]


@pytest.mark.parametrize(
    ("name", "kw", "endpoints", "address", "family", "want"),
    FAMILY_CASES,
    ids=[c[0] for c in FAMILY_CASES],
)
def test_a_virtual_address_uses_endpoints_of_its_family(
    name: str,
    kw: dict[str, Any],
    endpoints: tuple[ProxyEndpoint, ...],
    address: str,
    family: int,
    want: list[str],
) -> None:
    backend = table(svc(*endpoints, **kw)).lookup(address, 80, "TCP")
    assert backend is not None
    assert [a for a, _ in backend.endpoints] == want
    # Round robin goes through each endpoint of the family once per turn.
    got = [p[0] if p else None for p in picks(backend, 2 * len(want) or 1)]
    assert got == (want + want if want else [None])


def test_node_ports_per_family_of_the_cluster_ips() -> None:
    ports = (ProxyPort(port=80, node_port=30080),)
    dual = table(svc(*DUAL, cluster_ips=(VIP, VIP6), type="NodePort", ports=ports))
    v4, v6 = dual.lookup_node_port(30080, "TCP", 4), dual.lookup_node_port(30080, "TCP", 6)
    assert v4 is not None and v6 is not None
    assert [a for a, _ in v4.endpoints] == ["127.0.1.1", "127.0.1.2"]
    assert [a for a, _ in v6.endpoints] == ["fd00:1::1", "fd00:1::2"]
    assert dual.route("::1", 30080, "TCP", node_ips={"::1"}) is v6
    assert dual.route("127.0.0.1", 30080, "TCP", node_ips={"127.0.0.1"}) is v4
    assert v4 is dual.lookup(VIP, 80, "TCP")  # cluster policy: one cursor per family
    assert dual.describe()["node_ports"] == {
        "30080/TCP": "default/web/TCP",
        "30080/TCP/IPv6": "default/web/TCP",
    }
    single = table(svc(*DUAL, type="NodePort", ports=ports))  # an IPv4 Service
    assert single.lookup_node_port(30080, "TCP", 6) is None
    assert single.route("::1", 30080, "TCP", node_ips={"::1"}) is None


def test_family_backends_keep_their_state_apart() -> None:
    s = svc(*DUAL, cluster_ips=(VIP, VIP6))
    t1 = table(s)
    assert picks(t1.lookup(VIP, 80, "TCP"), 1) == [("127.0.1.1", 8080)]
    moved = svc(*DUAL, ep("fd00:1::3"), cluster_ips=(VIP, VIP6))  # only IPv6 changed
    t2 = table(moved, previous=t1)
    assert t2.lookup(VIP, 80, "TCP") is t1.lookup(VIP, 80, "TCP")
    assert picks(t2.lookup(VIP, 80, "TCP"), 1) == [("127.0.1.2", 8080)]
    assert picks(t2.lookup(VIP6, 80, "TCP"), 3) == [
        ("fd00:1::1", 8080),
        ("fd00:1::2", 8080),
        ("fd00:1::3", 8080),
    ]


# --- ports ---------------------------------------------------------------------------------


def test_named_target_ports_resolve_per_endpoint() -> None:
    ports = (ProxyPort(name="http", port=80), ProxyPort(name="dns", port=53, protocol="UDP"))
    endpoints = (
        ProxyEndpoint(address="127.0.1.1", ports={"http": 8080, "dns": 5353}),
        ProxyEndpoint(address="127.0.1.2", ports={"http": 9090}),  # no dns port: not for dns
    )
    t = table(svc(*endpoints, ports=ports))
    http, dns = t.lookup(VIP, 80, "TCP"), t.lookup(VIP, 53, "UDP")
    assert http is not None and dns is not None
    assert list(http.endpoints) == [("127.0.1.1", 8080), ("127.0.1.2", 9090)]
    assert list(dns.endpoints) == [("127.0.1.1", 5353)]
    assert dns.service == ServicePortName("default", "web", "dns", "UDP")
    assert str(dns.service) == "default/web:dns/UDP"


def test_same_port_tcp_and_udp_are_separate() -> None:
    ports = (ProxyPort(name="a", port=53), ProxyPort(name="b", port=53, protocol="UDP"))
    endpoints = (ProxyEndpoint(address="127.0.1.1", ports={"a": 1053, "b": 2053}),)
    t = table(svc(*endpoints, ports=ports))
    assert picks(t.lookup(VIP, 53, "TCP"), 1) == [("127.0.1.1", 1053)]
    assert picks(t.lookup(VIP, 53, "UDP"), 1) == [("127.0.1.1", 2053)]


def test_address_conflict_first_service_wins() -> None:
    a = svc(ep("127.0.1.1"), name="alpha", cluster_ips=("127.10.0.1",), external_ips=(EXT,))
    b = svc(ep("127.0.1.2"), name="beta", cluster_ips=("127.10.0.2",), external_ips=(EXT,))
    t = table(b, a)
    ext = t.lookup(EXT, 80, "TCP")
    assert ext is not None and ext.service.name == "alpha"
    assert len(t.conflicts) == 1 and "beta" in t.conflicts[0]


# --- carrying state across config swaps ----------------------------------------------------


def test_unchanged_backend_keeps_cursor_and_affinity() -> None:
    s = svc(ep("127.0.1.1"), ep("127.0.1.2"), ep("127.0.1.3"), session_affinity=True)
    t1 = table(s)
    b1 = t1.lookup(VIP, 80, "TCP")
    assert picks(b1, 1, "c1") == [("127.0.1.1", 8080)]
    other = svc(ep("127.0.2.1"), name="other", cluster_ips=("127.10.0.9",))
    t2 = table(s, other, previous=t1)
    b2 = t2.lookup(VIP, 80, "TCP")
    assert b2 is b1
    assert picks(b2, 1, "c2") == [("127.0.1.2", 8080)]
    assert picks(b2, 1, "c1") == [("127.0.1.1", 8080)]


def test_changed_backend_continues_after_last_pick() -> None:
    t1 = table(svc(ep("127.0.1.1"), ep("127.0.1.2"), ep("127.0.1.3")))
    assert picks(t1.lookup(VIP, 80, "TCP"), 2) == [("127.0.1.1", 8080), ("127.0.1.2", 8080)]
    t2 = table(svc(ep("127.0.1.1"), ep("127.0.1.3"), ep("127.0.1.4")), previous=t1)
    assert picks(t2.lookup(VIP, 80, "TCP"), 3) == [
        ("127.0.1.3", 8080),
        ("127.0.1.4", 8080),
        ("127.0.1.1", 8080),
    ]


def test_changed_backend_keeps_affinity_to_surviving_endpoints() -> None:
    s1 = svc(ep("127.0.1.1"), ep("127.0.1.2"), session_affinity=True)
    t1 = table(s1)
    b1 = t1.lookup(VIP, 80, "TCP")
    assert picks(b1, 1, "c1") + picks(b1, 1, "c2") == [("127.0.1.1", 8080), ("127.0.1.2", 8080)]
    s2 = svc(ep("127.0.1.1"), ep("127.0.1.3"), session_affinity=True)
    b2 = table(s2, previous=t1).lookup(VIP, 80, "TCP")
    assert b2 is not None and b2 is not b1
    assert b2.affinity("c1", 1) == ("127.0.1.1", 8080)
    assert b2.affinity("c2", 1) is None  # its endpoint is gone
    assert picks(b2, 1, "c2") == [("127.0.1.3", 8080)]


def test_describe_is_json_ready() -> None:
    import json

    s = svc(ep("127.0.1.1"), type="NodePort", ports=(ProxyPort(port=80, node_port=30080),))
    d = table(s).describe()
    json.dumps(d)
    assert d["vips"] == {f"{VIP}:80/TCP": "default/web/TCP"}
    assert d["node_ports"] == {"30080/TCP": "default/web/TCP"}


# --- config validation, purity ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"address": "not-an-ip"},
        {"address": "127.0.0.1", "ports": {"": 0}},
        {"address": "127.0.0.1", "ports": {"": 70000}},
    ],
)
def test_config_rejects_bad_endpoints(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ProxyEndpoint(**bad)


def test_config_round_trips_through_json() -> None:
    cfg = ProxyConfig(version=3, node_name=NODE, services=(svc(ep("127.0.1.1")),))
    assert ProxyConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize("module", ["table", "table_build", "backend"])
def test_table_is_pure(module: str) -> None:
    mod = importlib.import_module(f"mesh.proxy.{module}")
    assert mod.__file__ is not None
    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"trio", "socket", "asyncio", "os", "time"}
