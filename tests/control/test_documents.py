"""The document cache gives what loading the whole text gives, whatever the edit, and an
edit of one document of a big file is spliced in at the cost of that document."""

from __future__ import annotations

import random

import pytest

from mesh.control.documents import DocumentCache
from mesh.manifests import load_text


def pod(i: int, image: str = "x") -> str:
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: a{i % 3}}}}}\n"
        f"spec: {{containers: [{{name: c, image: {image}}}]}}\n"
    )


ODD = [
    "---\napiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",  # unknown kind: a warning
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: [\n",  # a syntax error
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: BAD}\nspec: {containers: []}\n",
    "---\n# caf\u00e9\n",  # not ASCII
    "---\n",  # an empty document
    "--- {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n",
    "---x: 1\n",  # not a marker: glued to the document before
    "\n",
]


def edit(rng: random.Random, docs: list[str]) -> None:
    action = rng.randrange(6)
    i = rng.randrange(len(docs)) if docs else 0
    if action == 0 and docs:
        docs[i] = pod(rng.randrange(30), image=rng.choice("xyz"))
    elif action == 1 and docs:
        del docs[i]
    elif action == 2 and len(docs) > 1:
        docs.insert(rng.randrange(len(docs)), docs.pop(i))  # moved
    elif action == 3:
        docs.insert(i, rng.choice(ODD))
    else:
        docs.insert(i, pod(rng.randrange(30)))  # new, or a key defined twice


@pytest.mark.parametrize("seed", range(40))
def test_cached_loads_equal_whole_loads(seed: int) -> None:
    rng = random.Random(seed)
    docs = [pod(i) for i in range(rng.randrange(1, 12))]
    cache = DocumentCache()
    for _ in range(25):
        text = "".join(docs)
        if rng.random() < 0.2:
            text = text.removeprefix("---\n")  # a first document without its marker
        got, want = cache.load(text, "f.yaml"), load_text(text, "f.yaml")
        assert (got.objects, got.errors, got.warnings) == (
            want.objects,
            want.errors,
            want.warnings,
        )
        edit(rng, docs)


def test_one_edited_document_of_a_big_file_is_spliced() -> None:
    docs = [pod(i) for i in range(2000)]
    cache = DocumentCache()
    prev = cache.load("".join(docs), "f.yaml")
    assert cache.parsed == 2000
    for i, image in ((0, "y"), (1000, "y"), (1999, "y"), (1000, "z")):
        docs[i] = pod(i, image=image)
        parsed = cache.parsed
        result = cache.load("".join(docs), "f.yaml")
        assert cache.parsed == parsed + 1
        changed = [o for o, p in zip(result.objects, prev.objects, strict=True) if o is not p]
        assert [o.name for o in changed] == [f"p{i}"]
        prev = result
    assert cache.spliced == 4
    docs[10:12] = [docs[11], docs[10]]  # two documents swapped: both found again
    parsed = cache.parsed
    assert [o.name for o in cache.load("".join(docs), "f.yaml").objects][10:12] == ["p11", "p10"]
    assert cache.parsed == parsed


@pytest.mark.parametrize("seed", range(40))
def test_character_edits_near_markers_equal_whole_loads(seed: int) -> None:
    """Edits at the edges of the kept regions: a marker line turned into a key ("---x"),
    its newline removed, characters added or removed right before or after it."""
    rng = random.Random(seed)
    text = "".join(pod(i) for i in range(8))
    cache = DocumentCache()
    for _ in range(30):
        got, want = cache.load(text, "f.yaml"), load_text(text, "f.yaml")
        assert (got.objects, got.errors, got.warnings) == (
            want.objects,
            want.errors,
            want.warnings,
        )
        markers = [i for i in range(len(text)) if text.startswith("---", i)] or [0]
        at = rng.choice(markers) + rng.randrange(-2, 5)
        at = min(max(at, 0), len(text))
        cut = rng.randrange(3)
        text = text[:at] + rng.choice(["", "x", "-", "\n", " ", "\n---\n", "#"]) + text[at + cut :]
