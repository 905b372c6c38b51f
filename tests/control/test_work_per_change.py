"""Work proportional to the change: counts of what the control plane re-does per edit.

These tests pin work (Services re-planned, Services re-translated, documents parsed, store
writes), never timings; benchmarks/scale_bench.py measures the time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mesh.control.documents import DocumentCache, split_documents
from mesh.control.ipam import ServiceAllocator
from mesh.control.plane import ControlPlane
from mesh.control.source_dir import DirSource
from mesh.control.store import Store
from mesh.control.translate.dns import DnsTranslator
from mesh.control.translate.proxy import ProxyTranslator
from mesh.manifests import load_text
from mesh.objects import Endpoints, EndpointSlice, Pod
from tests.control.test_endpoints import pod, service

N = 20


def loaded_plane() -> tuple[ControlPlane, ProxyTranslator, DnsTranslator]:
    proxy, dns = ProxyTranslator(), DnsTranslator()
    plane = ControlPlane(None, translators={"proxy": proxy, "dns": dns}, wanted=["proxy", "dns"])
    for i in range(N):
        plane.apply(service(f"svc-{i}"))
        for j in range(3):
            plane.apply(pod(f"pod-{i}-{j}", f"10.0.{i}.{j + 1}", app=f"svc-{i}"))
    plane.reconcile_endpoints()
    plane.translate(plane.store.snapshot())
    return plane, proxy, dns


def relabel(p: Pod, app: str) -> Pod:
    meta = p.metadata.model_copy(update={"labels": {"app": app}})
    return p.model_copy(update={"metadata": meta})


def test_a_pod_label_change_replans_only_the_services_of_its_old_and_new_labels() -> None:
    plane, _, _ = loaded_plane()
    before = plane.store.revision
    moved = plane.store.get("Pod", "default", "pod-7-1")
    assert isinstance(moved, Pod)
    plane.apply(relabel(moved, "svc-8"))
    affected = plane._affected_since(before)
    assert affected == {("default", "svc-7"), ("default", "svc-8")}
    planned = plane.planned
    writes = plane.reconcile_endpoints(affected)
    assert plane.planned - planned == 2
    assert writes == 2  # one slice of svc-7 and one of svc-8 rewritten, nothing else
    addresses = {
        es.service_name: sorted(ep.addresses[0] for ep in es.endpoints)
        for es in plane.store.list("EndpointSlice")[0]
        if isinstance(es, EndpointSlice) and es.service_name in ("svc-7", "svc-8")
    }
    assert addresses == {
        "svc-7": ["10.0.7.1", "10.0.7.3"],
        "svc-8": ["10.0.7.2", "10.0.8.1", "10.0.8.2", "10.0.8.3"],
    }


def test_the_controllers_own_writes_do_not_trigger_another_plan() -> None:
    plane, _, _ = loaded_plane()
    before = plane.store.revision
    moved = plane.store.get("Pod", "default", "pod-3-0")
    assert isinstance(moved, Pod)
    plane.apply(relabel(moved, "nothing"))
    plane.reconcile_endpoints(plane._affected_since(before))
    assert plane.store.revision > before + 1  # the controller wrote a slice
    assert plane._affected_since(before + 1) == set()


def test_a_service_change_replans_that_service_only() -> None:
    plane, _, _ = loaded_plane()
    before = plane.store.revision
    plane.apply(service("svc-4", ports=[{"name": "http", "port": 81, "targetPort": 8080}]))
    assert plane._affected_since(before) == {("default", "svc-4")}


def test_translators_rebuild_only_the_services_whose_objects_changed() -> None:
    plane, proxy, dns = loaded_plane()
    assert proxy.built == N and dns.built == N
    before = plane.store.revision
    moved = plane.store.get("Pod", "default", "pod-2-0")
    assert isinstance(moved, Pod)
    plane.apply(relabel(moved, "svc-5"))
    plane.reconcile_endpoints(plane._affected_since(before))
    plane.translate(plane.store.snapshot(), plane._events_since(before))
    assert proxy.built == N + 2  # svc-2 and svc-5: their slices changed
    assert dns.built == N  # ClusterIP Services' records read no slice
    config = plane.current("proxy")
    assert config is not None
    eps = {s.name: [e.address for e in s.endpoints] for s in config.services}  # type: ignore[attr-defined]
    assert eps["svc-5"] == ["10.0.2.1", "10.0.5.1", "10.0.5.2", "10.0.5.3"]


def test_a_kind_is_not_translated_when_nothing_it_reads_changed() -> None:
    plane, proxy, _dns = loaded_plane()
    calls: list[int] = []

    def counting(snap: object) -> object:
        calls.append(1)
        return proxy(snap)  # type: ignore[arg-type]

    counting.reads = frozenset({"Service"})  # type: ignore[attr-defined]
    plane.register("proxy", counting)  # type: ignore[arg-type]
    before = plane.store.revision
    moved = plane.store.get("Pod", "default", "pod-1-0")
    assert isinstance(moved, Pod)
    plane.apply(relabel(moved, "none"))
    plane.translate(plane.store.snapshot(), plane._events_since(before))
    assert calls == []  # published before, reads no Pod
    plane.apply(service("svc-1", ports=[{"name": "http", "port": 81, "targetPort": 8080}]))
    plane.translate(plane.store.snapshot(), plane._events_since(before))
    assert calls == [1]
    plane.translate(plane.store.snapshot(), None)  # unknown: run
    assert calls == [1, 1]


def test_each_version_is_serialised_once_for_every_subscriber() -> None:
    plane, _, _ = loaded_plane()
    config = plane.current("proxy")
    assert config is not None
    first = plane.encoded(config)
    assert plane.encoded(config) is first
    assert first.endswith(b"\n") and b'"svc-0"' in first


def test_legacy_endpoints_are_mirrored_once_and_translators_read_only_slices() -> None:
    plane, proxy, _ = loaded_plane()
    plane.apply(service("legacy", selector=None))
    plane.apply(
        Endpoints.model_validate(
            {
                "metadata": {"name": "legacy"},
                "subsets": [
                    {"addresses": [{"ip": "10.9.0.1"}], "ports": [{"name": "http", "port": 8080}]}
                ],
            }
        )
    )
    snap = plane.store.snapshot()
    assert next(s for s in proxy(snap).services if s.name == "legacy").endpoints == ()
    plane.reconcile_endpoints()
    config = proxy(plane.store.snapshot())
    (legacy,) = [s for s in config.services if s.name == "legacy"]
    assert [(e.address, e.ports) for e in legacy.endpoints] == [("10.9.0.1", {"http": 8080})]


# --- the store's indexes ---------------------------------------------------------------


def test_indexes_follow_every_write() -> None:
    store = Store()
    store.apply(service("web"))
    store.apply(pod("a", "10.0.0.1", app="web"))
    store.apply(pod("b", "10.0.0.2", app="web"))
    old = store.snapshot()
    assert [p.name for p in store.by_index("label", ("Pod", "default", "app", "web"))] == ["a", "b"]
    assert [s.name for s in store.by_index("selector", ("default", "app", "web"))] == ["web"]
    store.apply(pod("a", "10.0.0.9", app="db"))
    store.delete("Pod", "default", "b")
    assert store.by_index("label", ("Pod", "default", "app", "web")) == []
    assert [p.name for p in store.by_index("pod-ip", "10.0.0.9")] == ["a"]
    assert store.by_index("pod-ip", "10.0.0.1") == []
    # A snapshot read after the store moved on answers from its own revision.
    assert [p.name for p in old.by_index("label", ("Pod", "default", "app", "web"))] == ["a", "b"]
    assert [p.name for p in old.by_index("pod-ip", "10.0.0.1")] == ["a"]
    assert [p.name for p in store.snapshot().by_index("namespace", ("Pod", "default"))] == ["a"]


# --- the manifest source ---------------------------------------------------------------


def manifest(n: int, image: str = "x") -> str:
    return "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: a{i}}}}}\n"
        f"spec: {{containers: [{{name: c, image: {image if i == 3 else 'x'}}}]}}\n"
        for i in range(n)
    )


def test_split_documents_cuts_before_each_marker_line() -> None:
    assert split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n") == [
        "a: 1\n",
        "---\nb: 2\n",
        "--- # c\nc: 3\n",
    ]
    assert split_documents("a: |\n  ---\n  x\n") == ["a: |\n  ---\n  x\n"]
    assert split_documents("%YAML 1.2\n---\na: 1\n") is None


def test_an_edit_of_one_object_parses_one_document_and_writes_one_object(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(manifest(50))
    store = Store()
    source = DirSource(tmp_path, store)
    source.sync_once()
    cache = source._documents[str(path)]
    assert cache.parsed == 50
    before = store.revision
    objects = dict(source.applier.applied)
    path.write_text(manifest(50, image="y"))
    source.sync_once()
    assert cache.parsed == 51
    assert store.revision == before + 1
    changed = [k for k, o in source.applier.applied.items() if objects[k] is not o]
    assert changed == [("Pod", "default", "p3")]


def test_a_broken_document_reports_as_the_whole_file_would() -> None:
    cache = DocumentCache()
    good = cache.load(manifest(3), "f.yaml")
    assert len(good.objects) == 3 and not good.errors
    broken = manifest(3) + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: [\n"
    result = cache.load(broken, "f.yaml")
    assert len(result.objects) == 3
    assert result.errors == load_text(broken, "f.yaml").errors
    (err,) = result.errors
    assert err.message.startswith("invalid YAML at line 20")  # the file's line, not the chunk's


def test_incremental_translation_equals_translation_from_scratch() -> None:
    plane, proxy, dns = loaded_plane()
    plane.apply(service("headless", clusterIP="None", selector={"app": "svc-3"}))
    plane.reconcile_endpoints()
    plane.translate(plane.store.snapshot(), None)
    moved = plane.store.get("Pod", "default", "pod-3-0")
    assert isinstance(moved, Pod)
    steps: list[Callable[[], object]] = [
        lambda: plane.apply(relabel(moved, "svc-9")),
        lambda: plane.delete("Service", "default", "svc-4"),
        lambda: plane.apply(service("svc-new", selector={"app": "svc-5"})),
        lambda: plane.delete("Pod", "default", "pod-3-1"),
    ]
    for step in steps:
        before = plane.store.revision
        step()
        plane.reconcile_endpoints(plane._affected_since(before))
        snap = plane.store.snapshot()
        events = plane._events_since(before)
        assert events is not None
        assert proxy.update(snap, events) == ProxyTranslator()(snap)
        assert dns.update(snap, events) == DnsTranslator()(snap)
    names = [s.name for s in dns(plane.store.snapshot()).services]
    assert "svc-4" not in names and "svc-new" in names


def test_a_slice_of_ours_deleted_by_someone_else_is_planned_again() -> None:
    plane, _, _ = loaded_plane()
    (mine,) = plane.store.by_index("service-slices", ("default", "svc-6"))
    before = plane.store.revision
    plane.delete("EndpointSlice", mine.namespace, mine.name)
    assert plane._affected_since(before) == {("default", "svc-6")}
    plane.reconcile_endpoints(plane._affected_since(before))
    assert plane.store.get("EndpointSlice", mine.namespace, mine.name) is not None


def _svc_doc(name: str, ip: str) -> str:
    return (
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    )


def test_a_spliced_edit_writes_its_objects_and_retries_the_rejected(tmp_path: Path) -> None:
    """An edit spliced into a big file is applied from the keys it touched; an object
    rejected before (its clusterIP taken) is retried, and a removed document deletes."""
    path = tmp_path / "all.yaml"
    pods = manifest(40)
    path.write_text(_svc_doc("a", "10.96.0.10") + pods + _svc_doc("b", "10.96.0.10"))
    allocator = ServiceAllocator("10.96.0.0/16")
    store = Store(admit=allocator.admit)
    allocator.lookup = store.get
    source = DirSource(tmp_path, store)
    source.sync_once()
    assert [e.object for e in source.errors] == ["Service/default/b"]
    cache = source._documents[str(path)]
    # a moves away from the address: b, untouched by the edit, now gets it
    path.write_text(_svc_doc("a", "10.96.0.11") + pods + _svc_doc("b", "10.96.0.10"))
    before = store.revision
    source.sync_once()
    assert cache.spliced == 1 and not source.errors
    assert store.revision == before + 2  # a modified, b added; no Pod written
    b = store.get("Service", "default", "b")
    assert b is not None and b.spec.cluster_ip == "10.96.0.10"  # type: ignore[attr-defined]
    path.write_text(_svc_doc("a", "10.96.0.11") + manifest(39) + _svc_doc("b", "10.96.0.10"))
    source.sync_once()
    assert cache.spliced == 2
    assert store.get("Pod", "default", "p39") is None
    assert len(store.snapshot().by_kind["Pod"]) == 39
