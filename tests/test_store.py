"""The store: resourceVersions, ordered watch events, resume, Gone."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from mesh.control.store import Gone, Rejected, Store, WatchEvent
from mesh.objects import KubeObject, Pod, Service


def pod(name: str, ns: str = "default", ip: str | None = None) -> Pod:
    status = {"podIP": ip} if ip else {}
    return Pod.model_validate({"metadata": {"name": name, "namespace": ns}, "status": status})


def svc(name: str) -> Service:
    return Service.model_validate({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})


def test_apply_assigns_increasing_resource_versions() -> None:
    store = Store()
    a = store.apply(pod("a"))
    b = store.apply(pod("b"))
    assert (a.metadata.resource_version, b.metadata.resource_version) == ("1", "2")
    assert store.revision == 2
    changed = store.apply(pod("a", ip="10.0.0.1"))
    assert changed.metadata.resource_version == "3"
    assert store.get("Pod", "default", "a") == changed


def test_noop_apply_is_not_an_event() -> None:
    store = Store()
    first = store.apply(pod("a"))
    again = store.apply(pod("a"))
    assert again is first
    assert store.revision == 1
    # A stale resourceVersion on the input does not make it a change either.
    assert store.apply(pod("a").with_resource_version("99")) is first
    assert store.revision == 1


def test_a_uid_per_object_kept_until_it_is_deleted() -> None:
    store, other = Store(), Store()
    store.apply(pod("a"))
    store.apply(svc("web"))
    a = store.uid(pod("a").key)
    assert a is not None and str(uuid.UUID(a)) == a and uuid.UUID(a).version == 4
    assert store.uid(svc("web").key) not in (None, a)
    store.apply(pod("a"))  # unchanged: not even a write
    store.apply(pod("a", ip="10.0.0.1"))  # changed: still the same object
    assert store.uid(pod("a").key) == a
    store.delete("Pod", "default", "a")
    assert store.uid(pod("a").key) is None
    store.apply(pod("a"))  # created again: a new object, a new uid
    assert store.uid(pod("a").key) not in (None, a)
    # Another store (a restarted control plane) gives its first object another uid.
    other.apply(pod("a"))
    assert other.uid(pod("a").key) not in (None, a)


def test_events_in_order_with_types() -> None:
    store = Store()
    store.apply(pod("a"))
    store.apply(pod("a", ip="10.0.0.1"))
    store.delete("Pod", "default", "a")
    assert store.delete("Pod", "default", "a") is None
    events = store.events_since(0)
    assert [(e.type, e.revision) for e in events] == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 3)]
    assert events[2].object.metadata.resource_version == "3"
    assert store.get("Pod", "default", "a") is None


def test_events_filtered_by_kind_and_resumed() -> None:
    store = Store()
    store.apply(pod("a"))
    store.apply(svc("s"))
    store.apply(pod("b"))
    assert [e.object.name for e in store.events_since(0, "Pod")] == ["a", "b"]
    assert [e.object.name for e in store.events_since(1)] == ["s", "b"]
    assert store.events_since(3) == []


def test_gone_when_compacted() -> None:
    store = Store(history=2)
    for i in range(4):
        store.apply(pod(f"p{i}"))
    with pytest.raises(Gone) as info:
        store.events_since(1)
    assert info.value.oldest == 2
    assert [e.revision for e in store.events_since(2)] == [3, 4]


def test_history_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history"):
        Store(history=0)


def test_replace_all() -> None:
    store = Store()
    store.apply(pod("a"))
    store.apply(pod("b"))
    store.apply(svc("s"))
    store.replace_all("Pod", [pod("b"), pod("c")])
    names = [o.name for o in store.list("Pod")[0]]
    assert names == ["b", "c"]
    assert store.get("Service", "default", "s") is not None
    types = [(e.type, e.object.name) for e in store.events_since(3)]
    assert types == [("DELETED", "a"), ("ADDED", "c")]


def test_snapshot_is_immutable_and_shared() -> None:
    store = Store()
    store.apply(pod("a", ns="x"))
    store.apply(pod("b", ns="y"))
    snap = store.snapshot()
    assert store.snapshot() is snap
    store.apply(pod("c", ns="x"))
    assert [o.name for o in snap.list("Pod")] == ["a", "b"]
    assert [o.name for o in store.snapshot().list("Pod", "x")] == ["a", "c"]
    assert snap.get("Pod", "y", "b") is not None
    assert snap.list("Nothing") == []


def test_admission_fills_fields_and_rejects() -> None:
    def admit(new: KubeObject, old: KubeObject | None) -> KubeObject:
        if new.name == "bad":
            raise Rejected("no")
        labels = {"seen": "yes"}
        meta = new.metadata.model_copy(update={"labels": labels})
        return new.model_copy(update={"metadata": meta})

    store = Store(admit=admit)
    stored = store.apply(pod("a"))
    assert stored.metadata.labels == {"seen": "yes"}
    assert store.apply(pod("a")) is stored
    with pytest.raises(Rejected):
        store.apply(pod("bad"))
    assert store.get("Pod", "default", "bad") is None
    assert store.revision == 1


async def test_watch_sees_events_in_order_and_resumes() -> None:
    store = Store()
    store.apply(pod("a"))
    got: list[WatchEvent] = []

    async def watcher(since: int | None) -> None:
        async for ev in store.watch("Pod", since=since):
            got.append(ev)
            if len(got) == 3:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher, 0)
        await trio.testing.wait_all_tasks_blocked()
        store.apply(svc("ignored"))
        store.apply(pod("b"))
        await trio.testing.wait_all_tasks_blocked()
        store.delete("Pod", "default", "a")
    assert [(e.type, e.object.name) for e in got] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    assert [e.revision for e in got] == [1, 3, 4]


async def test_watch_from_compacted_revision_raises_gone() -> None:
    store = Store(history=1)
    store.apply(pod("a"))
    store.apply(pod("b"))
    store.apply(pod("c"))
    with pytest.raises(Gone):
        async for _ in store.watch(since=0):
            pass


async def test_wait_for_change() -> None:
    store = Store()
    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def waiter() -> None:
            result.append(await store.wait_for_change(0))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert result == []
        store.apply(pod("a"))
    assert result == [1]
