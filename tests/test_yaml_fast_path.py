"""The fast YAML constructor gives exactly what PyYAML's own constructor gives."""

from __future__ import annotations

import pytest
import yaml

from mesh.yaml_load import _load_all, _Loader

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


class _Reference(yaml.SafeLoader):
    """PyYAML's own pure-Python safe loader (no memo, no fast path), timestamps as text."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_Reference.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)

# Plain scalars whose YAML 1.1 type hangs on their text, and the same texts quoted.
LOOKALIKES = [
    "1", "1.0", "1_000", "+12", "-0x1a", "0o17", "017", "0b101", "190:20:30", "1e3", "6.8523015e+5",
    ".inf", "-.Inf", ".NaN", "on", "Off", "NO", "y", "Yes", "TRUE", "~", "null", "Null",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "<<x", "v1", "bench", "10.0.0.1",
]  # fmt: skip


def _typed(value: object) -> object:
    """``value`` with each scalar paired with its type (True == 1 and nan != nan otherwise)."""
    if isinstance(value, dict):
        return {_typed(k): _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


@pytest.mark.parametrize("quote", ["", "'", '"'])
def test_memoised_resolution_types_as_pyyaml(quote: str) -> None:
    text = "".join(f"k{i}: {quote}{s}{quote}\n" for i, s in enumerate(LOOKALIKES))
    text += "seq: [" + ", ".join(f"{quote}{s}{quote}" for s in LOOKALIKES) + "]\n"
    expected = _typed(list(yaml.load_all(text, Loader=_Reference)))
    for _ in range(2):  # a cold and a warm memo
        assert _typed(list(_load_all(text))) == expected
