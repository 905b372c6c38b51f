"""The store's write path and the endpoints controller's builds against their plain forms.

A store write stamps resourceVersion and generation into a copy of the object; admission
copies a Service with its allocations; the controller builds Endpoints and slices from values
checked already. Each of those skips pydantic's generic machinery, so each is compared here,
model by model, with what validation or ``model_copy`` makes: the same class, fields (in the
same order), fields-set, and no extras."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mesh.control.endpoints import desired_for, pod_endpoint, slices_for_pods
from mesh.control.ipam import ServiceAllocator, _ipv4_text, _ipv6_text, _with_allocations
from mesh.control.ipfamilies import Families, _decide, decide
from mesh.control.store import Rejected, Store
from mesh.objects import (
    Endpoint,
    EndpointConditions,
    EndpointSlice,
    KubeObject,
    ObjectMeta,
    ObjectReference,
    OwnerReference,
    Pod,
    Service,
    share_fields_sets,
)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` hold the same models, field by field (fields-sets and order too)."""
    assert type(a) is type(b), where
    if isinstance(a, BaseModel):
        assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__, where
        assert a.__pydantic_extra__ == b.__pydantic_extra__, where
        assert a.__pydantic_private__ == b.__pydantic_private__, where
        assert list(a.__dict__) == list(b.__dict__), where
        for name, value in a.__dict__.items():
            assert_same(value, b.__dict__[name], f"{where}.{name}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def validated(value: Any) -> Any:
    """The same models made again by validation, from the fields each one was given."""
    if isinstance(value, BaseModel):
        given_ = {n: validated(value.__dict__[n]) for n in value.__pydantic_fields_set__}
        return value.__class__(**given_)
    if isinstance(value, tuple):
        return tuple(validated(v) for v in value)
    return value


# --- Services and Pods ------------------------------------------------------------------

SELECTORS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)  # fmt: skip
PORTS = st.lists(
    st.fixed_dictionaries(
        {"port": st.integers(1, 65535)},
        optional={
            "targetPort": st.one_of(st.integers(1, 65535), st.sampled_from(["web", "dns"])),
            "protocol": st.just("UDP"),
            "appProtocol": st.just("http"),
        },
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda p: (p["port"], p.get("protocol")),
)


def make_service(
    name: str, selector: dict[str, str], ports: list[dict[str, Any]], headless: bool
) -> Service:
    ports = [{**p, "name": f"p{i}"} for i, p in enumerate(ports)]
    spec: dict[str, Any] = {"selector": selector, "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
    meta = {"name": name, "namespace": "shop", "labels": {"team": "a"}}
    return Service.model_validate({"metadata": meta, "spec": spec})


def make_pod(
    name: str, labels: dict[str, str], ips: list[str], extra: dict[str, Any], ready: bool
) -> Pod:
    status: dict[str, Any] = {"phase": "Running", "podIPs": [{"ip": i} for i in ips]}
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    container = {"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}
    spec = {"containers": [container], **extra}
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels}
    if extra.get("nodeName") == "gone":
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return Pod.model_validate({"metadata": meta, "spec": spec, "status": status})


def former_endpoint(svc: Service, pod: Pod, ip: str) -> Endpoint:
    """The controller's former construction of an Endpoint (validated), kept as the oracle."""
    serving, terminating = pod.ready, pod.terminating
    spec = pod.spec
    hostname = spec.hostname if spec.hostname and spec.subdomain == svc.name else None
    return Endpoint(
        addresses=(ip,),
        conditions=EndpointConditions(
            ready=serving and not terminating, serving=serving, terminating=terminating
        ),
        hostname=hostname,
        node_name=spec.node_name,
        zone=None,
        target_ref=ObjectReference(
            kind="Pod", namespace=pod.namespace, name=pod.name, uid=pod.metadata.uid
        ),
    )


def former_slice(svc: Service, es: EndpointSlice, pods: dict[str, Pod]) -> EndpointSlice:
    """The former construction of ``es`` (same name, labels and ports, which the unchanged
    code computes), with Endpoints made the former way."""
    endpoints = []
    for ep in es.endpoints:
        assert ep.target_ref is not None
        endpoints.append(former_endpoint(svc, pods[ep.target_ref.name], ep.addresses[0]))
    meta = ObjectMeta(
        name=es.metadata.name,
        namespace=svc.namespace,
        labels=dict(es.metadata.labels),
        owner_references=(
            OwnerReference(api_version="v1", kind="Service", name=svc.name, uid=svc.metadata.uid),
        ),
    )
    return EndpointSlice(
        api_version=EndpointSlice.API_VERSIONS[0],
        kind=EndpointSlice.KIND,
        metadata=meta,
        address_type=es.address_type,
        endpoints=tuple(endpoints),
        ports=es.ports,
    )


SERVICES = st.builds(make_service, st.sampled_from(["web", "db"]), SELECTORS, PORTS, st.booleans())
PODS = st.lists(
    st.builds(
        make_pod,
        st.sampled_from(["p", "q", "r"]),
        SELECTORS,
        st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]), max_size=2, unique=True),
        st.fixed_dictionaries(
            {},
            optional={
                "hostname": st.just("h"),
                "subdomain": st.sampled_from(["web", "db"]),
                "nodeName": st.sampled_from(["n1", "gone"]),
            },
        ),
        st.booleans(),
    ),
    max_size=5,
    unique_by=lambda p: p.metadata.name,
)


@settings(max_examples=150, deadline=None)
@given(SERVICES, PODS)
def test_built_slices_equal_validated_ones(svc: Service, pods: list[Pod]) -> None:
    store = Store()
    stored = store.apply(svc)
    for pod in pods:
        store.apply(pod)
    assert isinstance(stored, Service)
    built = desired_for(store.snapshot(), (stored.namespace, stored.name))
    assert_same(built, validated(built))
    by_name = {p.name: p for p in pods}
    assert_same(built, [former_slice(stored, es, by_name) for es in built])
    assert_same(slices_for_pods(stored, pods), built)
    for es in built:
        assert EndpointSlice.model_validate(es.to_dict()) == es
    for pod in pods:
        for ip in pod.ips:
            endpoint = pod_endpoint(stored, pod, ip)
            assert_same(endpoint, former_endpoint(stored, pod, ip))


@pytest.mark.parametrize("ips", [[], ["10.0.0.1"], ["10.0.0.1", "fd00::1"]])
def test_pod_ips_in_order(ips: list[str]) -> None:
    pod = make_pod("p", {}, ips, {}, True)
    assert pod.ips == tuple(ips) == tuple(p.ip for p in pod.status.pod_ips)


# --- resourceVersion and generation -------------------------------------------------------


def test_a_write_stamps_version_and_generation_into_a_copy() -> None:
    store = Store()
    pods = [make_pod(n, {"app": "x"}, ["10.0.0.1"], {}, True) for n in ("p", "q")]
    given_sets = [set(p.metadata.__pydantic_fields_set__) for p in pods]
    stored = [store.apply(p) for p in pods]
    for i, (pod, out) in enumerate(zip(pods, stored, strict=True)):
        assert (out.metadata.resource_version, out.metadata.generation) == (str(i + 1), 1)
        assert (pod.metadata.resource_version, pod.metadata.generation) == ("", 0)
        want = pod.model_copy(
            update={
                "metadata": pod.metadata.model_copy(
                    update={"resource_version": str(i + 1), "generation": 1}
                )
            }
        )
        assert_same(out, want)
        assert out.metadata.__pydantic_fields_set__ == given_sets[i] | {
            "resource_version",
            "generation",
        }
    # Stored objects of one shape share their stamped metadata's fields-set, the very one
    # the sharing gives a model that has an equal set of its own.
    shared = stored[0].metadata.__pydantic_fields_set__
    assert stored[1].metadata.__pydantic_fields_set__ is shared
    own = stored[0].metadata.model_copy()
    assert own.__pydantic_fields_set__ is not shared
    share_fields_sets(own)
    assert own.__pydantic_fields_set__ is shared


@pytest.mark.parametrize(
    ("version", "generation"), [("7", None), ("7", 3), ("", None), ("", 0), ("", 3)]
)
def test_with_resource_version_equals_model_copy(version: str, generation: int | None) -> None:
    for shared in (False, True):
        pod = make_pod("p", {"app": "x"}, ["10.0.0.1"], {}, True)
        pod = pod.model_copy(update={"metadata": pod.metadata.model_copy(update={"generation": 3})})
        if shared:
            share_fields_sets(pod)
        # The former form: each of the two fields copied in when it differs, else no copy.
        update: dict[str, Any] = {}
        if generation is not None and generation != pod.metadata.generation:
            update["generation"] = generation
        if version != pod.metadata.resource_version:
            update["resource_version"] = version
        out = pod.with_resource_version(version, generation)
        if not update:
            assert out is pod
            continue
        want = pod.model_copy(update={"metadata": pod.metadata.model_copy(update=update)})
        assert_same(out, want)


def test_an_update_bumps_generation_on_a_spec_change_only() -> None:
    store = Store()
    store.apply(make_service("web", {"app": "x"}, [{"port": 80}], False))
    same = store.apply(make_service("web", {"app": "x"}, [{"port": 80}], False))
    assert (same.metadata.resource_version, same.metadata.generation) == ("1", 1)
    changed = store.apply(make_service("web", {"app": "y"}, [{"port": 80}], False))
    assert (changed.metadata.resource_version, changed.metadata.generation) == ("2", 2)


# --- admission ---------------------------------------------------------------------------

CLUSTERS = st.sampled_from([("IPv4",), ("IPv6",), ("IPv4", "IPv6"), ("IPv6", "IPv4")])
SPECS = st.fixed_dictionaries(
    {"ports": st.just([{"port": 80}])},
    optional={
        "clusterIP": st.sampled_from(["None", "127.10.0.9", "fd00:10::9"]),
        "clusterIPs": st.sampled_from([["127.10.0.9", "fd00:10::9"], ["fd00:10::9"]]),
        "ipFamilies": st.sampled_from([["IPv4"], ["IPv6"], ["IPv6", "IPv4"], ["IPv4", "IPv4"]]),
        "ipFamilyPolicy": st.sampled_from(["SingleStack", "PreferDualStack", "RequireDualStack"]),
        "selector": st.just({"app": "x"}),
        "type": st.sampled_from(["ClusterIP", "NodePort"]),
    },
)


def decision(cluster: tuple[Any, ...], svc: Service, rules: bool) -> Families | str:
    try:
        return (_decide if rules else decide)(svc, None, cluster)
    except Rejected as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(CLUSTERS, SPECS)
def test_families_of_a_create_follow_the_rules(cluster: tuple[Any, ...], spec: dict[str, Any]) -> None:  # fmt: skip
    try:
        svc = Service.model_validate({"metadata": {"name": "web"}, "spec": spec})
    except ValueError:
        return  # refused by validation before admission
    assert decision(cluster, svc, rules=False) == decision(cluster, svc, rules=True)


def test_allocated_addresses_are_written_as_ipaddress_writes_them() -> None:
    for value in (0, 1, 255, 256, 0x7F0A0001, 0xFFFFFFFF):
        assert _ipv4_text(value) == str(ipaddress.IPv4Address(value))
    for value in (0, 1, 0xFD00 << 112, (0xFD00 << 112) + 0x10009, (1 << 128) - 1):
        assert _ipv6_text(value) == str(ipaddress.IPv6Address(value))


@pytest.mark.parametrize("kind", ["ClusterIP", "NodePort"])
def test_allocations_are_model_copies(kind: str) -> None:
    svc = make_service("web", {"app": "x"}, [{"port": 80}, {"port": 53, "protocol": "UDP"}], False)
    svc = Service.model_validate({**svc.to_dict(), "spec": {**svc.spec.to_dict(), "type": kind}})
    alloc = ServiceAllocator(["127.10.0.0/16", "fd00:10::/112"])
    families = Families("PreferDualStack", ("IPv4", "IPv6"), ("", ""))
    ips = ["127.10.0.9", "fd00:10::9"]
    ports = {80: 30080, 53: 30053} if kind == "NodePort" else {}
    out = _with_allocations(svc, families, ips, ports)
    spec_update: dict[str, Any] = {
        "cluster_ip": ips[0],
        "cluster_ips": tuple(ips),
        "ip_families": ("IPv4", "IPv6"),
        "ip_family_policy": "PreferDualStack",
        "ports": tuple(
            p.model_copy(update={"node_port": ports[p.port]}) if p.port in ports else p
            for p in svc.spec.ports
        ),
    }
    if kind == "NodePort" and svc.spec.external_traffic_policy is None:
        spec_update["external_traffic_policy"] = "Cluster"
    want = svc.model_copy(update={"spec": svc.spec.model_copy(update=spec_update)})
    assert_same(out, want)
    stored: KubeObject = Store(admit=alloc.admit).apply(svc)
    assert isinstance(stored, Service) and stored.spec.cluster_ips
