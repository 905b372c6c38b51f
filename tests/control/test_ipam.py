"""ClusterIP and NodePort allocation at admission."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mesh.control.ipam import ServiceAllocator, parse_cidrs
from mesh.control.store import Rejected, Store
from mesh.objects import Pod, Service


def svc(name: str, ns: str = "default", **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    return Service.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": spec})


def store_with(alloc: ServiceAllocator) -> Store:
    store = Store(admit=alloc.admit)
    alloc.lookup = store.get
    return store


def stored_svc(store: Store, name: str, ns: str = "default") -> Service:
    obj = store.get("Service", ns, name)
    assert isinstance(obj, Service)
    return obj


def test_allocates_from_range_and_writes_it_into_the_service() -> None:
    store = store_with(ServiceAllocator("127.10.0.0/16"))
    out = store.apply(svc("web"))
    assert isinstance(out, Service)
    ip = out.spec.cluster_ip
    assert ip is not None
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.10.0.0/16")
    assert out.spec.cluster_ips == (ip,)
    assert out.spec.ip_families == ("IPv4",)
    assert stored_svc(store, "web").to_dict()["spec"]["clusterIP"] == ip


def test_stable_across_reapply_and_restart() -> None:
    first = store_with(ServiceAllocator()).apply(svc("web", "shop"))
    store = store_with(ServiceAllocator())
    again = store.apply(svc("web", "shop"))
    assert again == first
    # Re-applying the manifest (without clusterIP) is not a change.
    assert store.apply(svc("web", "shop")) is again
    assert store.revision == 1


def test_distinct_services_get_distinct_ips_even_in_a_tiny_range() -> None:
    store = store_with(ServiceAllocator("127.10.0.0/29"))  # 6 usable addresses
    ips = set()
    for i in range(6):
        out = store.apply(svc(f"s{i}"))
        assert isinstance(out, Service)
        ips.add(out.spec.cluster_ip)
    assert len(ips) == 6
    assert "127.10.0.0" not in ips and "127.10.0.7" not in ips
    with pytest.raises(Rejected, match="no free address"):
        store.apply(svc("one-too-many"))


def test_deleted_service_frees_its_ip() -> None:
    store = store_with(ServiceAllocator("127.10.0.0/30"))  # 2 usable
    store.apply(svc("a"))
    store.apply(svc("b"))
    with pytest.raises(Rejected):
        store.apply(svc("c"))
    store.delete("Service", "default", "a")
    assert store.apply(svc("c")) is not None


def test_requested_ip_honoured_checked_and_exclusive() -> None:
    store = store_with(ServiceAllocator())
    out = store.apply(svc("dns", clusterIP="127.10.0.10"))
    assert isinstance(out, Service) and out.spec.cluster_ip == "127.10.0.10"
    with pytest.raises(Rejected, match="already allocated to Service default/dns"):
        store.apply(svc("other", clusterIP="127.10.0.10"))
    with pytest.raises(Rejected, match="not in the valid range"):
        store.apply(svc("far", clusterIP="10.96.0.1"))
    with pytest.raises(Rejected, match="IPv6 is not configured on this cluster"):
        store.apply(svc("six", clusterIP="fd00::1"))


def test_external_name_is_left_alone() -> None:
    store = store_with(ServiceAllocator())
    s = svc("x", type="ExternalName", externalName="example.org", ports=[])
    assert store.apply(s) == s.with_resource_version("1", generation=1)


def test_headless_gets_no_ip_but_families() -> None:
    out = store_with(ServiceAllocator()).apply(svc("x", clusterIP="None", selector={"a": "b"}))
    assert isinstance(out, Service)
    assert out.spec.cluster_ips == ("None",)
    assert (out.spec.ip_family_policy, out.spec.ip_families) == ("SingleStack", ("IPv4",))


def test_ipv6_only_when_a_range_is_given() -> None:
    alloc = ServiceAllocator(["127.10.0.0/16", "fd00:10::/112"])
    store = store_with(alloc)
    v4 = store.apply(svc("a"))
    assert isinstance(v4, Service) and v4.spec.ip_families == ("IPv4",)
    dual = store.apply(svc("b", ipFamilyPolicy="PreferDualStack"))
    assert isinstance(dual, Service) and dual.spec.ip_families == ("IPv4", "IPv6")
    six = store.apply(svc("c", ipFamilies=["IPv6"]))
    assert isinstance(six, Service) and six.spec.cluster_ip is not None
    assert ":" in six.spec.cluster_ip
    with pytest.raises(Rejected, match="RequireDualStack"):
        store_with(ServiceAllocator()).apply(svc("d", ipFamilyPolicy="RequireDualStack"))


def test_node_ports_allocated_shared_per_port_number_and_stable() -> None:
    spec: dict[str, Any] = {
        "type": "NodePort",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "http", "port": 80},
        ],
    }
    out = store_with(ServiceAllocator()).apply(svc("np", **spec))
    assert isinstance(out, Service)
    ports = {p.name: p.node_port for p in out.spec.ports}
    assert all(p is not None and 30000 <= p <= 32767 for p in ports.values())
    assert ports["dns"] == ports["dns-tcp"] != ports["http"]
    again = store_with(ServiceAllocator()).apply(svc("np", **spec))
    assert again == out


def test_node_port_requested_and_checked() -> None:
    store = store_with(ServiceAllocator())
    out = store.apply(svc("a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert isinstance(out, Service) and out.spec.ports[0].node_port == 30080
    with pytest.raises(Rejected, match="already allocated"):
        store.apply(svc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    with pytest.raises(Rejected, match="30000-32767"):
        store.apply(svc("c", type="NodePort", ports=[{"port": 80, "nodePort": 8080}]))


def test_clusterip_service_gets_no_node_port() -> None:
    out = store_with(ServiceAllocator()).apply(svc("a"))
    assert isinstance(out, Service) and out.spec.ports[0].node_port is None


def test_other_kinds_pass_through() -> None:
    pod = Pod.model_validate({"metadata": {"name": "p"}})
    assert ServiceAllocator().admit(pod, None) is pod


@pytest.mark.parametrize("bad", [[], ["10.0.0.0/8", "11.0.0.0/8"], ["10.0.0.0/31"]])
def test_bad_ranges(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="range"):
        parse_cidrs(bad)
