"""The fast YAML constructor gives exactly what PyYAML's own constructor gives."""

from __future__ import annotations

import pytest
import yaml

from mesh.manifests import _load_all, _Loader

DOCUMENTS = [
    "a: 1\nb: [x, 2, 3.5, true, null, ~, 0x1f, 010, yes, 'yes']\n",
    "t: 2024-01-01T00:00:00Z\nd: 2024-01-01\n",
    "base: &b {x: 1, y: [1, 2]}\nuse: *b\n",
    "base: &b {x: 1}\nmerged: {<<: *b, y: 2}\n",
    "tagged: !!str 5\nbin: !!binary aGk=\nset: !!set {a, b}\n",
    "1: int key\n2.5: float key\nnull: null key\n",
    "- a\n- {k: v}\n- - nested\n",
    "empty:\nlist: []\nmap: {}\n",
    "multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "a: 1\n---\nb: 2\n---\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_same_values_as_pyyaml(text: str) -> None:
    assert list(_load_all(text)) == list(yaml.load_all(text, Loader=_Loader))


def test_a_recursive_alias_is_left_to_pyyaml() -> None:
    (doc,) = list(_load_all("a: &x [1, *x]\n"))
    assert doc["a"][0] == 1 and doc["a"][1] is doc["a"]


def test_an_unhashable_key_fails_as_in_pyyaml() -> None:
    text = "? [a, b]\n: complex key\n"
    with pytest.raises(yaml.YAMLError):
        list(yaml.load_all(text, Loader=_Loader))
    with pytest.raises(yaml.YAMLError):
        list(_load_all(text))
