"""``mesh get endpoints`` of a real ``mesh control``: a Pod whose Service names a targetPort
the Pod does not declare is in an EndpointSlice of no port, and in no Endpoints subset, as
the Kubernetes endpoints controller leaves it out (kubectl get endpoints would not list it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  containers: [{name: web, image: web, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 127.20.9.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: default, labels: {app: web}}
spec:
  containers: [{name: web, image: web, ports: [{name: metrics, containerPort: 9090}]}]
status: {phase: Running, podIP: 127.20.9.12}
"""


def get(control: str, *args: str) -> list[str]:
    done = subprocess.run(
        [*MESH, "get", *args, "--control", control], capture_output=True, text=True, timeout=30
    )
    return done.stdout.splitlines()[1:]


def test_a_pod_without_the_named_target_port_is_no_endpoint(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(MANIFESTS)
    local = ["127.0.0.1:0"]
    plane = Proc(
        ["control", "-f", str(tmp_path), "--control-listen", *local, "--admin-listen", *local],
        {"control"},
    )
    try:
        control = plane.url("control")
        wait_for(lambda: len(get(control, "endpointslices")) == 2, timeout=20)
        slices = sorted(row.split()[2:4] for row in get(control, "endpointslices"))
        assert slices == [["8080", "127.20.9.11"], ["<unset>", "127.20.9.12"]]
        (row,) = get(control, "endpoints")
        assert row.split()[:2] == ["web", "127.20.9.11:8080"]
    finally:
        plane.stop()
