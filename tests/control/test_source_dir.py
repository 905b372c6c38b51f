"""The manifest-directory source: files come, change, break, heal and go."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from mesh.control.ipam import ServiceAllocator
from mesh.control.source_dir import DirSource, ManifestSet
from mesh.control.store import Store
from mesh.manifests import load_text
from mesh.objects import EndpointSlice, Service


def service_yaml(name: str, port: int = 80, ns: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec:\n  ports: [{{port: {port}}}]\n"
    )


def write(path: Path, text: str) -> None:
    # Write then rename, as editors and kubectl-style tools do.
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds, for at most one second."""
    for _ in range(100):
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not met within 1 s")


def port_of(store: Store, name: str) -> int | None:
    obj = store.get("Service", "default", name)
    return obj.spec.ports[0].port if isinstance(obj, Service) else None


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Path, Store, DirSource]]:
    store = Store()
    source = DirSource(tmp_path, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        yield tmp_path, store, source
        nursery.cancel_scope.cancel()


async def test_initial_load_is_done_when_started(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    sub = tmp_path / "nested" / "deeper"
    sub.mkdir(parents=True)
    (sub / "b.yml").write_text(service_yaml("b"))
    (sub / "c.json").write_text(json.dumps(load_text(service_yaml("c")).objects[0].to_dict()))
    (sub / "notes.txt").write_text("not a manifest")
    hidden = tmp_path / ".git"
    hidden.mkdir()
    (hidden / "x.yaml").write_text(service_yaml("hidden"))
    store = Store()
    source = DirSource(tmp_path, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        names = [o.name for o in store.list("Service")[0]]
        nursery.cancel_scope.cancel()
    assert names == ["a", "b", "c"]
    assert source.errors == []


async def test_create_change_delete_within_a_second(
    running: tuple[Path, Store, DirSource],
) -> None:
    root, store, _ = running
    write(root / "web.yaml", service_yaml("web", 80))
    await eventually(lambda: port_of(store, "web") == 80)
    write(root / "web.yaml", service_yaml("web", 81))
    await eventually(lambda: port_of(store, "web") == 81)
    # Same size, rewritten at once: caught even within the clock's granularity.
    write(root / "web.yaml", service_yaml("web", 82))
    await eventually(lambda: port_of(store, "web") == 82)
    (root / "web.yaml").unlink()
    await eventually(lambda: store.get("Service", "default", "web") is None)


async def test_object_removed_from_file_is_deleted(running: tuple[Path, Store, DirSource]) -> None:
    root, store, _ = running
    write(root / "app.yaml", service_yaml("a") + "---\n" + service_yaml("b"))
    await eventually(lambda: port_of(store, "b") == 80)
    write(root / "app.yaml", service_yaml("a"))
    await eventually(lambda: store.get("Service", "default", "b") is None)
    assert port_of(store, "a") == 80


async def test_invalid_new_version_keeps_last_good_then_heals(
    running: tuple[Path, Store, DirSource],
) -> None:
    root, store, source = running
    write(root / "web.yaml", service_yaml("web", 80) + "---\n" + service_yaml("other"))
    await eventually(lambda: port_of(store, "web") == 80)
    write(root / "web.yaml", service_yaml("web", 0) + "---\n" + service_yaml("other", 90))
    await eventually(lambda: port_of(store, "other") == 90)
    assert port_of(store, "web") == 80  # the bad version is reported, the good one serves
    [err] = source.errors
    assert err.source.endswith("web.yaml")
    assert (err.object, err.field) == ("Service/default/web", "spec.ports[0].port")
    write(root / "web.yaml", service_yaml("web", 8080) + "---\n" + service_yaml("other", 90))
    await eventually(lambda: port_of(store, "web") == 8080)
    assert source.errors == []


async def test_broken_file_keeps_its_objects_until_fixed(
    running: tuple[Path, Store, DirSource],
) -> None:
    root, store, source = running
    write(root / "web.yaml", service_yaml("web"))
    await eventually(lambda: port_of(store, "web") == 80)
    write(root / "web.yaml", "kind: Service\nmetadata: {name: [\n")
    await eventually(lambda: bool(source.errors))
    assert "invalid YAML" in source.errors[0].message
    assert port_of(store, "web") == 80
    write(root / "web.yaml", service_yaml("web", 81))
    await eventually(lambda: port_of(store, "web") == 81)
    assert source.errors == []


async def test_new_broken_object_appears_once_fixed(running: tuple[Path, Store, DirSource]) -> None:
    root, store, source = running
    write(root / "x.yaml", service_yaml("x", 0))
    await eventually(lambda: bool(source.errors))
    assert store.get("Service", "default", "x") is None
    write(root / "x.yaml", service_yaml("x", 80))
    await eventually(lambda: port_of(store, "x") == 80)


async def test_source_leaves_objects_it_did_not_create(
    running: tuple[Path, Store, DirSource],
) -> None:
    root, store, _ = running
    slice_ = EndpointSlice.model_validate(
        {"metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": []}
    )
    store.apply(slice_)
    write(root / "web.yaml", service_yaml("web"))
    await eventually(lambda: port_of(store, "web") == 80)
    (root / "web.yaml").unlink()
    await eventually(lambda: store.get("Service", "default", "web") is None)
    assert store.get("EndpointSlice", "default", "web-abc") is not None


async def test_same_object_in_two_files_last_wins_with_warning(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_yaml("web", 80))
    (tmp_path / "b.yaml").write_text(service_yaml("web", 81))
    store = Store()
    source = DirSource(tmp_path, store)
    await source.poll()
    assert port_of(store, "web") == 81
    assert any("a.yaml and" in w and "b.yaml wins" in w for w in source.warnings)
    (tmp_path / "b.yaml").unlink()
    await source.poll()
    assert port_of(store, "web") == 80  # the other definition takes over


async def test_admission_rejection_reported_and_retried(tmp_path: Path) -> None:
    alloc = ServiceAllocator()
    store = Store(admit=alloc.admit)
    alloc.lookup = store.get
    ip_svc = "apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {clusterIP: 127.10.0.10, ports: [{port: 53}]}\n"
    (tmp_path / "a.yaml").write_text(ip_svc % "a")
    (tmp_path / "b.yaml").write_text(ip_svc % "b")
    source = DirSource(tmp_path, store)
    await source.poll()
    [err] = source.errors
    assert err.object == "Service/default/b" and err.field == "spec.clusterIPs"
    assert "already allocated" in err.message
    (tmp_path / "a.yaml").unlink()
    await source.poll()
    assert source.errors == []
    assert store.get("Service", "default", "b") is not None


async def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await DirSource(tmp_path / "nope", Store()).run()


async def test_single_file_as_root(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(service_yaml("one"))
    store = Store()
    await DirSource(path, store).poll()
    assert port_of(store, "one") == 80


def test_manifest_set_duplicate_in_one_file_warns() -> None:
    files = ManifestSet()
    state = files.update(
        "f.yaml", load_text(service_yaml("a", 80) + "---\n" + service_yaml("a", 81))
    )
    assert len(state.warnings) == 1
    objects, origin, _ = files.desired()
    assert origin[("Service", "default", "a")] == "f.yaml"
    svc = objects[("Service", "default", "a")]
    assert isinstance(svc, Service) and svc.spec.ports[0].port == 81
