"""The manifest source woken by inotify: an edit is seen without waiting for the poll."""

from __future__ import annotations

from pathlib import Path

import trio

from mesh.control.inotify import open_watch
from mesh.control.source_dir import DirSource
from mesh.control.store import Store

POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"


async def wait_for_pod(store: Store, name: str) -> None:
    with trio.fail_after(5):  # the poll interval below is 60 s: only an event can be this fast
        while store.get("Pod", "default", name) is None:
            await store.wait_for_change(store.revision)


async def test_written_renamed_and_new_directory_files_wake_the_source(tmp_path: Path) -> None:
    store = Store()
    source = DirSource(tmp_path, store, poll_interval=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        (tmp_path / "a.yaml").write_text(POD.format(name="a"))
        await wait_for_pod(store, "a")
        tmp = tmp_path / ".b.tmp"
        tmp.write_text(POD.format(name="b"))
        tmp.rename(tmp_path / "b.yaml")
        await wait_for_pod(store, "b")
        sub = tmp_path / "team"
        sub.mkdir()
        await trio.sleep(0.05)  # let the source see the directory before the file lands
        (sub / "c.yaml").write_text(POD.format(name="c"))
        await wait_for_pod(store, "c")
        (tmp_path / "a.yaml").unlink()
        with trio.fail_after(5):
            while store.get("Pod", "default", "a") is not None:
                await store.wait_for_change(store.revision)
        nursery.cancel_scope.cancel()


def test_a_single_file_is_watched_through_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(POD.format(name="x"))
    watch = open_watch(path)
    assert watch is not None
    try:
        assert watch.drain() == 0
        path.with_suffix(".new").write_text(POD.format(name="y"))
        path.with_suffix(".new").rename(path)
        assert watch.drain() >= 2  # the new file closed after writing, then moved in
    finally:
        watch.close()
