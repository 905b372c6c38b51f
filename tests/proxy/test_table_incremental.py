"""An edit rebuilds only what changed, and the table it gives is the one a full build gives.

Differential: seeded random sequences of edits (Services added, removed, changed, replaced by
equal copies, reordered; address and NodePort conflicts; both families; affinity and traffic
policies) are applied to two chains of tables, one built incrementally and one by visiting
every Service; after every step both, and a build from scratch, must agree on every lookup,
winner, conflict and describe(), and the same picks must give the same endpoints (round
robin and affinity carried alike). Then the work: an edit of one Service among 1,000 builds
one Service's Backends (counted through the ``_backends`` seam).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import table_build as table_module
from mesh.proxy.backend import Backend
from mesh.proxy.table import ServiceTable

NAMES = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "w"), ("a", "v"), ("d", "d")]
VIPS = ["127.20.0.1", "127.20.0.2", "127.20.0.3", "fd00::1", "fd00::2"]
EXTERNAL = ["127.20.0.3", "127.21.0.1", "fd00::2"]
ENDPOINTS = ["127.0.9.1", "127.0.9.2", "127.0.9.3", "fd00:9::1", "fd00:9::2"]
CLIENTS = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]


def random_service(rng: random.Random, namespace: str, name: str) -> ProxyService:
    ports = tuple(
        ProxyPort(
            name=rng.choice(["", "http", "dns"]),
            protocol=rng.choice(["TCP", "UDP"]),
            port=rng.choice([80, 443]),
            node_port=rng.choice([None, 30001, 30002]),
        )
        for _ in range(rng.randint(1, 2))
    )
    endpoints = tuple(
        ProxyEndpoint(
            address=address,
            node_name=rng.choice(["n1", "n2", None]),
            ready=rng.random() < 0.7,
            serving=rng.random() < 0.8,
            terminating=rng.random() < 0.3,
            ports={p.name: rng.choice([8080, 8081]) for p in ports if rng.random() < 0.9},
        )
        for address in rng.sample(ENDPOINTS, rng.randint(0, 4))
    )
    return ProxyService(
        namespace=namespace,
        name=name,
        type=rng.choice(["ClusterIP", "NodePort", "LoadBalancer"]),
        cluster_ips=tuple(rng.sample(VIPS, rng.randint(1, 2))),
        external_ips=tuple(rng.sample(EXTERNAL, rng.randint(0, 1))),
        load_balancer_ips=tuple(rng.sample(EXTERNAL, rng.randint(0, 1))),
        ports=ports,
        session_affinity=rng.random() < 0.4,
        affinity_timeout=rng.choice([10, 10800]),
        internal_traffic_local=rng.random() < 0.3,
        external_traffic_local=rng.random() < 0.3,
        endpoints=endpoints,
    )


def edit(rng: random.Random, services: list[ProxyService]) -> None:
    """One random edit of the config's Services, in place."""
    present = {s.key for s in services}
    roll = rng.random()
    if roll < 0.4 and services:  # a Service changes where it is
        i = rng.randrange(len(services))
        services[i] = random_service(rng, *services[i].key)
    elif roll < 0.6 and len(present) < len(NAMES):  # one comes
        key = rng.choice([k for k in NAMES if k not in present])
        services.insert(rng.randint(0, len(services)), random_service(rng, *key))
    elif roll < 0.75 and services:  # one goes
        del services[rng.randrange(len(services))]
    elif roll < 0.85 and services:  # an equal record, not the same object (a decoded snapshot)
        i = rng.randrange(len(services))
        services[i] = services[i].model_copy(deep=True)
    elif roll < 0.9:
        rng.shuffle(services)
    # else: nothing changes (a config with the same records)


def without_state(description: dict[str, Any]) -> dict[str, Any]:
    backends = [{k: v for k, v in b.items() if k != "affinities"} for b in description["backends"]]
    return {**description, "backends": backends}


def keyed_backends(table: ServiceTable) -> Iterator[tuple[str, Backend]]:
    for (ip, port, proto), b in sorted(table.vips.items()):
        yield f"{ip}:{port}/{proto}", b
    for (port, proto, family), b in sorted(table.node_ports.items()):
        yield f"node {port}/{proto}/{family}", b


def assert_same_tables(inc: ServiceTable, full: ServiceTable, config: ProxyConfig) -> None:
    fresh = ServiceTable.build(config)
    assert inc.describe() == full.describe()
    assert without_state(inc.describe()) == without_state(fresh.describe())
    assert inc.conflicts == fresh.conflicts
    for (name, a), (other, _), (third, c) in zip(
        keyed_backends(inc), keyed_backends(full), keyed_backends(fresh), strict=True
    ):
        assert name == other == third
        assert (a.service, a.endpoints, a.affinity_timeout) == (
            c.service,
            c.endpoints,
            c.affinity_timeout,
        )
    # The internal and external Backends are shared exactly where a full build shares them.
    inc_ids = {id(b) for _, b in keyed_backends(inc)}
    full_ids = {id(b) for _, b in keyed_backends(full)}
    assert len(inc_ids) == len(full_ids)


def assert_changes_named(before: ServiceTable, after: ServiceTable) -> None:
    """Every key whose Backend is not the very same object is named as changed."""
    assert after.changed_vips is not None and after.changed_node_ports is not None
    for k in before.vips.keys() | after.vips.keys():
        if before.vips.get(k) is not after.vips.get(k):
            assert k in after.changed_vips
    for n in before.node_ports.keys() | after.node_ports.keys():
        if before.node_ports.get(n) is not after.node_ports.get(n):
            assert n in after.changed_node_ports


def pick_both(rng: random.Random, inc: ServiceTable, full: ServiceTable, now: float) -> None:
    for (_, a), (_, b) in zip(keyed_backends(inc), keyed_backends(full), strict=True):
        for _ in range(rng.randint(0, 3)):
            client = rng.choice(CLIENTS)
            assert a.pick(client, now) == b.pick(client, now)


@pytest.mark.parametrize("seed", range(60))
def test_incremental_builds_equal_full_builds(seed: int) -> None:
    rng = random.Random(seed)
    services: list[ProxyService] = []
    node = "n1"
    config = ProxyConfig(version=0, node_name=node)
    inc = full = ServiceTable.build(config)
    for step in range(1, 40):
        edit(rng, services)
        if rng.random() < 0.05:
            node = "n2" if node == "n1" else "n1"  # every Local Service is recomputed
        config = ProxyConfig(version=step, node_name=node, services=tuple(services))
        before = inc
        inc = ServiceTable.build(config, inc)
        full = ServiceTable.build(config, full, incremental=False)
        assert_same_tables(inc, full, config)
        if before._node_name == node:
            assert_changes_named(before, inc)
        pick_both(rng, inc, full, now=step * 4.0)


# --- takeovers, explicitly ---------------------------------------------------------------


def svc(name: str, vip: str, endpoint: str, node_port: int | None = None) -> ProxyService:
    return ProxyService(
        namespace="default",
        name=name,
        type="NodePort" if node_port else "ClusterIP",
        cluster_ips=(vip,),
        ports=(ProxyPort(port=80, node_port=node_port),),
        endpoints=(ProxyEndpoint(address=endpoint, ports={"": 8080}),),
    )


def owners(table: ServiceTable) -> tuple[str | None, str | None, tuple[str, ...]]:
    vip = table.lookup("127.20.0.1", 80, "TCP")
    node = table.lookup_node_port(30001, "TCP")
    return (
        vip.service.name if vip is not None else None,
        node.service.name if node is not None else None,
        table.conflicts,
    )


def test_the_next_claimant_takes_over_when_the_winner_goes_or_changes() -> None:
    a = svc("a", "127.20.0.1", "127.0.9.1", 30001)
    b = svc("b", "127.20.0.1", "127.0.9.2", 30001)
    c = svc("c", "127.20.0.1", "127.0.9.3")
    steps: list[tuple[tuple[ProxyService, ...], tuple[str | None, str | None, tuple[str, ...]]]] = [
        (
            (c, b, a),
            (
                "a",
                "a",
                (
                    "127.20.0.1:80/TCP (default/b)",
                    "nodePort 30001/TCP (default/b)",
                    "127.20.0.1:80/TCP (default/c)",
                ),
            ),
        ),
        ((c, b), ("b", "b", ("127.20.0.1:80/TCP (default/c)",))),  # a goes: b takes both
        ((c, b, svc("a", "127.20.0.9", "127.0.9.1")), ("b", "b", ("127.20.0.1:80/TCP (default/c)",))),
        ((c, svc("b", "127.20.0.9", "127.0.9.2", 30001)), ("c", "b", ())),  # c takes the address
        ((c, svc("b", "127.20.0.1", "127.0.9.2")), ("b", None, ("127.20.0.1:80/TCP (default/c)",))),
        ((c,), ("c", None, ())),
        ((a, c), ("a", "a", ("127.20.0.1:80/TCP (default/c)",))),  # a comes back and wins
    ]  # fmt: skip
    table = ServiceTable.build(ProxyConfig())
    for services, expected in steps:
        table = ServiceTable.build(ProxyConfig(services=services), table)
        assert owners(table) == expected
        assert table.describe() == ServiceTable.build(ProxyConfig(services=services)).describe()


def test_a_service_claiming_one_node_port_twice_conflicts_with_itself() -> None:
    twice = ProxyService(
        namespace="default",
        name="twice",
        type="NodePort",
        cluster_ips=("127.20.0.1",),
        ports=(ProxyPort(name="a", port=80, node_port=30001), ProxyPort(name="b", port=81, node_port=30001)),
        endpoints=(ProxyEndpoint(address="127.0.9.1", ports={"a": 8080, "b": 8081}),),
    )  # fmt: skip
    table = ServiceTable.build(ProxyConfig(services=(svc("other", "127.20.0.2", "127.0.9.2"),)))
    table = ServiceTable.build(ProxyConfig(services=(twice, *table._services)), table)
    assert table.conflicts == ("nodePort 30001/TCP (default/twice)",)
    node = table.lookup_node_port(30001, "TCP")
    assert node is not None and node.service.port == "a"
    table = ServiceTable.build(ProxyConfig(services=table._services[1:]), table)
    assert (table.conflicts, table.lookup_node_port(30001, "TCP")) == ((), None)


# --- the work done per edit ----------------------------------------------------------------


def numbered(i: int, endpoints: int = 3) -> ProxyService:
    return ProxyService(
        namespace="bench",
        name=f"svc-{i}",
        cluster_ips=(f"10.96.{i >> 8}.{i & 255}",),
        ports=(ProxyPort(name="http", port=80),),
        endpoints=tuple(
            ProxyEndpoint(address=f"10.1.{i >> 8}.{(i & 255)}", ports={"http": 8080 + k})
            for k in range(endpoints)
        ),
    )


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Services whose Backends were built, through the module's seam."""
    made: list[str] = []
    real = table_module._backends

    def counting(service: ProxyService, node_name: str) -> Any:
        made.append(service.name)
        return real(service, node_name)

    monkeypatch.setattr(table_module, "_backends", counting)
    return made


def test_an_edit_of_one_service_among_1000_builds_one(builds: list[str]) -> None:
    services = [numbered(i) for i in range(1000)]
    first = ServiceTable.build(ProxyConfig(version=1, services=tuple(services)))
    assert len(builds) == 1000
    builds.clear()
    services[500] = numbered(500, endpoints=2)
    second = ServiceTable.build(ProxyConfig(version=2, services=tuple(services)), first)
    assert builds == ["svc-500"]
    assert second.changed_vips == frozenset({("10.96.1.244", 80, "TCP")})
    assert second.lookup("10.96.0.1", 80, "TCP") is first.lookup("10.96.0.1", 80, "TCP")
    assert first.lookup("10.96.1.244", 80, "TCP") is not second.lookup("10.96.1.244", 80, "TCP")
    # The previous table is left as it was.
    old = first.lookup("10.96.1.244", 80, "TCP")
    assert old is not None and len(old.endpoints) == 3
    builds.clear()
    # A removal and an addition build at most the one that came.
    del services[10]
    services.insert(700, numbered(1000))
    third = ServiceTable.build(ProxyConfig(version=3, services=tuple(services)), second)
    assert builds == ["svc-1000"]
    assert third.lookup("10.96.0.10", 80, "TCP") is None
    builds.clear()
    # Equal records that are not the same objects (a config decoded whole) build nothing.
    copies = tuple(s.model_copy() for s in services)
    fourth = ServiceTable.build(ProxyConfig(version=4, services=copies), third)
    assert builds == []
    assert fourth.describe() == {**third.describe(), "version": 4}
