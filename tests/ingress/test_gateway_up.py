"""``mesh up`` with Ingress and Gateway API objects: traffic through a Gateway's own address,
and the status the control plane writes back, as ``mesh get`` shows it."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import httpx
import yaml

from mesh.ingress import echo
from tests.ingress.up_manifests import ECHO_SHOP
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc, listen_anywhere

GATEWAY_IP = "127.11.77.7"

MANIFESTS = (
    ECHO_SHOP.replace("{pod}", "echo-1")
    + """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: shop}}
spec:
  gatewayClassName: mesh
  addresses: [{{type: IPAddress, value: {gateway_ip}}}]
  listeners:
  - {{name: http, protocol: HTTP, port: {gateway_port}}}
  - name: https
    protocol: HTTPS
    port: {tls_port}
    tls: {{mode: Terminate, certificateRefs: [{{name: missing}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{name: web, sectionName: http}}]
  hostnames: [echo.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-route, value: echo}}]}}
    backendRefs: [{{name: echo, port: 80}}]
"""
)


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=30)


def test_gateway_api_and_ingress_through_mesh_up(tmp_path: Path) -> None:
    echo_ip = "127.23.0.1"
    (server,) = echo.serve("echo", [(echo_ip, 0)])
    gateway_port = random.randrange(20000, 30000)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(
        MANIFESTS.format(
            echo_ip=echo_ip,
            echo_port=server.server_address[1],
            gateway_ip=GATEWAY_IP,
            gateway_port=gateway_port,
            tls_port=gateway_port + 1,
        )
    )
    args = ["up", "-f", str(manifests), "--no-proxy", "--upstream", "127.0.0.1:9"]
    args += listen_anywhere()
    proc = Proc(args, {"control", "gateway", "admin"})
    try:
        control = ["--control", proc.url("control")]
        gateway = proc.url("gateway")

        # Traffic: an Ingress on --gateway-listen, an HTTPRoute on the Gateway's own address.
        r = httpx.get(f"{gateway}/", headers={"host": "shop.example.com"}, timeout=5)
        assert (r.status_code, r.headers["x-echo"]) == (200, "echo")

        def routed() -> bool:
            url = f"http://{GATEWAY_IP}:{gateway_port}/v1/x"
            try:
                got = httpx.get(url, headers={"host": "echo.example.com"}, timeout=5)
            except httpx.HTTPError:
                return False
            return got.status_code == 200 and got.json()["headers"].get("x-route") == "echo"

        wait_for(routed, timeout=10)
        other = httpx.get(
            f"http://{GATEWAY_IP}:{gateway_port}/v1", headers={"host": "x.example"}, timeout=5
        )
        assert (other.status_code, other.headers["x-mesh-reason"]) == (404, "no-route")

        # Status written back into the store, as kubectl would show it.
        def ingress_has_address() -> bool:
            rows = mesh("get", "ingress", "-n", "shop", *control).stdout.splitlines()
            return len(rows) == 2 and "127.0.0.1" in rows[1].split()

        wait_for(ingress_has_address, timeout=10)
        gw = yaml.safe_load(
            mesh("get", "gateway", "web", "-n", "shop", "-o", "yaml", *control).stdout
        )
        status = gw["status"]
        assert status["addresses"] == [{"type": "IPAddress", "value": GATEWAY_IP}]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Accepted"]["status"] == "True"
        listeners = {item["name"]: item for item in status["listeners"]}
        http = {c["type"]: c["status"] for c in listeners["http"]["conditions"]}
        assert http["Programmed"] == "True"
        assert listeners["http"]["attachedRoutes"] == 1
        https = {c["type"]: c for c in listeners["https"]["conditions"]}
        assert https["ResolvedRefs"]["status"] == "False"  # reported, never silently dropped
        assert https["ResolvedRefs"]["reason"] == "InvalidCertificateRef"

        route = json.loads(
            mesh("get", "httproute", "echo", "-n", "shop", "-o", "json", *control).stdout
        )
        (parent,) = route["status"]["parents"]
        assert parent["controllerName"] == "mesh.dev/gateway"
        route_conditions = {c["type"]: c["status"] for c in parent["conditions"]}
        assert route_conditions == {"Accepted": "True", "ResolvedRefs": "True"}
        cls = yaml.safe_load(mesh("get", "gatewayclass", "mesh", "-o", "yaml", *control).stdout)
        assert {c["type"]: c["status"] for c in cls["status"]["conditions"]}["Accepted"] == "True"
    finally:
        proc.stop()
        server.shutdown()
        server.server_close()


def test_mesh_ingress_alone_from_a_control_plane_and_from_a_file(tmp_path: Path) -> None:
    echo_ip = "127.23.0.2"
    (server,) = echo.serve("alone", [(echo_ip, 0)])
    port = server.server_address[1]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(
        MANIFESTS.format(
            echo_ip=echo_ip,
            echo_port=port,
            gateway_ip=GATEWAY_IP,
            gateway_port=random.randrange(20000, 30000),
            tls_port=random.randrange(30000, 40000),
        ).replace("metadata: {name: echo-1,", "metadata: {name: echo-2,")
    )
    procs: list[Proc] = []
    try:
        control = Proc(
            ["control", "-f", str(manifests), "--control-listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0"],
            {"control"},
        )  # fmt: skip
        procs.append(control)
        gateway_args = ["--gateway-listen", "127.0.0.1:0", "--gateway-tls-listen", "127.0.0.1:0",
                        "--admin-listen", "127.0.0.1:0"]  # fmt: skip
        fed = Proc(
            ["ingress", "--control", control.url("control"), *gateway_args], {"gateway", "admin"}
        )
        procs.append(fed)

        def served_by_plane() -> bool:
            try:
                r = httpx.get(fed.url("gateway"), headers={"host": "shop.example.com"}, timeout=5)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.headers["x-echo"] == "alone"

        wait_for(served_by_plane, timeout=10)
        dumped = mesh("config", "dump", "ingress", "--admin", fed.url("admin"))
        assert dumped.returncode == 0, dumped.stderr
        config_file = tmp_path / "gateway.json"
        config_file.write_text(dumped.stdout)
        from_file = Proc(["ingress", "--config", str(config_file), *gateway_args], {"gateway"})
        procs.append(from_file)
        r = httpx.get(from_file.url("gateway"), headers={"host": "shop.example.com"}, timeout=5)
        assert (r.status_code, r.headers["x-echo"]) == (200, "alone")
        bad = mesh("ingress", "--gateway-listen", "nowhere", "--config", str(config_file))
        assert bad.returncode == 2 and "--gateway-listen" in bad.stderr
        both = mesh("ingress", "--config", str(config_file), "--control", "127.0.0.1:1")
        assert both.returncode == 2 and "exactly one of --control" in both.stderr
    finally:
        for proc in procs:
            proc.stop()
        server.shutdown()
        server.server_close()
