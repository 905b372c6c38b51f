"""The start-up fast paths of the store and the endpoints controller against their slow forms.

The store's indexes are kept up to date one write at a time, with a shortcut for creates; a
snapshot taken after the store moved on rebuilds each index from scratch. The two must agree
after any sequence of creates, replaces and deletes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.config.dns import DnsPort
from mesh.control.endpoints import (
    _build,
    desired_for,
    eligible,
    pod_endpoint,
    pod_ports,
    selects,
    slices_for_pods,
)
from mesh.control.store import DEFAULT_INDEXES, Store
from mesh.control.translate.dns import _ports
from mesh.objects import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointSlice,
    Pod,
    Service,
)

NAMES = st.sampled_from(["a", "b", "c"])
NAMESPACES = st.sampled_from(["default", "shop"])
LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
IPS = st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]), max_size=2, unique=True)


def make_pod(name: str, ns: str, labels: dict[str, str], ips: list[str]) -> Pod:
    status: dict[str, Any] = {"podIPs": [{"ip": i} for i in ips]} if ips else {}
    meta = {"name": name, "namespace": ns, "labels": labels}
    return Pod.model_validate({"metadata": meta, "status": status})


def make_service(name: str, ns: str, selector: dict[str, str]) -> Service:
    spec = {"selector": selector, "ports": [{"port": 80}]}
    return Service.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": spec})


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pod"), NAMES, NAMESPACES, LABELS, IPS),
        st.tuples(st.just("svc"), NAMES, NAMESPACES, LABELS),
        st.tuples(
            st.just("slice"),
            NAMES,
            NAMESPACES,
            st.dictionaries(st.sampled_from([SERVICE_NAME_LABEL, "app"]), NAMES, max_size=2),
        ),
        st.tuples(
            st.just("del"), st.sampled_from(["Pod", "Service", "EndpointSlice"]), NAMES, NAMESPACES
        ),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_live_indexes_equal_indexes_built_from_scratch(ops: list[tuple[Any, ...]]) -> None:
    store = Store()
    for op in ops:
        if op[0] == "pod":
            store.apply(make_pod(op[1], op[2], op[3], op[4]))
        elif op[0] == "svc":
            store.apply(make_service(op[1], op[2], op[3]))
        elif op[0] == "slice":
            meta = {"name": op[1], "namespace": op[2], "labels": op[3]}
            store.apply(EndpointSlice.model_validate({"metadata": meta, "addressType": "IPv4"}))
        else:
            store.delete(op[1], op[3], op[2])
    snap = store.snapshot()
    for name in DEFAULT_INDEXES:
        live = {v: set(keys) for v, keys in store._index.entries[name].items()}
        rebuilt = {v: set(keys) for v, keys in snap._own_index(name).items()}
        assert live == rebuilt, name
        for value, keys in rebuilt.items():
            assert {o.key for o in store.by_index(name, value)} == keys


async def test_waiters_wake_on_the_first_write_after_they_wait() -> None:
    store = Store()
    for i in range(5):  # writes before anyone waits
        store.apply(make_pod(f"p{i}", "default", {}, []))
    woke: list[int] = []

    async def waiter(since: int) -> None:
        woke.append(await store.wait_for_change(since))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, store.revision)
        nursery.start_soon(waiter, store.revision)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        store.apply(make_pod("late", "default", {}, []))
    assert woke == [6, 6]
    # A waiter behind the store returns at once; a later one waits again.
    assert await store.wait_for_change(0) == 6
    with trio.move_on_after(0.05):
        await store.wait_for_change(6)
        raise AssertionError("woke without a write")


def test_shared_endpoint_conditions_equal_fresh_ones() -> None:
    svc = make_service("a", "default", {"app": "x"})
    for phase in ("Running", "Pending"):
        for deleting in (False, True):
            meta: dict[str, Any] = {"name": "p", "namespace": "default"}
            if deleting:
                meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
            status = {"phase": phase, "podIP": "10.0.0.1"}
            pod = Pod.model_validate({"metadata": meta, "status": status})
            serving, terminating = pod.ready, pod.terminating
            fresh = EndpointConditions(
                ready=serving and not terminating, serving=serving, terminating=terminating
            )
            assert pod_endpoint(svc, pod, "10.0.0.1").conditions == fresh


def reference_slices(svc: Service, pods: list[Pod]) -> list[EndpointSlice]:
    """The endpoints controller's plain form: every Pod checked and its ports resolved."""
    families = set(svc.spec.ip_families)
    groups: dict[Any, list[Endpoint]] = defaultdict(list)
    for pod in pods:
        if not (eligible(pod) and selects(svc, pod)):
            continue
        ports = pod_ports(svc, pod)
        for ip in pod.ips:
            family = "IPv6" if ":" in ip else "IPv4"
            if families and family not in families:
                continue
            groups[(family, ports)].append(pod_endpoint(svc, pod, ip))
    return _build(svc, groups, svc.metadata.labels)


TARGETS = st.one_of(st.sampled_from([8080, 9090]), st.sampled_from(["http", "admin"]))
POD_SPECS = st.lists(
    st.tuples(
        st.sampled_from(["x", "y"]),  # app label
        IPS,
        st.sampled_from(["Running", "Pending", "Succeeded"]),
        st.lists(st.sampled_from([("http", 8080), ("admin", 9000)]), max_size=2, unique=True),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TARGETS, min_size=1, max_size=3), POD_SPECS)
def test_slices_with_shared_ports_equal_per_pod_slices(
    targets: list[int | str], specs: list[tuple[str, list[str], str, list[tuple[str, int]]]]
) -> None:
    ports = [{"name": f"p{i}", "port": 80 + i, "targetPort": t} for i, t in enumerate(targets)]
    svc = Service.model_validate(
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "x"}, "ports": ports}}
    )
    pods = []
    for i, (app, ips, phase, named) in enumerate(specs):
        container = {"name": "c", "ports": [{"name": n, "containerPort": p} for n, p in named]}
        status: dict[str, Any] = {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]}
        meta = {"name": f"p{i}", "labels": {"app": app}}
        pods.append(
            Pod.model_validate(
                {"metadata": meta, "spec": {"containers": [container]}, "status": status}
            )
        )
    want = reference_slices(svc, pods)
    assert slices_for_pods(svc, pods) == want
    store = Store()
    for obj in (svc, *pods):
        store.apply(obj)
    assert desired_for(store.snapshot(), ("default", "web")) == want


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["http", "dns"])),
            st.sampled_from(["TCP", "UDP", "SCTP"]),
            st.one_of(st.none(), st.integers(1, 65535)),
        ),
        max_size=5,
    )
)
def test_shared_dns_ports_equal_fresh_ones(ports: list[Any]) -> None:
    fresh = tuple(
        DnsPort(name=n, protocol=p, port=port) for n, p, port in ports if port is not None
    )
    assert _ports(ports) == fresh
    assert [p.model_dump() for p in _ports(ports)] == [p.model_dump() for p in fresh]
