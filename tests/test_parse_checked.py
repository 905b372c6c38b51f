"""The unknown-field check made where the documents are parsed (mesh/yaml_load.py's
parse_checked, in the process that parses ahead): a text it calls checked loads exactly as
the serial load does without the parent checking again, and a text with an unknown field,
a list or anything unusual is never called checked, so its errors are the parent's own."""

from __future__ import annotations

import pytest

from mesh.kube_fields import unknown_fields
from mesh.manifests import load_parsed, load_text, parse_checked

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


@pytest.mark.parametrize("text", TEXTS + BAD)
def test_a_checked_load_is_the_serial_load(text: str) -> None:
    got = parse_checked(text)
    loaded = (
        load_text(text, "f.yaml") if got is None else load_parsed(got[0], "f.yaml", checked=got[1])
    )
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
    (err,) = load_parsed(got[0], "f.yaml", checked=got[1]).errors
    assert unknown_fields(got[0][0], "Service") == ["spec.selecter", "spec.ports[0].nme"]
    assert err == load_text(TYPO, "f.yaml").errors[0]
    assert err.field == "spec.selecter"


def test_arrays_and_syntax_errors_are_left_to_the_parent() -> None:
    assert parse_checked(JSON_ARRAY) is None
    assert parse_checked(BAD[0]) is None
