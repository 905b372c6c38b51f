"""A config applied from the previous index gives the index a full build gives, and
computes the records of the changed Services only."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.dns.fast_index import FastIndex
from mesh.dns.zone import ZoneIndex

from .cases import CLUSTER


def dump(index: ZoneIndex) -> dict[str, Any]:
    """Every owner name with its records as text, in order."""
    out: dict[str, Any] = {}
    for name in index.names():
        node = index.find(name)
        assert node is not None
        rrsets = {t: [str(r) for r in rs] for t, rs in node.rrsets.items()}
        extra = [(o, t, str(r)) for o, t, r in node.additional]
        out[name] = (rrsets, node.cname, extra)
    return out


def service(rng: random.Random, i: int) -> DnsService:
    ns = rng.choice(["a", "b"])
    kind = rng.choice(["ClusterIP", "ClusterIP", "Headless", "ExternalName"])
    ports = (DnsPort(name=rng.choice(["http", None]), port=rng.choice([80, 81])),)
    if kind == "ClusterIP":
        ip = rng.choice([f"10.96.0.{i}", f"fd00::{i:x}"])
        return DnsService(namespace=ns, name=f"s{i}", kind=kind, cluster_ips=(ip,), ports=ports)
    if kind == "ExternalName":
        # outside the zone, or another Service of it (its answers follow that one)
        target = rng.choice([f"x{i}.example.", f"s{rng.randrange(40)}.{ns}.svc.cluster.local."])
        return DnsService(namespace=ns, name=f"s{i}", kind=kind, external_name=target)
    endpoints = tuple(
        # addresses shared between headless Services share reverse names
        DnsEndpoint(
            addresses=(f"10.1.0.{rng.randrange(6)}",),
            hostname=rng.choice([None, f"h{j}"]),
            ports=ports,
        )
        for j in range(rng.randrange(3))
    )
    return DnsService(namespace=ns, name=f"s{i}", kind=kind, endpoints=endpoints)


def step(rng: random.Random, services: list[DnsService]) -> int:
    """Change, add, remove or duplicate a Service; returns how many parts must be built."""
    action = rng.randrange(4)
    if action == 0 and services:
        i = rng.randrange(len(services))
        services[i] = service(rng, int(services[i].name[1:]))
        return 1
    if action == 1 and services:
        del services[rng.randrange(len(services))]
        return 0
    if action == 2 and services:
        services.insert(0, services[rng.randrange(len(services))])  # defined twice
        return 1
    services.append(service(rng, rng.randrange(40)))
    return 1


@pytest.mark.parametrize("seed", range(30))
def test_incremental_equals_full(seed: int) -> None:
    rng = random.Random(seed)
    services = [service(rng, i) for i in range(12)]
    prev = ZoneIndex.build(DnsConfig(version=1, services=tuple(services)))
    for version in range(2, 30):
        step(rng, services)
        config = DnsConfig(version=version, services=tuple(services))
        assert dump(ZoneIndex.build(config, prev)) == dump(ZoneIndex.build(config))
        prev = ZoneIndex.build(config, prev)


def test_one_changed_service_builds_one_part() -> None:
    services = [
        DnsService(namespace="a", name=f"s{i}", kind="ClusterIP", cluster_ips=(f"10.96.0.{i}",))
        for i in range(50)
    ]
    first = ZoneIndex.build(DnsConfig(version=1, services=tuple(services)))
    assert first.parts_built == 50
    services[7] = services[7].model_copy(update={"cluster_ips": ("10.96.1.7",)})
    second = ZoneIndex.build(DnsConfig(version=2, services=tuple(services)), first)
    assert second.parts_built == 1
    assert second.find("7.0.96.10.in-addr.arpa.") is None
    assert second.find("7.1.96.10.in-addr.arpa.") is not None
    # decoded from the stream: equal objects, not the same ones, are reused too
    decoded = DnsConfig.model_validate_json(
        DnsConfig(version=3, services=tuple(services)).model_dump_json()
    )
    third = ZoneIndex.build(decoded, second)
    assert third.parts_built == 0
    assert dump(third) == dump(ZoneIndex.build(decoded))


@pytest.mark.parametrize(
    "change",
    [
        {"zone": "example.local"},
        {"ttl": 30},
        {"pod_mode": "verified"},
        {"namespaces": ("new",)},
        {"pods": (DnsPod(namespace="default", name="p", ips=("10.2.0.1",)),)},
    ],
)
def test_other_changes_rebuild_exactly(change: dict[str, Any]) -> None:
    prev = ZoneIndex.build(CLUSTER)
    config = CLUSTER.model_copy(update={**change, "version": CLUSTER.version + 1})
    assert dump(ZoneIndex.build(config, prev)) == dump(ZoneIndex.build(config))


@pytest.mark.parametrize("seed", range(20))
def test_wire_index_updated_equals_wire_index_built(seed: int) -> None:
    """The wire-form index made from the previous one (changed names encoded again, the
    reverse names' SOA serial patched) holds the bytes a fresh one holds."""
    rng = random.Random(seed)
    services = [service(rng, i) for i in range(12)]
    index = ZoneIndex.build(DnsConfig(version=1, services=tuple(services)))
    fast = FastIndex(index)
    for version in range(2, 20):
        step(rng, services)
        index = ZoneIndex.build(DnsConfig(version=version, services=tuple(services)), index)
        fast = FastIndex(index, previous=fast)
        assert fast._nodes == FastIndex(index)._nodes


def test_one_changed_service_encodes_its_names_only() -> None:
    services = [
        DnsService(namespace="a", name=f"s{i}", kind="ClusterIP", cluster_ips=(f"10.96.0.{i}",))
        for i in range(50)
    ]
    first = ZoneIndex.build(DnsConfig(version=1, services=tuple(services)))
    fast = FastIndex(first)
    services[7] = services[7].model_copy(update={"cluster_ips": ("10.96.1.7",)})
    second = ZoneIndex.build(DnsConfig(version=2, services=tuple(services)), first)
    updated = FastIndex(second, previous=fast)
    # the Service's name and its new reverse name, and the zone apex (a new SOA serial)
    assert updated._rebuilt == 3
    assert updated._nodes == FastIndex(second)._nodes
    # made from another index than its own base: built in full
    assert FastIndex(second, previous=FastIndex(second))._rebuilt == len(FastIndex(second)._nodes)
