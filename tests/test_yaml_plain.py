"""The plain-YAML parser: exactly PyYAML's values where it answers, None where it is unsure.

Differential throughout: every answer is compared with PyYAML's pure-Python safe loader
(timestamps kept as text, as the manifests' loader does) and with the libyaml loader the
manifests use otherwise; generated documents and generated near-YAML texts check that the
parser never answers differently, and never answers where PyYAML reports an error.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.manifests import load_text
from mesh.yaml_load import _TYPED_FIRST, _Loader, _plain_scalar
from mesh.yaml_plain import plain_documents


class _Reference(yaml.SafeLoader):
    """PyYAML's own pure-Python safe loader, timestamps as text."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_Reference.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _typed(value: Any) -> Any:
    """``value`` with every scalar paired with its type (True == 1, nan != nan otherwise)."""
    if isinstance(value, dict):
        return {_typed(k): _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


def _pyyaml(text: str) -> Any:
    """PyYAML's documents of ``text`` (typed), or the error class when it refuses it."""
    try:
        pure = _typed(list(yaml.load_all(text, Loader=_Reference)))
    except yaml.YAMLError:
        pure = "error"
    try:
        c = _typed(list(yaml.load_all(text, Loader=_Loader)))
    except yaml.YAMLError:
        c = "error"
    assert pure == c, "the two PyYAML loaders disagree: not a case for this test"
    return pure


def _plain(text: str) -> Any:
    docs = plain_documents(text, _plain_scalar, _TYPED_FIRST)
    slow = plain_documents(text, _plain_scalar)  # every scalar through the resolver
    assert (docs is None) == (slow is None)
    if docs is None:
        return None
    assert _typed(docs) == _typed(slow)
    return _typed(docs)


TAKEN = [
    # kubectl-style block documents
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n"
    "  labels:\n    app.kubernetes.io/name: web\nspec:\n  selector:\n    app: web\n"
    "  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    protocol: TCP\n",
    "spec:\n  ports:\n    - port: 80\n      targetPort: http\n  type: ClusterIP\n",
    # flow collections, as the scale benchmark writes them
    "metadata: {name: svc-1, namespace: bench}\nspec:\n  selector: {app: svc-1}\n"
    "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    'status: {phase: Running, podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}\n',
    "a: {}\nb: []\nc: [[1, 2], {x: y}]\nd: { spaced : out }\n",
    # comments, quoting, typed scalars, nulls
    "# head\na: 1 # tail\nb: 'two words'\nc: \"3\"\nd: ~\ne:\nf: -1\ng: 0x1f\nh: 010\n",
    "t: 2024-01-01T00:00:00Z\nimage: nginx:1.25\nurl: http://example.com/x\n",
    "yes_no: [yes, no, on, off, y, n, true, 'true']\n",
    "n: [.inf, -.Inf, .NaN, 1e3, 1_000, +12, 0o17, 0b101]\nsexagesimal: 190:20:30\n",
    "s: it's fine\nq: a, b\nr: x]\n",
    # nesting by indentation
    "- a\n- - b\n  - c\n-\n- k: v\n  k2: v2\n-   deep: 1\n    deeper: 2\n",
    "a:\n  b\n",
    "a:\n- 1\n- 2\nb: 3\n",
    # documents
    "a: 1\n---\nb: 2\n---\n",
    "---\n---\n",
    "# only a comment\n",
    "",
]


@pytest.mark.parametrize("text", TAKEN)
def test_taken_and_equal_to_pyyaml(text: str) -> None:
    got = _plain(text)
    assert got is not None, "the plain parser should read this text"
    assert got == _pyyaml(text)


DECLINED = [
    "a: &x 1\nb: *x\n",  # anchors and aliases
    "a: !!str 5\n",  # tags
    "a: |\n  block\n",  # block scalars
    "a: >\n  folded\n",
    "a: two\n  lines\n",  # a multi-line plain scalar
    "a: {b:1}\n",  # "b:1" is one scalar in YAML, a pair in JSON
    "a: {b: 1,}\n",  # a trailing comma
    "a: [1, 2\n  , 3]\n",  # a flow collection over two lines
    "a: {b: 1} # c\n",  # a hash after a flow collection
    'a: "esc\\n"\n',  # escapes
    "a:\tb\n",  # a tab
    "a: b\r\n",  # CR
    "a: caf\u00e9\n",  # non-ASCII
    "--- a\n",  # content on the marker line
    "%YAML 1.1\n---\na: 1\n",  # a directive
    "a: 1\n...\n",  # an end marker
    '"quoted key": 1\n',  # a quoted key
    "1: int key\n",  # a non-string key
    "true: bool key\n",
    "? complex\n: key\n",
    "<<: {a: 1}\n",  # a merge key
    "a: b: c\n",  # an error in YAML
    "a: 1\n  b: 2\n",  # an error in YAML
    "- a\nb: 1\n",  # an error in YAML
    "k" * 1100 + ": v\n",  # a key longer than YAML allows
    "a: {" + "k" * 1100 + ": v}\n",
]


@pytest.mark.parametrize("text", DECLINED)
def test_declined(text: str) -> None:
    assert plain_documents(text, _plain_scalar) is None


def test_manifests_read_the_same_through_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = (
        "apiVersion: v1\nkind: Pod\n"
        "metadata: {name: p-0, namespace: bench, labels: {app: web}}\n"
        "spec: {containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}\n"
        'status: {phase: Running, podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}\n'
    )
    text = TAKEN[0] + "---\n" + pod + "---\nkind: Service\nmetadata: {name: bad}\nspec: {}\n"
    assert plain_documents(text, _plain_scalar) is not None
    fast = load_text(text, "x.yaml")
    monkeypatch.setattr("mesh.yaml_load.plain_documents", lambda text, scalar, first: None)
    slow = load_text(text, "x.yaml")
    assert len(fast.objects) == 2 and len(fast.errors) == 1
    assert fast.errors == slow.errors
    assert [o.to_dict() for o in fast.objects] == [o.to_dict() for o in slow.objects]


# --- generated ----------------------------------------------------------------------

LOOKALIKES = [
    "1", "1.0", "1_000", "+12", "-0x1a", "0o17", "017", "0b101", "190:20:30", "1e3", ".inf",
    ".NaN", "on", "Off", "NO", "y", "Yes", "TRUE", "~", "null", "2001-12-14", "v1", "bench",
    "10.0.0.1", "-x", "a b", "a.b/c-d", "_u", "/p", "x]", "it's", "a, b", "nginx:1.25",
]  # fmt: skip
KEYS = st.sampled_from(["a", "name", "app.kubernetes.io/name", "x-1", "on", "1", "null", "k_2"])
SCALARS = st.one_of(
    st.sampled_from(LOOKALIKES),
    st.text(alphabet="abz019 .-_/:#'\",[]{}", min_size=0, max_size=6),
)


@st.composite
def _values(draw: st.DrawFn, depth: int = 0) -> Any:
    if depth >= 3 or draw(st.booleans()):
        return draw(SCALARS)
    if draw(st.booleans()):
        return draw(st.lists(_values(depth + 1), max_size=3))
    return draw(st.dictionaries(KEYS, _values(depth + 1), max_size=3))


def _scalar_text(draw: st.DrawFn, value: str) -> str:
    quote = draw(st.sampled_from(["", "", "'", '"']))
    return f"{quote}{value}{quote}"


def _flow_text(draw: st.DrawFn, value: Any) -> str:
    sep = draw(st.sampled_from([", ", ",", " , "]))
    if isinstance(value, dict):
        inner = sep.join(f"{k}: {_flow_text(draw, v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + sep.join(_flow_text(draw, v) for v in value) + "]"
    return _scalar_text(draw, value)


def _block_lines(draw: st.DrawFn, value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict) and value:
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v and draw(st.booleans()):
                out.append(f"{pad}{k}:" + draw(st.sampled_from(["", " # c"])))
                out += _block_lines(draw, v, indent + draw(st.sampled_from([2, 4])))
            else:
                out.append(f"{pad}{k}: {_flow_text(draw, v)}" + draw(st.sampled_from(["", " # c"])))
        return out
    if isinstance(value, list) and value:
        for v in value:
            if isinstance(v, (dict, list)) and v and draw(st.booleans()):
                inner = _block_lines(draw, v, indent + 2)
                out.append(f"{pad}- " + inner[0].lstrip(" "))
                out += inner[1:]
            else:
                out.append(f"{pad}- {_flow_text(draw, v)}")
        return out
    return [pad + _flow_text(draw, value)]


@st.composite
def _documents(draw: st.DrawFn) -> str:
    docs = draw(st.lists(_values(), min_size=1, max_size=3))
    parts = []
    for doc in docs:
        lines = _block_lines(draw, doc, 0)
        if draw(st.booleans()):
            lines.insert(draw(st.integers(0, len(lines))), "# a comment")
        parts.append("\n".join(lines) + "\n")
    return "---\n".join(parts)


@settings(max_examples=400, deadline=None)
@given(_documents())
def test_generated_documents_read_as_pyyaml_reads_them(text: str) -> None:
    got = _plain(text)
    if got is not None:
        assert got == _pyyaml(text), text


NEAR_YAML = ["a", "b: ", ": ", "- ", "-", "{", "}", "[", "]", ", ", ",", "'", '"', "#", " # x"]
NEAR_YAML += ["1", "yes", "~", "\n", "\n", "\n  ", "\n    ", "\n- ", "---\n", " ", ":", "x:1"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(NEAR_YAML), max_size=24).map("".join))
def test_near_yaml_never_read_differently(text: str) -> None:
    got = _plain(text)
    if got is not None:
        assert got == _pyyaml(text), text
