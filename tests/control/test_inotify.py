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


SVC = "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n"


async def test_a_file_still_being_written_is_read_once_it_is_closed(tmp_path: Path) -> None:
    """A writer that pauses part way (``{ head; sleep; tail; } > f``) does not make the
    objects after the pause vanish, nor a half document fail: the old version stays until
    the writer closes the file, then the new one applies whole."""
    path = tmp_path / "app.yaml"
    path.write_text(SVC.format(name="one") + SVC.format(name="two"))
    store = Store()
    source = DirSource(tmp_path, store, poll_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        assert store.get("Service", "default", "two") is not None
        with path.open("w") as f:
            f.write(SVC.format(name="one") + SVC.format(name="three")[:40])  # part way
            f.flush()
            await trio.sleep(0.5)  # ten polls, each woken by the write's event or the clock
            assert store.get("Service", "default", "two") is not None
            assert store.get("Service", "default", "three") is None
            assert source.errors == []
            f.write(SVC.format(name="three")[40:])
        with trio.fail_after(5):
            while store.get("Service", "default", "three") is None:
                await store.wait_for_change(store.revision)
        assert store.get("Service", "default", "two") is None
        assert source.errors == []
        nursery.cancel_scope.cancel()


async def test_a_writer_that_never_closes_is_read_after_the_hold(tmp_path: Path) -> None:
    import mesh.control.source_dir as source_dir

    path = tmp_path / "app.yaml"
    store = Store()
    source = DirSource(tmp_path, store, poll_interval=0.05)
    hold, source_dir.HOLD_MAX_S = source_dir.HOLD_MAX_S, 0.3
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            with path.open("w") as f:
                f.write(SVC.format(name="open"))
                f.flush()
                with trio.fail_after(5):
                    while store.get("Service", "default", "open") is None:
                        await store.wait_for_change(store.revision)
            nursery.cancel_scope.cancel()
    finally:
        source_dir.HOLD_MAX_S = hold
