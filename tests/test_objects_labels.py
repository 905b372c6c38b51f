"""Label keys and values, annotations and label selectors, as the API server checks them
(k8s.io/apimachinery: IsQualifiedName, IsValidLabelValue, ValidateAnnotations,
ValidateLabelSelectorRequirement)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from mesh.labels import (
    ANNOTATIONS_MAX,
    check_annotations,
    check_labels,
    label_key_error,
    label_value_error,
    requirement_error,
)
from mesh.manifests import load_text
from mesh.objects import LabelSelector, Namespace
from mesh.selectors import parse_selector

N63 = "a" * 63
P253 = ".".join(["b" * 63] * 3 + ["c" * 61])  # 253 characters
assert len(P253) == 253

VALID_KEYS = [
    "a",
    "A",
    "app",
    "MyName",
    "my.name",
    "123-abc",
    "a_b",
    "a-b_c.d",
    "1",
    N63,
    "example.com/MyName",
    "kubernetes.io/service-name",
    "endpointslice.kubernetes.io/managed-by",
    "a/b",
    f"{P253}/{N63}",
    "x-y.z/A_1",
]

INVALID_KEYS = [
    ("", "name part must be non-empty"),
    ("a" * 64, "name part must be no more than 63 bytes"),
    ("-a", "name part must consist of"),
    ("a-", "name part must consist of"),
    ("_a", "name part must consist of"),
    ("a b", "name part must consist of"),
    ("a:b", "name part must consist of"),
    ("a/", "name part must be non-empty"),
    ("/a", "prefix part must be non-empty"),
    ("app/x/y", "one '/'"),
    ("Example.com/a", "prefix part must be a lowercase RFC 1123 subdomain"),
    ("ex_ample.com/a", "prefix part must be a lowercase RFC 1123 subdomain"),
    ("-x.com/a", "prefix part must be a lowercase RFC 1123 subdomain"),
    (f"{P253}b/a", "prefix part must be no more than 253 bytes"),
    ("ключ", "name part must consist of"),  # unicode letters are not alphanumerics here
    ("é", "name part must consist of"),
    ("a\n", "name part must consist of"),  # Go's ^...$ takes no trailing newline
    ("xn--80ak6aa92e.com/é", "name part must consist of"),
    ("ünï.com/a", "prefix part must be a lowercase RFC 1123 subdomain"),
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_label_keys(key: str) -> None:
    assert label_key_error(key) is None
    assert label_key_error(key) is None  # and again, from the memo


@pytest.mark.parametrize(("key", "reason"), INVALID_KEYS)
def test_invalid_label_keys(key: str, reason: str) -> None:
    error = label_key_error(key)
    assert error is not None and reason in error
    assert label_key_error(key) == error  # a bad key is never remembered as good


@pytest.mark.parametrize("value", ["", "a", "A", "web", "v1.2.3", "a_b-c.d", "0", N63, "true"])
def test_valid_label_values(value: str) -> None:
    assert label_value_error(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a" * 64, "must be no more than 63 bytes"),
        ("-a", "a label value must be empty or consist of"),
        ("a.", "a label value must be empty or consist of"),
        ("a/b", "a label value must be empty or consist of"),
        ("a b", "a label value must be empty or consist of"),
        ("é", "a label value must be empty or consist of"),
        ("web\n", "a label value must be empty or consist of"),
        # 32 two-byte characters are 64 bytes: over the limit in bytes, not characters
        ("é" * 32, "must be no more than 63 bytes"),
    ],
)
def test_invalid_label_values(value: str, reason: str) -> None:
    error = label_value_error(value)
    assert error is not None and reason in error


def test_check_labels_names_the_bad_key_or_value() -> None:
    check_labels({"app": "web", "example.com/tier": ""})
    with pytest.raises(ValueError, match=r'^"app/x/y": a label key is a name'):
        check_labels({"ok": "1", "app/x/y": "a"})
    with pytest.raises(ValueError, match=r'^"-web": a label value must be empty'):
        check_labels({"app": "-web"})


def test_every_bad_label_is_named_in_one_message() -> None:
    """As the API server lists every field error: each bad key and value, in order, those
    with the same reason together."""
    with pytest.raises(ValueError) as caught:
        check_labels({"app/x/y": "a", "ok": "-x", "b c": "fine", "d e": "also-fine"})
    message = str(caught.value)
    assert message.startswith('"app/x/y": a label key is a name')
    assert '; "-x": a label value must be empty' in message
    assert '; "b c", "d e": name part must consist of' in message
    with pytest.raises(ValueError) as caught:
        check_annotations({"a b": "", "fine": "x", "c/d/e": "y" * ANNOTATIONS_MAX})
    message = str(caught.value)
    assert message.startswith('"a b": name part must')
    assert '; "c/d/e": a label key is a name' in message
    assert message.endswith(
        f"must have at most {ANNOTATIONS_MAX} bytes in all keys and values, not {ANNOTATIONS_MAX + 13}"
    )


def test_every_bad_label_of_a_manifest_is_reported() -> None:
    text = _manifest(labels={"app/x/y": "a", "tier": "-web", "ok": "yes"})
    (err,) = load_text(text, "svc.json").errors
    assert err.field == "metadata.labels"
    assert err.message.startswith('"app/x/y": a label key is a name')
    assert '"-web": a label value must be empty' in err.message
    assert '"ok"' not in err.message and '"yes"' not in err.message


def test_every_bad_selector_requirement_is_reported() -> None:
    with pytest.raises(ValidationError) as caught:
        LabelSelector.model_validate(
            {"matchExpressions": [
                {"key": "a/b/c", "operator": "Exists"},
                {"key": "app", "operator": "In", "values": ["ok"]},
                {"key": "app", "operator": "Equals", "values": ["x"]},
            ]}
        )  # fmt: skip
    message = str(caught.value)
    assert "matchExpressions[0].key: " in message
    assert "matchExpressions[2].operator: " in message
    assert "matchExpressions[1]" not in message


@pytest.mark.parametrize(
    ("annotations", "error"),
    [
        ({"Example.COM/Some-Key": "x"}, None),  # case is ignored in annotation keys
        ({"kubectl.kubernetes.io/last-applied-configuration": "{...} any text"}, None),
        ({"a/b/c": "x"}, '"a/b/c": a label key is a name'),
        ({"": "x"}, '"": name part must be non-empty'),
        ({"a": "x" * (ANNOTATIONS_MAX - 1)}, None),  # exactly at the limit
        ({"a": "x" * ANNOTATIONS_MAX}, f"at most {ANNOTATIONS_MAX} bytes in all"),
        ({"a": "x" * 100_000, "b": "y" * 100_000, "c": "z" * 62_141}, None),
        ({"a": "x" * 100_000, "b": "y" * 100_000, "c": "z" * 62_142}, "not 262145"),
        # counted in bytes: 65,536 four-byte characters are 262,144 bytes plus the key
        ({"a": "\U0001f600" * 65_536}, "not 262145"),
    ],
)
def test_annotations(annotations: dict[str, str], error: str | None) -> None:
    if error is None:
        check_annotations(annotations)
    else:
        with pytest.raises(ValueError, match=error):
            check_annotations(annotations)


@pytest.mark.parametrize(
    ("key", "operator", "values", "expected"),
    [
        ("app", "In", ["a", "b"], None),
        ("app", "NotIn", ["a"], None),
        ("app", "Exists", [], None),
        ("app", "DoesNotExist", [], None),
        ("example.com/app", "In", [""], None),  # the empty value is a label value
        ("app", "In", [], "values"),
        ("app", "NotIn", [], "values"),
        ("app", "Exists", ["a"], "values"),
        ("app", "DoesNotExist", ["a"], "values"),
        ("app", "in", ["a"], "operator"),  # operators are case sensitive
        ("app", "Equals", ["a"], "operator"),
        ("app", "", [], "operator"),
        ("a/b/c", "Exists", [], "key"),
        ("", "Exists", [], "key"),
        ("app", "In", ["ok", "-bad"], "values[1]"),
        ("app", "In", ["x" * 64], "values[0]"),
    ],
)
def test_selector_requirements(
    key: str, operator: str, values: list[str], expected: str | None
) -> None:
    found = requirement_error(key, operator, values)
    assert (found[0] if found else None) == expected


def test_label_selector_model_matches_and_validates() -> None:
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.matches({"team": "a", "env": "prod"})
    assert not sel.matches({"team": "a", "env": "dev"})
    assert not sel.matches({"team": "a", "env": "prod", "legacy": "1"})
    assert not sel.matches({"env": "prod"})
    assert LabelSelector().matches({})
    with pytest.raises(ValidationError, match=r"matchExpressions\[0\]\.values: must be specified"):
        LabelSelector.model_validate({"matchExpressions": [{"key": "a", "operator": "In"}]})
    with pytest.raises(ValidationError, match='"a b": name part'):
        LabelSelector.model_validate({"matchLabels": {"a b": "x"}})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("app/x/y=a", "invalid label key 'app/x/y'"),
        ("Example.com/a=b", "invalid label key 'Example.com/a'"),
        (f"{'k' * 64}=v", "name part must be no more than 63 bytes"),
        ("app=-web", "invalid label value '-web'"),
        ("app in (ok,-bad)", "invalid label value '-bad'"),
        ("!a/b/c", "invalid label key 'a/b/c'"),
    ],
)
def test_kubectl_selectors_use_the_same_rules(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_selector(text)


def test_kubectl_selector_at_the_limits_parses() -> None:
    sel = parse_selector(f"{P253}/{N63}={N63},app in (a, b)")
    assert sel.matches({f"{P253}/{N63}": N63, "app": "b"})


def _manifest(**metadata: Any) -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ok"}, "spec": {"ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", **metadata}, "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"team": "a"}}},
    ]  # fmt: skip
    return json.dumps(docs)


@pytest.mark.parametrize(
    ("metadata", "field", "message"),
    [
        ({"labels": {"app/x/y": "a"}}, "metadata.labels", '"app/x/y": a label key is a name'),
        ({"labels": {"app": "a b"}}, "metadata.labels", '"a b": a label value must be empty'),
        ({"annotations": {"a b": ""}}, "metadata.annotations", '"a b": name part must'),
    ],
)
def test_a_bad_label_fails_its_object_alone(
    metadata: dict[str, Any], field: str, message: str
) -> None:
    result = load_text(_manifest(**metadata), "svc.json")
    assert [o.name for o in result.objects] == ["ok", "team"]
    assert len(result.errors) == 1
    err = result.errors[0]
    assert (err.source, err.object, err.field) == ("svc.json", "Service/default/bad", field)
    assert err.message.startswith(message)
    assert str(err).startswith(f"svc.json: Service/default/bad: {field}: {message}")
    assert err.key == ("Service", "default", "bad")  # the last good version is kept


def test_a_bad_service_selector_names_spec_selector() -> None:
    text = _manifest().replace('"selector": {"app": "web"}', '"selector": {"app": "-web"}')
    result = load_text(text, "svc.json")
    assert [(e.field, e.message[:7]) for e in result.errors] == [("spec.selector", '"-web":')]


def test_gateway_namespace_selector_expressions_are_checked() -> None:
    gateway = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: mesh
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchExpressions: [{key: team, operator: Exists, values: [a]}]
"""
    result = load_text(gateway, "gw.yaml")
    assert [str(e) for e in result.errors] == [
        "gw.yaml: Gateway/default/gw: spec.listeners[0].allowedRoutes.namespaces.selector"
        ".matchExpressions[0].values: may not be specified when `operator` is 'Exists' or"
        " 'DoesNotExist'"
    ]


def test_namespace_labels_are_checked_at_construction() -> None:
    with pytest.raises(ValidationError, match=r"metadata\.labels"):
        Namespace.model_validate({"metadata": {"name": "a", "labels": {"-x": "1"}}})


@pytest.mark.parametrize(
    ("namespace", "ok"),
    [("default", True), ("kube-system", True), ("a" * 63, True), ("a" * 64, False), ("Team_A", False), ("a.b", False), ("-a", False)],
)  # fmt: skip
def test_namespace_names_are_dns_labels(namespace: str, ok: bool) -> None:
    doc = {"metadata": {"name": "web", "namespace": namespace}, "spec": {"ports": [{"port": 80}]}}
    result = load_text(json.dumps({"apiVersion": "v1", "kind": "Service", **doc}), "s.json")
    assert [o.namespace for o in result.objects] == ([namespace] if ok else [])
    assert [e.field for e in result.errors] == ([] if ok else ["metadata.namespace"])
