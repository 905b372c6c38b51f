"""``mesh config dump ingress``: private keys redacted by default; ``--show-secrets`` fills them
in from the control plane, and the dump runs ``mesh ingress --config`` with TLS as it was."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from mesh.ingress import echo
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc
from tests.tls.pki import CA

SHOP = "shop.example.com"

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: {echo_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-dump, namespace: shop, labels: {{app: echo}}}}
status: {{phase: Running, podIP: {echo_ip}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-tls, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: mesh
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {{controller: mesh.dev/ingress}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: shop}}
spec:
  tls: [{{hosts: [{host}], secretName: shop-tls}}]
  rules:
  - host: {host}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}
"""


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=30)


def tls_listener(proc: Proc) -> str:
    """HOST:PORT of the Ingress TLS listener, as the process's admin view says."""
    state = httpx.get(f"{proc.url('admin')}/config/ingress", timeout=5).json()
    return str(state["listeners"]["ingress-https"])


def served_certificate(address: str) -> bytes:
    """The DER certificate the TLS listener at ``address`` serves for SNI shop.example.com."""
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=SHOP) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_dump_redacts_keys_and_show_secrets_round_trips(tmp_path: Path) -> None:
    ca = CA()
    leaf = ca.issue(SHOP)
    echo_ip = "127.23.0.9"
    (server,) = echo.serve("dumped", [(echo_ip, 0)])
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(
        MANIFESTS.format(
            echo_ip=echo_ip,
            echo_port=server.server_address[1],
            host=SHOP,
            crt=base64.b64encode(leaf.cert_pem).decode(),
            key=base64.b64encode(leaf.key_pem).decode(),
        )
    )
    listen = ["--admin-listen", "127.0.0.1:0"]
    gateway_args = ["--gateway-listen", "127.0.0.1:0", "--gateway-tls-listen", "127.0.0.1:0"]
    procs: list[Proc] = []
    try:
        control = Proc(
            ["control", "-f", str(manifests), "--control-listen", "127.0.0.1:0", *listen],
            {"control"},
        )
        procs.append(control)
        fed = Proc(
            ["ingress", "--control", control.url("control"), *gateway_args, *listen],
            {"gateway", "admin"},
        )
        procs.append(fed)
        expected = leaf.cert.public_bytes(Encoding.DER)

        def serving() -> bool:
            try:
                return served_certificate(tls_listener(fed)) == expected
            except (OSError, httpx.HTTPError):
                return False

        wait_for(serving, timeout=10)
        admin = ["--admin", fed.url("admin")]

        # The default: every key redacted.
        plain = mesh("config", "dump", "ingress", *admin)
        assert plain.returncode == 0, plain.stderr
        (secret,) = json.loads(plain.stdout)["secrets"]
        assert secret["name"] == "shop/shop-tls"
        assert secret["key_pem"] == "<redacted>"
        assert leaf.key_pem.decode() not in plain.stdout

        # --show-secrets: the key comes back, and the dump runs as it is.
        full = mesh("config", "dump", "ingress", *admin, "--show-secrets",
                    "--control", control.url("control"))  # fmt: skip
        assert full.returncode == 0, full.stderr
        (secret,) = json.loads(full.stdout)["secrets"]
        assert secret["key_pem"] == leaf.key_pem.decode()
        state = mesh("config", "dump", "ingress", *admin, "--state", "--show-secrets",
                     "--control", control.url("control"))  # fmt: skip
        assert state.returncode == 0, state.stderr
        (secret,) = json.loads(state.stdout)["config"]["secrets"]
        assert secret["key_pem"] == leaf.key_pem.decode()

        config_file = tmp_path / "gateway.json"
        config_file.write_text(full.stdout)
        copy = Proc(["ingress", "--config", str(config_file), *gateway_args, *listen],
                    {"gateway", "admin"})  # fmt: skip
        procs.append(copy)
        assert served_certificate(tls_listener(copy)) == expected
        tls_url = f"https://{tls_listener(copy)}/"
        r = httpx.get(tls_url, headers={"host": SHOP}, verify=False, timeout=5)
        assert (r.status_code, r.headers["x-echo"]) == (200, "dumped")

        # A control plane that is not there: one clear sentence, no traceback.
        gone = mesh("config", "dump", "ingress", *admin, "--show-secrets",
                    "--control", "127.0.0.1:1")  # fmt: skip
        assert gone.returncode == 1
        assert "cannot reach the control plane" in gone.stderr
        assert "Traceback" not in gone.stderr
    finally:
        for proc in procs:
            proc.stop()
        server.shutdown()
        server.server_close()
