"""``mesh up --no-gateway``: no controller serves Ingress and Gateway API in this process, so
nothing claims they are served. Gateways and GatewayClasses show what the Gateway API's
CRDs default a status to while the controller is absent (Accepted and Programmed Unknown,
"Waiting for controller"); Ingresses get no address; HTTPRoutes no parent status."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_e2e import MESH, Proc, listen_anywhere

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")

WAITING = {
    "lastTransitionTime": "1970-01-01T00:00:00Z",
    "message": "Waiting for controller",
    "observedGeneration": 0,
    "reason": "Pending",
    "status": "Unknown",
}


@pytest.fixture
def control() -> Iterator[str]:
    args = ["up", "-f", DEMO, "--no-gateway", "--no-proxy", "--no-forward"]
    proc = Proc([*args, *listen_anywhere(["--control-listen", "--dns-listen", "--admin-listen"])],
                {"control", "admin"})  # fmt: skip
    yield proc.url("control")
    proc.stop()


def _get(control: str, *args: str) -> Any:
    out = subprocess.run(
        [*MESH, "get", *args, "--control", control], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "json" in args else out.stdout


def test_nothing_claims_to_serve_gateways_and_ingresses(control: str) -> None:
    gc = _get(control, "gatewayclass", "mesh", "-o", "json")
    assert gc["status"]["conditions"] == [{**WAITING, "type": "Accepted"}]

    gw = _get(control, "gateway", "demo", "-n", "echo", "-o", "json")
    assert gw["status"]["conditions"] == [
        {**WAITING, "type": "Accepted"},
        {**WAITING, "type": "Programmed"},
    ]
    assert gw["status"]["addresses"] == [] and gw["status"]["listeners"] == []
    table = _get(control, "gateway", "-n", "echo").splitlines()
    assert table[1].split()[:3] == ["demo", "mesh", "Unknown"]  # PROGRAMMED, no ADDRESS

    for ingress in _get(control, "ingress", "-n", "echo", "-o", "json")["items"]:
        assert ingress["status"] == {"loadBalancer": {"ingress": []}}, ingress["metadata"]
    route = _get(control, "httproute", "api", "-n", "echo", "-o", "json")
    assert route["status"] == {"parents": []}
