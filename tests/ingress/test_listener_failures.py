"""A Gateway listener whose socket cannot be opened at run time (a port the test holds) is
reported, retried, and reported bound once the port is free again; with ``mesh up`` the
report lands in the Gateway's status, as ``mesh get`` shows it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import yaml

from mesh.config.gateway import ListenerFailure
from mesh.ingress import gateway as gateway_module
from mesh.objects import KubeObject
from tests.ingress.harness import obj, served, start_gateway
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc, listen_anywhere

GATEWAY_IP = "127.11.78.9"


def gateway_objects(ip: str, port: int) -> list[KubeObject]:
    return [
        obj("GatewayClass", "mesh", "", spec={"controllerName": "mesh.dev/gateway"}),
        obj(
            "Gateway",
            "web",
            "default",
            spec={
                "gatewayClassName": "mesh",
                "addresses": [{"type": "IPAddress", "value": ip}],
                "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
            },
        ),
    ]


def hold_port(ip: str) -> socket.socket:
    held = socket.socket()
    held.bind((ip, 0))
    held.listen(1)
    return held


async def test_a_held_port_is_reported_then_cleared_when_it_binds(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "RETRY_LISTEN", 0.1)
    held = hold_port(GATEWAY_IP)
    port = held.getsockname()[1]
    reports: list[dict[str, ListenerFailure]] = []
    changed = trio.Event()

    def record(failures: Mapping[str, ListenerFailure]) -> None:
        reports.append(dict(failures))
        changed.set()

    config = served(*gateway_objects(GATEWAY_IP, port))
    gw = await start_gateway(nursery, None)
    gw.on_failures = record
    gw.apply(config)
    with trio.fail_after(5):
        await changed.wait()
    (failure,) = reports[-1].values()
    assert list(reports[-1]) == ["gateway/default/web/" + str(port)]
    assert "in use" in failure.message and f"{GATEWAY_IP}:{port}" in failure.message
    assert not failure.address_unusable
    changed = trio.Event()
    held.close()  # the port is free: the next try binds it and the report is cleared
    with trio.fail_after(5):
        await changed.wait()
    assert reports[-1] == {}
    with trio.fail_after(5):
        conn = await trio.open_tcp_stream(GATEWAY_IP, port)
    await conn.aclose()


async def test_an_address_that_is_not_local_is_reported_as_such(nursery: trio.Nursery) -> None:
    reports: list[dict[str, ListenerFailure]] = []
    reported = trio.Event()

    def record(failures: Mapping[str, ListenerFailure]) -> None:
        reports.append(dict(failures))
        reported.set()

    gw = await start_gateway(nursery, None)
    gw.on_failures = record
    # 192.0.2.0/24 (TEST-NET-1) is never a local address: binding it fails without traffic.
    gw.apply(served(*gateway_objects("192.0.2.1", 18080)))
    with trio.fail_after(5):
        await reported.wait()
    (failure,) = reports[-1].values()
    assert failure.address_unusable


MANIFESTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: mesh}}
spec: {{controllerName: mesh.dev/gateway}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  gatewayClassName: mesh
  addresses: [{{type: IPAddress, value: {ip}}}]
  listeners:
  - {{name: http, protocol: HTTP, port: {port}}}
"""


def test_mesh_up_writes_a_held_port_into_the_gateway_status(tmp_path: Path) -> None:
    ip = "127.11.78.10"
    held = hold_port(ip)
    port = held.getsockname()[1]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(MANIFESTS.format(ip=ip, port=port))
    args = ["up", "-f", str(manifests), "--no-proxy", "--upstream", "127.0.0.1:9"]
    proc = Proc([*args, *listen_anywhere()], {"control", "gateway", "admin"})
    try:
        control = ["--control", proc.url("control")]

        def listener_programmed() -> tuple[str, str, str] | None:
            done = subprocess.run(
                [*MESH, "get", "gateway", "web", "-o", "yaml", *control],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            status = (yaml.safe_load(done.stdout) or {}).get("status", {})
            for item in status.get("listeners", ()):
                for c in item.get("conditions", ()):
                    if c["type"] == "Programmed":
                        return (c["status"], c["reason"], c.get("message", ""))
            return None

        def pending() -> bool:
            found = listener_programmed()
            return found is not None and found[:2] == ("False", "Pending")

        wait_for(pending, timeout=15)
        found = listener_programmed()
        assert found is not None and f"{ip}:{port}" in found[2] and "in use" in found[2]
        held.close()  # free: the gateway binds it on its next try and the status clears

        def programmed() -> bool:
            return listener_programmed() == ("True", "Programmed", "")

        wait_for(programmed, timeout=20)
        with socket.create_connection((ip, port), timeout=5):
            pass  # and it is served
    finally:
        held.close()
        proc.stop()
