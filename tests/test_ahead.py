"""Work done ahead in a forked child (mesh/ahead.py): the parent gets each text's
documents at most once, exactly what parsing them itself gives; a document the child
cannot parse is parsed (and reported) by the parent as before; one core means no child;
and no child outlives a load, whatever way it ends."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mesh import ahead as ahead_module
from mesh.ahead import Ahead
from mesh.control.documents import DocumentCache, split_documents
from mesh.control.source_dir import DirSource
from mesh.control.store import Store
from mesh.manifests import load_parsed, load_text, parse_documents


def pod(i: int) -> str:
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: a{i % 7}}}}}\n"
        f"spec: {{containers: [{{name: c, image: x, ports: [{{containerPort: {8000 + i}}}]}}]}}\n"
        f'status: {{phase: Running, podIP: 10.0.{i // 250}.{i % 250 + 1}, conditions: [{{type: Ready, status: "True"}}]}}\n'
    )


BAD = [
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: [\n",  # a syntax error
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: BAD}\nspec: {containers: []}\n",
    "---\napiVersion: v9\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
    "---\napiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",  # unknown kind: a warning
    "---\n- &a [*a]\n",  # a recursive alias
    "---\nkind: !!binary aGk=\n",  # bytes
    "---\n",
]


def children() -> set[int]:
    """The live child processes of this process (every thread's)."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with open(task / "children") as f:
            out.update(int(pid) for pid in f.read().split())
    return out


def test_the_parent_receives_each_document_once_as_parsed() -> None:
    texts = split_documents("".join(pod(i) for i in range(700)))
    assert texts is not None
    with Ahead(texts, parse_documents, cores=2, min_items=1) as ahead:
        assert ahead.pid
        got = [ahead.take(i, wait=True) for i in reversed(range(len(texts)))]
        again = [ahead.take(i) for i in range(len(texts))]
    assert got == [parse_documents(t) for t in reversed(texts)]
    assert ahead.taken == len(texts)
    assert again == [None] * len(texts)  # nothing twice


@pytest.mark.parametrize("bad", BAD)
def test_what_the_child_sends_validates_as_the_text_loads(bad: str) -> None:
    texts = [pod(1), bad, pod(2)]
    with Ahead(texts, parse_documents, cores=2, min_items=1) as ahead:
        sent = [ahead.take(i, wait=True) for i in range(3)]
    for text, docs in zip(texts, sent, strict=True):
        # None: the child could not parse or send it; the parent then loads the text.
        assert docs is None or repr(docs) == repr(parse_documents(text))  # may recurse
        loaded = load_text(text, "f.yaml") if docs is None else load_parsed(docs, "f.yaml")
        want = load_text(text, "f.yaml")
        assert (loaded.objects, loaded.errors, loaded.warnings) == (
            want.objects,
            want.errors,
            want.warnings,
        )
    assert sent[0] is not None and sent[2] is not None
    if bad.startswith("---\napiVersion: v1\nkind: Pod\nmetadata: {name: ["):
        assert sent[1] is None  # the syntax error is the parent's to report


@pytest.mark.parametrize("seed", range(3))
def test_a_big_load_with_a_child_equals_the_serial_load(seed: int) -> None:
    rng = random.Random(seed)
    docs = [pod(i) for i in range(1100)]
    for _ in range(rng.randrange(3)):
        docs.insert(rng.randrange(len(docs)), rng.choice(BAD))
    text = "".join(docs)
    ahead, serial = DocumentCache(), DocumentCache()
    ahead.parse_ahead, serial.parse_ahead = 1, 10**9
    before = children()
    got, want = ahead.load(text, "f.yaml"), serial.load(text, "f.yaml")
    assert children() == before
    assert (got.objects, got.errors, got.warnings) == (want.objects, want.errors, want.warnings)
    assert got.errors == load_text(text, "f.yaml").errors
    assert serial.parsed_ahead == 0


def test_the_same_error_names_the_file_and_document_with_or_without_a_child() -> None:
    docs = [pod(i) for i in range(1200)]
    docs[1100] = BAD[1]  # in the child's half
    results = []
    for threshold in (1, 10**9):
        cache = DocumentCache()
        cache.parse_ahead = threshold
        results.append(cache.load("".join(docs), "big.yaml"))
    (err,) = results[0].errors
    assert results[1].errors == [err]
    assert str(err).startswith("big.yaml: Pod/default/BAD: ")
    assert [o.name for o in results[0].objects] == [o.name for o in results[1].objects]
    assert len(results[0].objects) == 1199


def test_one_core_starts_no_child() -> None:
    texts = [pod(i) for i in range(50)]
    with Ahead(texts, parse_documents, cores=1, min_items=1) as ahead:
        assert ahead.pid == 0
        assert ahead.take(49, wait=True) is None
    assert ahead.taken == 0


def test_a_small_text_starts_no_child() -> None:
    with Ahead([pod(1)], parse_documents, cores=2) as ahead:
        assert ahead.pid == 0


def test_an_edit_of_a_big_file_forks_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(ahead_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(os, "fork", counting_fork)
    docs = [pod(i) for i in range(1200)]
    cache = DocumentCache()
    cache.load("".join(docs), "f.yaml")
    assert len(forks) == 1
    docs[5] = pod(5000)
    cache.load("".join(docs), "f.yaml")
    docs.append(BAD[1])  # an error: the whole file again, all but one document cached
    cache.load("".join(docs), "f.yaml")
    assert len(forks) == 1


def test_no_child_is_left_when_the_parent_raises() -> None:
    texts = [pod(i) for i in range(400)]
    before = children()
    ahead = Ahead(texts, parse_documents, cores=2, min_items=1)
    assert ahead.pid in children()
    with pytest.raises(KeyboardInterrupt), ahead:
        ahead.take(399, wait=True)
        raise KeyboardInterrupt
    assert children() == before


def test_no_child_is_left_when_validation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.control import documents

    calls = 0

    def failing(docs: list[Any], source: str) -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    monkeypatch.setattr(documents, "load_parsed", failing)
    monkeypatch.setattr(documents, "load_text", failing)
    cache = DocumentCache()
    cache.parse_ahead = 1
    before = children()
    with pytest.raises(RuntimeError):
        cache.load("".join(pod(i) for i in range(300)), "f.yaml")
    assert calls == 1
    assert children() == before


def slow_parse(text: str) -> list[Any] | None:
    time.sleep(0.01)
    return parse_documents(text)


def test_ctrl_c_ends_the_child_and_the_parent_parses_the_rest() -> None:
    texts = [pod(i) for i in range(200)]
    with Ahead(texts, slow_parse, cores=2, min_items=1) as ahead:
        os.kill(ahead.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the group
        deadline = time.monotonic() + 10
        while ahead.pid in children() and time.monotonic() < deadline:
            # A zombie still shows in /proc/self/task/*/children until reaped: look at it.
            with open(f"/proc/{ahead.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        got = [ahead.take(i, wait=True) for i in range(len(texts))]
    assert all(g is None for g in got[:100])  # the child had not come that far
    assert ahead.taken < len(texts)


def test_the_source_loads_a_big_directory_as_before(tmp_path: Path) -> None:
    text = "".join(pod(i) for i in range(1500))
    (tmp_path / "a.yaml").write_text(text)
    store = Store()
    source = DirSource(tmp_path, store, inotify=False)
    before = children()
    source.sync_once()
    assert children() == before
    assert source.errors == []
    assert sorted(o.key for o in store.snapshot().list("Pod")) == sorted(
        o.key for o in load_text(text, "x").objects
    )


def test_the_child_computes_on_while_the_parent_reads_nothing(tmp_path: Path) -> None:
    """Three megabytes of results, more than the pipe holds: the child still reaches the
    first item (its last) before the parent has read a byte, then all of it arrives."""
    done = tmp_path / "done"

    def big(i: int) -> list[str]:
        if i == 0:
            done.touch()
        return [str(i) * 1000]

    items = list(range(3000))
    with Ahead(items, big, cores=2, min_items=1) as ahead:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done.exists()
        got = [ahead.take(i, wait=True) for i in items]
    assert got == [big(i) for i in items]


def test_the_child_stops_where_the_parent_has_got_to(tmp_path: Path) -> None:
    """The parent going forwards past the child's next batch: the child computes no more
    (each computation leaves a byte in a file, so the work is counted, not timed)."""
    log = tmp_path / "computed"

    def counted(i: int) -> list[int]:
        with open(log, "ab") as f:
            f.write(b".")
        time.sleep(0.002)
        return [i]

    items = list(range(2000))
    with Ahead(items, counted, cores=2, min_items=1) as ahead:
        assert ahead.take(len(items) - 1, wait=True) == [len(items) - 1]  # it has started
        for i in items:  # the parent goes through everything itself, forwards
            ahead.take(i)
        deadline = time.monotonic() + 20
        while ahead.pid in children() and time.monotonic() < deadline:
            with open(f"/proc/{ahead.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
    assert log.stat().st_size <= 3 * ahead_module.BATCH  # not the 2,000 items


def _made(texts: list[str], func: Any) -> Ahead[str]:
    return Ahead.made_in_child(lambda: (texts, func), cores=2)


def slowish_parse(text: str) -> list[Any] | None:
    time.sleep(0.002)
    return parse_documents(text)


def test_a_child_started_early_works_from_the_front() -> None:
    texts = [pod(i) for i in range(3 * ahead_module.BATCH)]
    with _made(texts, slowish_parse) as ahead:
        first = ahead.take(0, wait=True)  # the parent busy elsewhere until now
        assert first == parse_documents(texts[0])
        assert len(texts) - 1 not in ahead._where  # the first batch came first
        got = [ahead.take(i, wait=True) for i in range(1, len(texts))]
    assert got == [parse_documents(t) for t in texts[1:]]
    assert ahead.taken == len(texts)


def test_an_early_child_the_parent_catches_up_with_turns_to_the_back() -> None:
    texts = [pod(i) for i in range(6 * ahead_module.BATCH)]
    with _made(texts, slowish_parse) as ahead:
        ahead.take(0, wait=True)
        # The parent goes on faster than the child: what it does not get, it parses itself.
        got = [ahead.take(i) or parse_documents(t) for i, t in enumerate(texts[1:], start=1)]
    assert got == [parse_documents(t) for t in texts[1:]]
    assert 0 < ahead.taken < len(texts)
