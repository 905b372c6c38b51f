"""The manifest loader: many objects per file, one clear error per bad object."""

from __future__ import annotations

import json
import textwrap

import pytest

from mesh.manifests import load_text
from mesh.objects import Pod, Service

GOOD = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: http}]
"""


def y(text: str) -> str:
    return textwrap.dedent(text)


def test_multi_document_yaml() -> None:
    text = GOOD + "---\n" + "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\n"
    result = load_text(text, "app.yaml")
    assert [o.key for o in result.objects] == [("Service", "shop", "web"), ("Pod", "default", "p")]
    assert result.errors == [] and result.warnings == []


def test_bad_object_reports_file_object_and_field_and_keeps_the_rest() -> None:
    text = (
        y(
            """
        apiVersion: v1
        kind: Service
        metadata: {name: bad}
        spec:
          ports: [{port: 80, protocol: ICMP}]
        ---
        """
        )
        + GOOD
    )
    result = load_text(text, "dir/app.yaml")
    assert [o.name for o in result.objects] == ["web"]
    assert len(result.errors) == 1
    err = result.errors[0]
    assert err.source == "dir/app.yaml"
    assert err.object == "Service/default/bad"
    assert err.field == "spec.ports[0].protocol"
    assert err.key == ("Service", "default", "bad")
    assert str(err).startswith("dir/app.yaml: Service/default/bad: spec.ports[0].protocol: ")


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ({"kind": "Service", "metadata": {"name": "a"}, "spec": {}}, "spec.ports", "at least one"),
        ({"kind": "Service", "metadata": {"name": "A"}, "spec": {}}, "metadata.name", "DNS-1123"),
        (
            {
                "kind": "Service",
                "metadata": {"name": "a"},
                "spec": {"ports": [{"port": 1, "targetPort": "No_Such"}]},
            },
            "spec.ports[0].targetPort",
            "not a valid port name",
        ),
        (
            {"kind": "Service", "apiVersion": "v2", "metadata": {"name": "a"}},
            "apiVersion",
            "not supported",
        ),
        ({"kind": "Pod"}, "metadata", "missing"),
        (
            {"kind": "Pod", "metadata": {"name": "p", "labels": {"on": True}}},
            "metadata.labels.on",
            "string",
        ),
        ({"metadata": {"name": "p"}}, "kind", "missing"),
    ],
)
def test_error_fields(doc: dict[str, object], field: str, needle: str) -> None:
    result = load_text(json.dumps(doc), "f.json")
    assert result.objects == []
    [err] = result.errors
    assert err.field == field
    assert needle in err.message


def test_unknown_kind_is_a_warning() -> None:
    result = load_text(
        "apiVersion: x/v1\nkind: Widget\nmetadata: {name: w}\n---\n" + GOOD, "f.yaml"
    )
    assert len(result.objects) == 1
    assert result.errors == []
    assert result.warnings == ["f.yaml: ignoring unknown kind 'Widget'"]


def test_kind_list_and_typed_list() -> None:
    text = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}},
                {
                    "kind": "ServiceList",
                    "apiVersion": "v1",
                    "items": [{"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]}}],
                },
            ],
        }
    )
    result = load_text(text, "l.json")
    assert [o.key for o in result.objects] == [("Pod", "default", "a"), ("Service", "default", "s")]
    assert load_text("kind: List\napiVersion: v1\nitems: []\n").objects == []
    assert load_text("kind: List\napiVersion: v1\n").warnings == []


def test_json_array_and_object() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}
    assert len(load_text(json.dumps(pod)).objects) == 1
    assert len(load_text(json.dumps([pod, pod])).objects) == 2


def test_invalid_json_is_one_error() -> None:
    result = load_text('{"kind": ', "x.json")
    assert result.objects == []
    [err] = result.errors
    assert "invalid JSON" in err.message and err.source == "x.json"


def test_yaml_syntax_error_keeps_earlier_documents() -> None:
    result = load_text(GOOD + "---\nkind: Pod\nmetadata: {name: [\n", "f.yaml")
    assert [o.name for o in result.objects] == ["web"]
    [err] = result.errors
    assert "invalid YAML at line" in err.message
    assert err.key is None


def test_non_object_document() -> None:
    result = load_text("- just\n- a list\n", "f.yaml")
    assert len(result.errors) == 1
    assert "expected an object" in result.errors[0].message


def test_empty_documents_are_skipped() -> None:
    assert load_text("---\n---\n").objects == []


def test_timestamps_stay_strings() -> None:
    result = load_text(
        "kind: Pod\napiVersion: v1\nmetadata: {name: p, deletionTimestamp: 2024-05-01T10:00:00Z}\n"
    )
    [pod] = result.objects
    assert isinstance(pod, Pod)
    assert pod.metadata.deletion_timestamp == "2024-05-01T10:00:00Z"
    assert pod.terminating


def test_defaults_applied_on_load() -> None:
    [obj] = load_text(GOOD).objects
    assert isinstance(obj, Service)
    assert obj.spec.ports[0].protocol == "TCP"
    assert obj.spec.ports[0].target_port == "http"
    assert obj.spec.type == "ClusterIP"
