"""The ingress gateway in the cluster in a box (root): ``mesh up --netns`` runs it on the
node's address, and a pod reaches the demo's echo app through it with curl."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_root, require_tool
from tests.netns_box import MESH, Box
from tests.polling import wait_for

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo" / "echo.yaml"
CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: echo, labels: {app: client}}
"""


def test_a_pod_reaches_the_demo_echo_app_through_the_gateway(tmp_path: Path) -> None:
    require_root()
    require_tool("ip", "nft", "curl")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "echo.yaml").write_text(DEMO.read_text())
    (manifests / "client.yaml").write_text(CLIENT)
    log = tmp_path / "mesh.log"
    b = Box(f"g{secrets.token_hex(3)}", manifests, log=log)
    apps: list[subprocess.Popen[bytes]] = []
    try:
        gateway = b.addresses["gateway"]
        assert gateway.startswith("198.18.0.1:"), b.addresses  # the node: every pod's next hop
        for pod, name in (("echo-v1-1", "v1"), ("echo-v2-1", "v2")):
            echo = [sys.executable, "-m", "mesh.ingress.echo", name, "0.0.0.0:8080"]
            apps.append(
                subprocess.Popen(
                    [*MESH, "exec", "--box", b.name, f"echo/{pod}", "--", *echo],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        url = f"http://{gateway}/hello"

        def curl(*extra: str) -> str:
            return b.exec(
                "echo/client", "curl", "-s", "-m", "2", "-H", "Host: echo.example.com", *extra, url
            )

        # the Ingress (and its canary) are served once the pods have their addresses and
        # the echo servers listen
        wait_for(lambda: curl().startswith("{"), timeout=30.0)
        answer = json.loads(curl())
        assert answer["name"] in ("v1", "v2") and answer["path"] == "/hello"
        assert answer["host"] == "echo.example.com"
        client_ip = b.exec("echo/client", "ip", "-4", "-o", "addr", "show", "eth0").split()[3]
        assert answer["headers"]["x-forwarded-for"] == client_ip.split("/")[0]
        forced = [json.loads(curl("-H", "x-canary: always"))["name"] for _ in range(3)]
        assert forced == ["v2"] * 3  # the canary by header, as the demo shows
        # an unknown host: the gateway's own 404, saying why
        miss = b.exec("echo/client", "curl", "-s", "-i", "-m", "2", "-H", "Host: nope", url)
        assert miss.startswith("HTTP/1.1 404") and "x-mesh-reason: no-route" in miss
    except AssertionError:
        print(log.read_text(), file=sys.stderr)
        raise
    finally:
        for app in apps:
            app.terminate()
            app.wait(10)
        b.stop()
