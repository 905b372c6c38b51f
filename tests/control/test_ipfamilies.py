"""ipFamilyPolicy / ipFamilies defaulting and clusterIP allocation per family, as the API
server does it (table: cluster ranges, Service spec -> stored policy, families, addresses)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mesh.control.ipam import ServiceAllocator
from mesh.control.store import Rejected, Store
from mesh.objects import Service

V4 = "127.10.0.0/16"
V6 = "fd00:10::/112"
SINGLE4 = [V4]
SINGLE6 = [V6]
DUAL4 = [V4, V6]  # IPv4 primary
DUAL6 = [V6, V4]  # IPv6 primary
SELECTOR = {"app": "web"}


def _svc(name: str = "web", **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    return Service.model_validate(
        {"metadata": {"name": name, "namespace": "default"}, "spec": spec}
    )


def _store(ranges: list[str]) -> Store:
    alloc = ServiceAllocator(ranges)
    store = Store(admit=alloc.admit)
    alloc.lookup = store.get
    return store


def _apply(store: Store, **spec: Any) -> Service:
    out = store.apply(_svc(**spec))
    assert isinstance(out, Service)
    return out


# (id, cluster ranges, spec, expected policy, expected families)
ACCEPTED: list[tuple[str, list[str], dict[str, Any], str, tuple[str, ...]]] = [
    ("default single v4", SINGLE4, {}, "SingleStack", ("IPv4",)),
    ("default single v6", SINGLE6, {}, "SingleStack", ("IPv6",)),
    ("default on dual is primary only", DUAL4, {}, "SingleStack", ("IPv4",)),
    ("default on v6-primary dual", DUAL6, {}, "SingleStack", ("IPv6",)),
    ("prefer on single stays single", SINGLE4, {"ipFamilyPolicy": "PreferDualStack"},
     "PreferDualStack", ("IPv4",)),
    ("prefer on dual gets both, primary first", DUAL4, {"ipFamilyPolicy": "PreferDualStack"},
     "PreferDualStack", ("IPv4", "IPv6")),
    ("prefer on v6-primary dual", DUAL6, {"ipFamilyPolicy": "PreferDualStack"},
     "PreferDualStack", ("IPv6", "IPv4")),
    ("require on dual", DUAL4, {"ipFamilyPolicy": "RequireDualStack"},
     "RequireDualStack", ("IPv4", "IPv6")),
    ("require with v6 first", DUAL4,
     {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]},
     "RequireDualStack", ("IPv6", "IPv4")),
    ("single v6 on v4-primary dual", DUAL4, {"ipFamilies": ["IPv6"]}, "SingleStack", ("IPv6",)),
    ("two families given, prefer", DUAL4,
     {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]},
     "PreferDualStack", ("IPv6", "IPv4")),
    ("families follow a requested clusterIP", DUAL4, {"clusterIP": "fd00:10::53"},
     "SingleStack", ("IPv6",)),
    ("two clusterIPs with prefer", DUAL4,
     {"clusterIPs": ["127.10.0.53", "fd00:10::53"], "ipFamilyPolicy": "PreferDualStack"},
     "PreferDualStack", ("IPv4", "IPv6")),
    ("headless with selector follows the cluster", DUAL4,
     {"clusterIP": "None", "selector": SELECTOR}, "SingleStack", ("IPv4",)),
    ("headless with selector, prefer", DUAL4,
     {"clusterIP": "None", "selector": SELECTOR, "ipFamilyPolicy": "PreferDualStack"},
     "PreferDualStack", ("IPv4", "IPv6")),
    ("headless selectorless defaults to require, both", SINGLE4, {"clusterIP": "None"},
     "RequireDualStack", ("IPv4", "IPv6")),
    ("headless selectorless on v6 single", SINGLE6, {"clusterIP": "None"},
     "RequireDualStack", ("IPv6", "IPv4")),
    ("headless selectorless single", DUAL4,
     {"clusterIP": "None", "ipFamilyPolicy": "SingleStack"}, "SingleStack", ("IPv4",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ranges", "spec", "policy", "families"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted(
    ranges: list[str], spec: dict[str, Any], policy: str, families: tuple[str, ...]
) -> None:
    out = _apply(_store(ranges), **spec)
    assert out.spec.ip_family_policy == policy
    assert out.spec.ip_families == families
    if out.spec.headless:
        assert out.spec.cluster_ips == ("None",)
        return
    nets = {net.version: net for net in map(ipaddress.ip_network, ranges)}
    assert len(out.spec.cluster_ips) == len(families)
    for ip, family in zip(out.spec.cluster_ips, families, strict=True):
        addr = ipaddress.ip_address(ip)
        assert f"IPv{addr.version}" == family and addr in nets[addr.version]
    assert out.spec.cluster_ip == out.spec.cluster_ips[0]


# (id, cluster ranges, spec, the reason the API server gives)
REFUSED: list[tuple[str, list[str], dict[str, Any], str]] = [
    ("require on single stack", SINGLE4, {"ipFamilyPolicy": "RequireDualStack"},
     'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
     "this cluster is not configured for dual-stack services"),
    ("require headless with selector on single stack", SINGLE4,
     {"clusterIP": "None", "selector": SELECTOR, "ipFamilyPolicy": "RequireDualStack"},
     "this cluster is not configured for dual-stack services"),
    ("family without a range", SINGLE4, {"ipFamilies": ["IPv6"]},
     'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster'),
    ("clusterIP without a range", SINGLE4, {"clusterIP": "fd00:10::1"},
     "spec.clusterIPs[0]: Invalid value: \"fd00:10::1\": IPv6 is not configured on this cluster"),
    ("single with two families", DUAL4,
     {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]},
     "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"),
    ("single with two clusterIPs", DUAL4,
     {"ipFamilyPolicy": "SingleStack", "clusterIPs": ["127.10.0.5", "fd00:10::5"]},
     "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"),
    ("duplicate family", DUAL4,
     {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv4"]},
     "at most one entry per IP family"),
    ("family does not match clusterIP", DUAL4,
     {"clusterIP": "127.10.0.5", "ipFamilies": ["IPv6"]},
     "spec.ipFamilies[0]: Invalid value: \"IPv6\": must match the family of clusterIPs[0]"),
    ("clusterIP outside the range", DUAL4,
     {"clusterIPs": ["127.10.0.5", "fd00:99::5"], "ipFamilyPolicy": "RequireDualStack"},
     "not in the valid range"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ranges", "spec", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused(ranges: list[str], spec: dict[str, Any], reason: str) -> None:
    store = _store(ranges)
    with pytest.raises(Rejected) as info:
        store.apply(_svc(**spec))
    assert reason in str(info.value)
    assert store.get("Service", "default", "web") is None


def test_reapply_keeps_addresses_and_policy() -> None:
    store = _store(DUAL4)
    first = _apply(store, ipFamilyPolicy="RequireDualStack")
    again = _apply(store)  # the manifest again, without policy or addresses
    assert again.spec.cluster_ips == first.spec.cluster_ips
    assert again.spec.ip_family_policy == "RequireDualStack"


def test_single_stack_releases_the_secondary_address() -> None:
    store = _store(DUAL4)
    dual = _apply(store, ipFamilyPolicy="PreferDualStack")
    single = _apply(store, ipFamilyPolicy="SingleStack")
    assert single.spec.cluster_ips == dual.spec.cluster_ips[:1]
    assert single.spec.ip_families == ("IPv4",)
    # The released IPv6 address is free for another Service asking for it.
    other = _apply(store, name="other", clusterIP=dual.spec.cluster_ips[1])
    assert other.spec.cluster_ips == (dual.spec.cluster_ips[1],)


def test_prefer_dual_stack_is_not_upgraded_when_the_cluster_becomes_dual() -> None:
    single = _store(SINGLE4)
    before = _apply(single, ipFamilyPolicy="PreferDualStack")
    dual_alloc = ServiceAllocator(DUAL4)
    after = dual_alloc.admit(_svc(ipFamilyPolicy="PreferDualStack"), before)
    assert isinstance(after, Service)
    assert after.spec.cluster_ips == before.spec.cluster_ips
    # Asking for it explicitly upgrades: RequireDualStack adds the IPv6 address.
    up = dual_alloc.admit(_svc(ipFamilyPolicy="RequireDualStack"), before)
    assert isinstance(up, Service) and up.spec.ip_families == ("IPv4", "IPv6")
    assert up.spec.cluster_ips[0] == before.spec.cluster_ips[0]


def test_each_family_allocated_from_its_own_range_without_collisions() -> None:
    store = _store(["127.10.0.0/29", "fd00:10::/125"])  # 6 and 7 usable addresses
    seen: set[str] = set()
    for i in range(6):
        out = _apply(store, name=f"s{i}", ipFamilyPolicy="RequireDualStack")
        seen.update(out.spec.cluster_ips)
    assert len(seen) == 12
    with pytest.raises(Rejected, match=r"no free address left in service range 127\.10\.0\.0/29"):
        store.apply(_svc("full", ipFamilyPolicy="RequireDualStack"))
