"""A bad object in a manifest is named ``Kind/namespace/name`` as far as it can be read,
whatever else is wrong with it (its metadata, its kind), in a List, in a JSON array; a
document that is not an object is named by its place, a file that is not YAML by itself.
Checked on the log of a real ``mesh control``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MESH = [sys.executable, "-m", "mesh.cli"]

FILES = {
    "meta.yaml": """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: [app]}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: 7}
spec: {ports: [{port: 5432}]}
---
apiVersion: v1
metadata: {name: nokind, namespace: shop}
---
just text
""",
    "list.yaml": """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: api, namespace: shop}
  spec: {ports: [{port: 99999}]}
- 42
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: typed, namespace: shop}
  spec: {ports: [{port: 0}]}
""",
    "array.json": json.dumps(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "a", "namespace": "x"},
                "spec": {"ports": [{"port": -1}]},
            },
            "oops",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"containers": "none"},
            },
        ]
    ),
    "broken.yaml": "kind: Service\nmetadata: {name: x\n",
}

EXPECTED = {
    "array.json: Service/x/a: spec.ports[0].port: Input should be greater than or equal to 1",
    "array.json: [1]: expected an object, got str",
    "array.json: Pod/x/p: spec.containers: Input should be a valid tuple",
    "broken.yaml: invalid YAML at line 3: did not find expected ',' or '}'",
    "list.yaml: Service/shop/api: spec.ports[0].port: Input should be less than or equal to 65535",
    "list.yaml: List/items[1]: expected an object, got int",
    "list.yaml: Service/shop/typed: spec.ports[0].port: Input should be greater than or equal to 1",
    "meta.yaml: Service/shop/web: metadata.labels: Input should be a valid dictionary",
    "meta.yaml: Service/7/db: metadata.namespace: Input should be a valid string",
    "meta.yaml: ?/shop/nokind: kind: missing or not a string",
    'meta.yaml: the document "just text": expected an object, got str',
}


def test_bad_objects_are_named_as_far_as_they_can_be_read(tmp_path: Path) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.Popen(
        [*MESH, "control", "-f", str(tmp_path), "--control-listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while not proc.stdout.readline().startswith("admin"):  # serving: every file read
            assert time.monotonic() < deadline and proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    prefix = f"invalid manifest: {tmp_path}/"
    said = {
        r["msg"].removeprefix(prefix)
        for r in map(json.loads, err.splitlines())
        if r["msg"].startswith("invalid manifest")
    }
    assert said == EXPECTED
    assert "Traceback" not in err
