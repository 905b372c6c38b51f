"""Parsing from the first moment (control/early.py): the child forked before the source
exists is adopted by the source's first read of an unchanged file, and its results are
exactly the serial load's; a file changed meanwhile, or never read, is parsed as if
nothing had started, and no child outlives the source's first read."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.control import early
from mesh.control.chunks import first_load_texts
from mesh.control.documents import DocumentCache
from mesh.control.source_dir import DirSource
from mesh.control.store import Store
from mesh.manifests import load_text
from mesh.yaml_load import parse_documents

from ..test_ahead import BAD, children, pod


@pytest.fixture(autouse=True)
def _none_left() -> object:
    before = children()
    yield
    early.drop()
    assert children() == before


def write(root: Path, name: str, docs: list[str]) -> Path:
    path = root / name
    path.write_text("".join(docs))
    return path


def wait_for_first_batch(name: str) -> None:
    """Until the child has sent its first results (it starts with the file's first texts,
    the parent being busy elsewhere meanwhile)."""
    _, ahead = early._started[name]
    ahead._receive(wait=True, until=0)


def source_of(root: Path) -> DirSource:
    return DirSource(root, Store(), inotify=False)


def test_the_child_is_adopted_and_its_results_are_the_serial_load(tmp_path: Path) -> None:
    docs = [pod(i) for i in range(1500)]
    docs[1400] = BAD[3]  # an unknown kind (a warning) among the child's texts
    path = write(tmp_path, "all.yaml", docs)
    assert early.start(tmp_path, min_bytes=0, cores=2) == 1
    wait_for_first_batch(str(path))
    source = source_of(tmp_path)
    source._documents[str(path)] = cache = DocumentCache()
    cache.parse_ahead = 10**9  # no child of its own: what comes ahead is the early child's
    changes = source._read_changes()
    assert cache.parsed_ahead > 0
    assert not early._started
    got, want = changes[str(path)], load_text(path.read_text(), str(path))
    assert got is not None
    assert (got.objects, got.errors, got.warnings) == (want.objects, want.errors, want.warnings)


def test_a_file_with_an_error_loads_as_the_serial_load(tmp_path: Path) -> None:
    docs = [pod(i) for i in range(1500)]
    docs[1400] = BAD[1]  # an invalid object: the cache loads the whole text as one
    path = write(tmp_path, "all.yaml", docs)
    assert early.start(tmp_path, min_bytes=0, cores=2) == 1
    got = source_of(tmp_path)._read_changes()[str(path)]
    want = load_text(path.read_text(), str(path))
    assert got is not None
    assert (got.objects, got.errors, got.warnings) == (want.objects, want.errors, want.warnings)


def test_a_file_changed_after_the_start_is_parsed_by_the_source(tmp_path: Path) -> None:
    docs = [pod(i) for i in range(1200)]
    path = write(tmp_path, "all.yaml", docs)
    assert early.start(tmp_path, min_bytes=0, cores=2) == 1
    wait_for_first_batch(str(path))
    docs[-1] = pod(9999)
    write(tmp_path, "all.yaml", docs)
    source = source_of(tmp_path)
    source._documents[str(path)] = cache = DocumentCache()
    cache.parse_ahead = 10**9  # no child of its own either
    changes = source._read_changes()
    assert cache.parsed_ahead == 0
    got = changes[str(path)]
    assert got is not None and [o.name for o in got.objects][-1] == "p9999"


def test_children_of_files_the_source_never_reads_end(tmp_path: Path) -> None:
    path = write(tmp_path, "gone.yaml", [pod(i) for i in range(1200)])
    assert early.start(tmp_path, min_bytes=0, cores=2) == 1
    path.unlink()
    source_of(tmp_path)._read_changes()
    assert not early._started  # and the fixture checks that no child is left


def test_small_files_one_core_or_no_directory_start_nothing(tmp_path: Path) -> None:
    write(tmp_path, "small.yaml", [pod(i) for i in range(3)])
    assert early.start(tmp_path) == 0  # below MIN_BYTES
    assert early.start(tmp_path, min_bytes=0, cores=1) == 0
    assert early.start(tmp_path / "missing", min_bytes=0, cores=2) == 0


def test_the_childs_texts_are_those_the_cache_parses() -> None:
    docs = [pod(i) for i in range(20)]
    docs.insert(7, docs[3])  # a document twice is parsed once
    texts = first_load_texts("".join(docs))
    assert len(texts) == 20
    assert [parse_documents(t) for t in texts] == [parse_documents(d) for d in docs[:7] + docs[8:]]
    assert first_load_texts("%YAML 1.2\n---\na: 1\n") == []  # the whole-file path


def test_an_unknown_field_in_the_childs_texts_is_reported_as_the_serial_load(
    tmp_path: Path,
) -> None:
    from ..test_parse_checked import TYPO

    docs = [pod(i) for i in range(1500)]
    docs[900] = TYPO  # found by the child's check, reported by the parent's
    path = write(tmp_path, "all.yaml", docs)
    assert early.start(tmp_path, min_bytes=0, cores=2) == 1
    wait_for_first_batch(str(path))
    got = source_of(tmp_path)._read_changes()[str(path)]
    want = load_text(path.read_text(), str(path))
    assert got is not None
    assert (got.objects, got.errors, got.warnings) == (want.objects, want.errors, want.warnings)
    assert [e.field for e in got.errors] == ["spec.selecter"]
