"""``mesh control`` and ``mesh ingress --control`` as separate processes: a Gateway
listener whose port the test holds is reported back over the config stream server's
``POST /v1/reports/ingress`` and shows in ``mesh get gateway -o yaml`` (Programmed False,
Pending, the gateway's sentence), again after the control plane restarts; released, the
gateway binds it and the status clears."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.ingress.test_listener_failures import MANIFESTS, hold_port
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc

LOCAL = ["127.0.0.1:0"]


def gateway_status(control: str) -> dict[str, Any]:
    """The status of Gateway ``web`` as ``mesh get gateway -o yaml`` shows it."""
    done = subprocess.run(
        [*MESH, "get", "gateway", "web", "-o", "yaml", "--control", control],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    status: dict[str, Any] = (yaml.safe_load(done.stdout) or {}).get("status", {})
    return status


def _programmed(conditions: list[dict[str, str]]) -> tuple[str, str, str] | None:
    for c in conditions:
        if c["type"] == "Programmed":
            return (c["status"], c["reason"], c.get("message", ""))
    return None


def listener_programmed(control: str) -> tuple[str, str, str] | None:
    for item in gateway_status(control).get("listeners", ()):
        found = _programmed(item.get("conditions", ()))
        if found is not None:
            return found
    return None


def gateway_programmed(control: str) -> tuple[str, str, str] | None:
    return _programmed(gateway_status(control).get("conditions", ()))


def write_manifests(tmp_path: Path, ip: str, port: int) -> Path:
    """A directory with the Gateway listening on ``ip:port``."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(MANIFESTS.format(ip=ip, port=port))
    return manifests


def start_control(manifests: Path, listen: str = LOCAL[0]) -> Proc:
    return Proc(
        ["control", "-f", str(manifests), "--control-listen", listen, "--admin-listen", *LOCAL],
        {"control"},
    )


def start_ingress(control: str) -> Proc:
    return Proc(
        ["ingress", "--control", control, "--gateway-listen", *LOCAL,
         "--gateway-tls-listen", *LOCAL, "--admin-listen", *LOCAL],
        {"gateway", "admin"},
    )  # fmt: skip


def test_a_separate_gateway_reports_a_held_port_into_the_gateway_status(tmp_path: Path) -> None:
    ip = "127.11.78.11"
    held = hold_port(ip)
    port = held.getsockname()[1]
    manifests = write_manifests(tmp_path, ip, port)
    procs: list[Proc] = []
    try:
        plane = start_control(manifests)
        procs.append(plane)
        control = plane.url("control")
        gateway = start_ingress(control)
        procs.append(gateway)

        def pending() -> bool:
            found = listener_programmed(control)
            return found is not None and found[:2] == ("False", "Pending")

        wait_for(pending, timeout=20)
        found = listener_programmed(control)
        assert found is not None and f"{ip}:{port}" in found[2] and "in use" in found[2]
        live = httpx.get(f"{control}/v1/reports/ingress", timeout=5).json()
        (instance,) = live
        assert instance.endswith(f"/{gateway.addresses['gateway'][1]}")
        assert live[instance]["entries"] == [f"gateway/default/web/{port}"]
        assert 0 < live[instance]["expiresInSeconds"] <= 30
        state = httpx.get(f"{gateway.url('admin')}/config/ingress", timeout=5).json()
        report = state["report"]
        assert report["url"] == f"{control}/v1/reports/ingress"
        assert report["instance"] == instance and report["lastError"] == ""
        assert report["posted"] >= 1

        # The control plane restarts (on its port, with nothing reported): the gateway's
        # config stream reconnects, and the gateway posts its report again.
        plane.stop()
        procs.remove(plane)
        plane = start_control(manifests, control.removeprefix("http://"))
        procs.append(plane)
        wait_for(pending, timeout=20)

        held.close()  # free: the gateway binds it on its next try and reports it bound

        def programmed() -> bool:
            return listener_programmed(control) == ("True", "Programmed", "")

        wait_for(programmed, timeout=20)
        with socket.create_connection((ip, port), timeout=5):
            pass  # and it is served
        live = httpx.get(f"{control}/v1/reports/ingress", timeout=5).json()
        assert live[instance]["entries"] == []
    finally:
        held.close()
        for proc in procs:
            proc.stop()


def test_a_gateway_is_programmed_only_once_a_gateway_has_taken_its_config(
    tmp_path: Path,
) -> None:
    """``mesh control`` alone accepts the Gateway (its config is valid) but does not call it
    Programmed until a ``mesh ingress`` has connected and applied the config."""
    ip = "127.11.78.12"
    held = hold_port(ip)  # a port that was free a moment ago, for the gateway to bind
    port = held.getsockname()[1]
    held.close()
    manifests = write_manifests(tmp_path, ip, port)
    waiting = ("False", "Pending", "waiting for a gateway to take the config")
    procs: list[Proc] = []
    try:
        plane = start_control(manifests)
        procs.append(plane)
        control = plane.url("control")
        wait_for(lambda: gateway_programmed(control) is not None, timeout=20)
        assert gateway_programmed(control) == waiting
        assert listener_programmed(control) == waiting
        gateway = start_ingress(control)
        procs.append(gateway)
        wait_for(lambda: gateway_programmed(control) == ("True", "Programmed", ""), timeout=20)
        assert listener_programmed(control) == ("True", "Programmed", "")
        with socket.create_connection((ip, port), timeout=5):
            pass  # Programmed, and served
        # The gateway stops cleanly: it withdraws its report as it goes, so the Gateway is
        # Pending again at once, not when the report's 30-second lease would have ended.
        gateway.stop()
        procs.remove(gateway)
        wait_for(lambda: httpx.get(f"{control}/v1/reports/ingress", timeout=5).json() == {},
                 timeout=5)  # fmt: skip
        wait_for(lambda: gateway_programmed(control) == waiting, timeout=5)
        assert listener_programmed(control) == waiting
    finally:
        for proc in procs:
            proc.stop()
