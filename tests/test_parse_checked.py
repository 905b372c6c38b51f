"""The unknown-field check made where the documents are parsed (mesh/yaml_load.py's
parse_checked, in the process that parses ahead): a text it calls checked loads exactly as
the serial load does without the parent checking again, and a text with an unknown field,
a list or anything unusual is never called checked, so its errors are the parent's own."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.kube_fields import unknown_fields
from mesh.manifests import LoadResult, load_parsed, load_text, parse_checked
from mesh.objects import Pod

from .test_ahead import BAD, pod

TYPO = (
    "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
    "spec: {selecter: {app: a}, ports: [{port: 80, nme: x}]}\n"
)
LIST_TYPO = (
    "apiVersion: v1\nkind: List\nitmes: []\nitems:\n"
    "- {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: [{port: 80}], x: 1}}\n"
)
TYPED_LIST = (
    "apiVersion: v1\nkind: ServiceList\nitems:\n"
    "- {metadata: {name: s}, spec: {ports: [{port: 80}], sepc: 1}}\n"
)
JSON_ARRAY = '[{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}]'
NO_KIND = "---\nmetadata: {name: x}\nsepc: 1\n"
SEQUENCE = "---\n- a\n- b\n"

TEXTS = [pod(1), pod(2) + pod(3), TYPO, LIST_TYPO, TYPED_LIST, JSON_ARRAY, NO_KIND, SEQUENCE]


def load_checked(text: str, models: dict[tuple[str, bytes], Any] | None = None) -> LoadResult:
    """What the document cache makes of a text the child parsed (or could not)."""
    got = parse_checked(text)
    if got is None:
        return load_text(text, "f.yaml")
    docs, checked, shared = got
    return load_parsed(docs, "f.yaml", checked=checked, shared=shared, models=models)


@pytest.mark.parametrize("text", TEXTS + BAD)
def test_a_checked_load_is_the_serial_load(text: str) -> None:
    loaded = load_checked(text, {})
    want = load_text(text, "f.yaml")
    assert (loaded.objects, loaded.errors, loaded.warnings) == (
        want.objects,
        want.errors,
        want.warnings,
    )


@pytest.mark.parametrize(
    ("text", "checked"),
    [
        (pod(1), True),
        (pod(2) + pod(3), True),
        (TYPO, False),
        (LIST_TYPO, False),
        (TYPED_LIST, False),
        (NO_KIND, False),
        (BAD[3], True),  # an unknown kind has no table: nothing to find
        ("---\n", True),
    ],
)
def test_checked_only_when_no_object_has_an_unknown_field(text: str, checked: bool) -> None:
    got = parse_checked(text)
    assert got is not None
    assert got[1] is checked


def test_the_parent_reports_unknown_fields_exactly_as_before() -> None:
    got = parse_checked(TYPO)
    assert got is not None and got[1] is False
    assert got[2] == [None]  # the parent's check needs the document whole
    (err,) = load_checked(TYPO, {}).errors
    assert unknown_fields(got[0][0], "Service") == ["spec.selecter", "spec.ports[0].nme"]
    assert err == load_text(TYPO, "f.yaml").errors[0]
    assert err.field == "spec.selecter"


def test_arrays_and_syntax_errors_are_left_to_the_parent() -> None:
    assert parse_checked(JSON_ARRAY) is None
    assert parse_checked(BAD[0]) is None


def template_pod(i: int, image: str = "x", port: int = 8080) -> str:
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: a}}}}\n"
        f"spec:\n  containers:\n  - {{name: c, image: {image}, ports: [{{containerPort: {port}}}]}}\n"
        f"status: {{phase: Running, podIP: 10.0.0.{i + 1}}}\n"
    )


def test_pods_of_one_template_share_one_spec_equal_to_a_fresh_one() -> None:
    models: dict[tuple[str, bytes], Any] = {}
    texts = [template_pod(i) for i in range(4)] + [template_pod(4, image="y")]
    loaded = [p for t in texts for p in load_checked(t, models).objects if isinstance(p, Pod)]
    fresh = [p for t in texts for p in load_text(t, "f.yaml").objects if isinstance(p, Pod)]
    assert len(loaded) == 5
    assert loaded == fresh
    assert loaded[0].spec is loaded[3].spec  # validated once
    assert loaded[4].spec is not loaded[0].spec and loaded[4].spec.containers[0].image == "y"
    assert len(models) == 2
    for got, want in zip(loaded, fresh, strict=True):
        assert got.spec.model_fields_set == want.spec.model_fields_set
        assert got.model_fields_set == want.model_fields_set
        assert got.to_dict() == want.to_dict()


def test_an_invalid_spec_is_reported_each_time_and_never_shared() -> None:
    models: dict[tuple[str, bytes], Any] = {}
    bad = [template_pod(i, port=70000) for i in range(3)]
    for text in bad:
        got = load_checked(text, models)
        want = load_text(text, "f.yaml")
        assert got.errors == want.errors
        assert [e.field for e in got.errors] == ["spec.containers[0].ports[0].containerPort"]
    assert models == {}
    # A valid Pod with another field wrong is reported as before, its spec shared or not.
    load_checked(template_pod(0), models)
    broken = template_pod(1).replace("podIP: 10.0.0.2", "podIP: 10.0.0.999")
    assert load_checked(broken, models).errors == load_text(broken, "f.yaml").errors
