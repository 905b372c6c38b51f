"""Fields Kubernetes does not know, in manifests read from files (kubectl's strict
validation), and the generated field tables behind the check."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import trio
from pydantic import BaseModel

from mesh import kube_fields, kube_fields_data, kube_fields_gen
from mesh.control.source_dir import DirSource
from mesh.control.store import Store
from mesh.kube_fields import parse, unknown_fields
from mesh.manifests import load_text, parse_object
from mesh.objects import KINDS, KubeObject, Service


def test_checked_in_table_matches_the_installed_client() -> None:
    """The client part of kube_fields_data is what the pinned client gives today: the
    table cannot fall behind (regenerate: python -m mesh.kube_fields_gen)."""
    version, types = kube_fields_gen.client_types()
    assert kube_fields_data.CLIENT_VERSION == version
    stored = parse(kube_fields_data.TYPES)
    client_part = {n: f for n, f in stored.items() if not n.startswith("gw.")}
    assert client_part == types
    gateway_part = {n: f for n, f in stored.items() if n.startswith("gw.")}
    expected = kube_fields_gen.render(version, {**types, **gateway_part})
    with open(kube_fields_data.__file__, encoding="utf-8") as f:
        assert f.read() == expected


def test_every_kind_has_a_table() -> None:
    # A kind added to mesh/objects.py needs its field names (kube_fields_gen's lists).
    assert sorted(KINDS) == sorted(kube_fields_data.KINDS)
    for kind in KINDS:
        assert kube_fields.has_table(kind)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def test_every_field_the_models_read_is_a_kubernetes_field() -> None:
    """Else a manifest setting a field the mesh reads would be refused as unknown."""
    compiled = kube_fields._compile()
    missing: list[str] = []
    seen: set[tuple[type, str]] = set()

    def walk(cls: type[BaseModel], t: Any, path: str) -> None:
        if (cls, t.name) in seen:
            return
        seen.add((cls, t.name))
        for name, info in cls.model_fields.items():
            alias = info.alias or name
            if alias not in t.known:
                missing.append(f"{path}.{alias}")
                continue
            for model in _models_in(info.annotation):
                child = t.children.get(alias)
                if child is None:
                    missing.append(f"{path}.{alias} (no object type in the table)")
                else:
                    walk(model, child[1], f"{path}.{alias}")

    for kind, cls in KINDS.items():
        walk(cls, compiled[kind], kind)
    assert missing == []


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}


@pytest.mark.parametrize(
    ("doc", "unknown"),
    [
        ({**SERVICE, "spec": {"ports": [{"port": 80}]}}, []),
        ({**SERVICE, "sepc": {}}, ["sepc"]),
        ({**SERVICE, "metdata": {}}, ["metdata"]),
        ({**SERVICE, "spec": {"selecter": {"a": "b"}}}, ["spec.selecter"]),
        ({**SERVICE, "spec": {"ports": [{"port": 1}, {"port": 2, "nme": "x"}]}}, ["spec.ports[1].nme"]),
        ({**SERVICE, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipp": 1}]}}}, ["status.loadBalancer.ingress[0].ipp"]),
        ({**SERVICE, "spec": {"a": 1, "b": 2}, "c": 3}, ["spec.a", "spec.b", "c"]),
        # label maps, annotations and free-form fields are not walked
        ({**SERVICE, "metadata": {"name": "x", "labels": {"anything": "1"}, "annotations": {"x": "y"}}}, []),
        ({**SERVICE, "metadata": {"name": "x", "managedFields": [{"fieldsV1": {"f:spec": {}}}]}}, []),
        ({**SERVICE, "metadata": {"name": "x", "ownerReferences": [{"kind": "A", "nmae": "b"}]}}, ["metadata.ownerReferences[0].nmae"]),
        # a wrong type is the models' to report, not a crash here
        ({**SERVICE, "spec": "text", "status": []}, []),
        ({**SERVICE, "spec": {"ports": {"port": 80}}}, []),
        # maps of objects are walked into (a Pod's overhead is a plain map: not walked)
        ({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"overhead": {"cpu": "1"}, "containers": [{"name": "c", "resources": {"claims": [{"name": "a", "requst": "b"}]}}]}}, ["spec.containers[0].resources.claims[0].requst"]),
        ({"kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": {"rules": [{"backendRefs": [{"name": "s", "wieght": 1}]}]}}, ["spec.rules[0].backendRefs[0].wieght"]),
        ({"kind": "NoSuchKind", "sepc": {}}, []),
    ],
)  # fmt: skip
def test_unknown_fields(doc: dict[str, Any], unknown: list[str]) -> None:
    assert unknown_fields(doc, str(doc["kind"])) == unknown


# Fields Kubernetes (or the Gateway API) knows and the models do not read: they load silently.
KNOWN_UNMODELED = """
apiVersion: v1
kind: Service
metadata:
  name: web
  generateName: web-
  finalizers: [example.com/keep]
  managedFields: [{manager: kubectl, operation: Apply, fieldsType: FieldsV1, fieldsV1: {"f:spec": {}}}]
spec:
  ports: [{port: 80, name: http}]
  selector: {app: web}
  allocateLoadBalancerNodePorts: true
  loadBalancerSourceRanges: [10.0.0.0/8]
  trafficDistribution: PreferClose
---
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: web}}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 5
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]
  containers:
  - name: app
    image: example/app
    imagePullPolicy: IfNotPresent
    env: [{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
    resources: {limits: {cpu: "1"}, requests: {memory: 10Mi}}
    securityContext: {runAsNonRoot: true, capabilities: {drop: [ALL]}}
  volumes: [{name: v, configMap: {name: c, items: [{key: a, path: b}]}}]
status: {phase: Running, podIP: 10.0.0.5, hostIP: 192.168.0.1, qosClass: Burstable}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - name: main
    backendRefs: [{name: web, port: 80}]
    sessionPersistence: {sessionName: s, type: Cookie}
    filters:
    - type: CORS
      cors: {allowOrigins: ["https://example.com"]}
"""


def test_fields_kubernetes_knows_load_silently() -> None:
    result = load_text(KNOWN_UNMODELED, "known.yaml")
    # the CORS filter is refused by the model (a type the mesh does not support), not as
    # an unknown field
    assert [(e.object, e.field) for e in result.errors] == [
        ("HTTPRoute/default/r", "spec.rules[0].filters[0].type")
    ]
    assert [o.key for o in result.objects] == [
        ("Service", "default", "web"),
        ("Pod", "default", "p"),
    ]
    assert result.warnings == []


TYPOS = [
    ("sepc:\n  ports: [{port: 80}]", "sepc", 'unknown field "sepc" (did you mean "spec"?)'),
    ("spec:\n  ports: [{port: 80}]\n  selecter: {app: web}", "spec.selecter", 'unknown field "selecter" (did you mean "selector"?)'),
    ("spec:\n  ports: [{port: 80, targetPrt: 8080}]", "spec.ports[0].targetPrt", 'unknown field "targetPrt" (did you mean "targetPort"?)'),
    ("spec:\n  ports: [{port: 80}]\n  a: 1\n  b: 2", "spec.a", 'unknown field "a"; also unknown: spec.b'),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "message"), TYPOS)
def test_a_typo_fails_its_object_alone(body: str, field: str, message: str) -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: before}\nspec: {ports: [{port: 80}]}\n"
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\n{body}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\ndata: {a: b}\n"
    )
    result = load_text(text, "dir/app.yaml")
    assert [o.name for o in result.objects] == ["before", "after"]
    assert [str(e) for e in result.errors] == [
        f"dir/app.yaml: Service/default/bad: {field}: {message}"
    ]
    assert result.errors[0].key == ("Service", "default", "bad")


def test_a_typo_in_metadata_is_named_before_the_missing_metadata() -> None:
    text = json.dumps({"apiVersion": "v1", "kind": "Service", "metdata": {"name": "web"}})
    result = load_text(text, "svc.json")
    assert [str(e) for e in result.errors] == [
        'svc.json: Service/default/?: metdata: unknown field "metdata" (did you mean "metadata"?)'
    ]


def test_items_of_a_list_are_checked_each() -> None:
    text = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ServiceList",
            "metadata": {"resourceVersion": "1"},
            "items": [
                {"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}},
                {"metadata": {"name": "b"}, "spec": {"ports": [{"port": 80}], "tpye": "x"}},
            ],
        }
    )
    result = load_text(text, "list.json")
    assert [o.name for o in result.objects] == ["a"]
    assert [(e.object, e.field) for e in result.errors] == [("Service/default/b", "spec.tpye")]


def test_objects_from_an_api_server_are_not_checked_for_unknown_fields() -> None:
    doc = {**SERVICE, "spec": {"ports": [{"port": 80}], "fieldOfANewerServer": True}}
    assert isinstance(parse_object(doc, "kube", strict_fields=False), KubeObject)
    refused = parse_object(doc, "file.yaml")
    assert not isinstance(refused, KubeObject) and refused is not None


async def test_a_typo_in_an_edited_file_keeps_the_last_good_version(tmp_path: Path) -> None:
    """Through the manifest directory that ``mesh up -f`` and ``mesh control -f`` read: the
    typo is reported naming file, object and field; the object keeps serving as it was; the
    file's other objects take their edits; fixing the typo heals it."""
    good = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n"
    other = (
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: %d}]}\n"
    )
    store = Store()
    source = DirSource(tmp_path, store)
    path = tmp_path / "app.yaml"

    def selector() -> dict[str, str] | None:
        obj = store.get("Service", "default", "web")
        return obj.spec.selector if isinstance(obj, Service) else None

    def other_port() -> int | None:
        obj = store.get("Service", "default", "other")
        return obj.spec.ports[0].port if isinstance(obj, Service) else None

    def write(text: str) -> None:
        # Whole, as editors and kubectl-style tools write (a rename), never half a file.
        tmp = tmp_path / ".app.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(200):
            if check():
                return
            await trio.sleep(0.01)
        raise AssertionError("condition not met within 2 s")

    async with trio.open_nursery() as nursery:
        path.write_text(good + other % 80)
        await nursery.start(source.run)
        assert selector() == {"app": "web"} and source.errors == []
        write(good.replace("selector: {app: web}", "selecter: {app: api}") + other % 81)
        await until(lambda: other_port() == 81)
        assert selector() == {"app": "web"}  # not a Service without its selector
        assert [str(e) for e in source.errors] == [
            f'{path}: Service/default/web: spec.selecter: unknown field "selecter" (did you mean "selector"?)'
        ]
        write(good.replace("app: web", "app: api") + other % 81)
        await until(lambda: selector() == {"app": "api"})
        assert source.errors == []
        nursery.cancel_scope.cancel()


def test_a_typo_in_a_list_is_named_and_its_items_still_load() -> None:
    service = {"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}
    typo = json.dumps({"apiVersion": "v1", "kind": "List", "itmes": [service]})
    result = load_text(typo, "list.json")
    assert [str(e) for e in result.errors] == [
        'list.json: List: itmes: unknown field "itmes" (did you mean "items"?)'
    ]
    extra = {
        "apiVersion": "v1",
        "kind": "ServiceList",
        "metadata": {},
        "extra": 1,
        "items": [service],
    }
    result = load_text(json.dumps(extra), "list.json")
    assert [o.name for o in result.objects] == ["a"]
    assert [(e.object, e.field) for e in result.errors] == [("ServiceList", "extra")]


def test_crd_field_lists_merge_versions_and_keep_free_form_fields_open(tmp_path: Path) -> None:
    def crd(kind: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
        return {"spec": {"names": {"kind": kind}, "versions": versions}}

    v1 = {
        "properties": {
            "spec": {
                "properties": {
                    "rules": {
                        "type": "array",
                        "items": {"properties": {"name": {"type": "string"}}},
                    },
                    "options": {"type": "object", "additionalProperties": {"type": "string"}},
                    "extra": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {"a": {}},
                    },
                    "byName": {
                        "type": "object",
                        "additionalProperties": {"properties": {"port": {"type": "integer"}}},
                    },
                }
            }
        }
    }
    v2 = {"properties": {"spec": {"properties": {
        "rules": {"type": "array", "items": {"properties": {"weight": {"type": "integer"}}}},
    }}}}  # fmt: skip
    for kind, plural in kube_fields_gen.GATEWAY_KINDS.items():
        versions = [{"schema": {"openAPIV3Schema": v}} for v in (v1, v2)]
        (tmp_path / f"{plural}.yaml").write_text(json.dumps(crd(kind, versions)))
    types = kube_fields_gen.gateway_types(tmp_path)
    assert types["gw.HTTPRoute"] == {"spec": "gw.HTTPRoute.spec", "metadata": "V1ObjectMeta"}
    assert types["gw.HTTPRoute.spec"] == {
        "rules": "[gw.HTTPRoute.spec.rules",
        "options": "",  # a map of strings: keys are free
        "extra": "",  # x-kubernetes-preserve-unknown-fields: anything goes
        "byName": "{gw.HTTPRoute.spec.byName.*",
    }
    assert types["gw.HTTPRoute.spec.rules"] == {"name": "", "weight": ""}  # both versions
    assert types["gw.HTTPRoute.spec.byName.*"] == {"port": ""}
