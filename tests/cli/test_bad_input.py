"""Every bad input to the real ``mesh`` command ends in one sentence naming what is wrong,
the right exit status (2: a flag value, refused where it is parsed; 1: a failure at run time),
and never a Python traceback."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

MESH = [sys.executable, "-m", "mesh.cli"]
DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")


class _Html(http.server.BaseHTTPRequestHandler):
    """Some other web server: HTML for every path."""

    def do_GET(self) -> None:
        body = b"<html><body>hello</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _NotFound(_Html):
    """A server that knows none of the control plane's paths (an admin endpoint, say)."""

    def do_GET(self) -> None:
        self.send_error(404)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    started = {}
    for name, handler in (("html", _Html), ("notfound", _NotFound)):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started[name] = srv
    try:
        yield {n: f"127.0.0.1:{s.server_address[1]}" for n, s in started.items()}
    finally:
        for srv in started.values():
            srv.shutdown()
            srv.server_close()


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


BOX = "use 1 to 40 lower-case letters, digits and '-', starting with a letter or digit"
NOT_URL = "is not http://HOST:PORT or HOST:PORT"
LABEL = (
    "labels are 1 to 63 lower-case letters, digits and '-', starting and ending with a "
    "letter or digit"
)

# (arguments, exit status, the last line of stderr)
CASES: list[tuple[list[str], int, str]] = [
    (["up", "-f", DEMO, "--netns", "--box", "Bad_Name"], 2,
     f"Error: Invalid value for '--box': 'Bad_Name': {BOX} (it prefixes network namespace names)"),
    (["up", "-f", DEMO, "--box", "a" * 41], 2,
     f"Error: Invalid value for '--box': '{'a' * 41}': {BOX} (it prefixes network namespace names)"),
    (["down", "--box", "../etc"], 2,
     f"Error: Invalid value for '--box': '../etc': {BOX} (it prefixes network namespace names)"),
    (["exec", "--box", "x/y", "web-1", "--", "true"], 2,
     f"Error: Invalid value for '--box': 'x/y': {BOX} (it prefixes network namespace names)"),
    (["dns", "--control", "not a url"], 2,
     f"Error: Invalid value for '--control': 'not a url' {NOT_URL}"),
    (["dns", "--control", "ftp://127.0.0.1:15010"], 2,
     f"Error: Invalid value for '--control': 'ftp://127.0.0.1:15010' {NOT_URL}"),
    (["proxy", "--control", "http://127.0.0.1:99999"], 2,
     "Error: Invalid value for '--control': 'http://127.0.0.1:99999': "
     "the port is not a number in 1-65535"),
    (["proxy", "--control", "127.0.0.1:http"], 2,
     "Error: Invalid value for '--control': '127.0.0.1:http': "
     "the port is not a number in 1-65535"),
    (["dns", "--control", "127.0.0.1:1", "--dns-listen", "127.0.0.1"], 2,
     "Error: Invalid value for '--dns-listen': '127.0.0.1' is not HOST:PORT"),
    (["up", "-f", DEMO, "--admin-listen", "256.0.0.1:80"], 2,
     "Error: Invalid value for '--admin-listen': '256.0.0.1:80': '256.0.0.1' is not an IP address"),
    (["up", "-f", DEMO, "--control-listen", "127.0.0.1:70000"], 2,
     "Error: Invalid value for '--control-listen': '127.0.0.1:70000': "
     "port 70000 is out of range 0-65535"),
    (["up", "-f", DEMO, "--dns-listen", "::1:53"], 2,
     "Error: Invalid value for '--dns-listen': '::1:53': "
     "write an IPv6 address in brackets, as [::1]:53"),
    (["dns", "--config", "/nonexistent/dns.json"], 2,
     "Error: Invalid value for '--config': File '/nonexistent/dns.json' does not exist."),
    (["get", "svc", "--control", "http://"], 2,
     f"Error: Invalid value for '--control': 'http://' {NOT_URL}"),
    (["get", "svc", "-l", "app in (web"], 2,
     "Error: Invalid value for '-l' / '--selector': unbalanced '('"),
    (["get", "svc", "-l", "app=(x)"], 2,
     "Error: Invalid value for '-l' / '--selector': 'app=(x)' is not a label requirement"),
    (["get", "widgets"], 2,
     "Error: unknown kind 'widgets'; known kinds: BackendTLSPolicy, ConfigMap, EndpointSlice, "
     "Endpoints, Gateway, "
     "GatewayClass, HTTPRoute, Ingress, IngressClass, Namespace, Pod, ReferenceGrant, Secret, "
     "Service"),
    (["get", "svc,pods"], 2,
     "Error: 'svc,pods': give one kind at a time (KIND,KIND is not supported)"),
    (["get", "svc/web", "pods"], 2,
     "Error: 'pods': write KIND/NAME for every argument once one has a '/'"),
    (["get", "svc", "-n", "shop", "-A"], 2, "Error: -n and -A exclude each other"),
    (["up", "-f", DEMO, "--zone", "cluster..local"], 2,
     f"Error: Invalid value for '--zone': 'cluster..local' has the label '': {LABEL}"),
    (["dns", "--control", "127.0.0.1:1", "--zone", "my zone"], 2,
     f"Error: Invalid value for '--zone': 'my zone' has the label 'my zone': {LABEL}"),
    (["control", "-f", DEMO, "--zone", ""], 2, "Error: Invalid value for '--zone': '' is empty"),
    (["up", "-f", DEMO, "--node-name", "node_1"], 2,
     f"Error: Invalid value for '--node-name': 'node_1' has the label 'node_1': {LABEL}"),
    (["config", "dump", "dns", "--admin", "ftp://x:1"], 2,
     f"Error: Invalid value for '--admin': 'ftp://x:1' {NOT_URL}"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "status", "last_line"), CASES)
def test_bad_flag_values(args: list[str], status: int, last_line: str) -> None:
    out = subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=30)
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == last_line
    assert out.returncode == status


@pytest.mark.parametrize(
    ("target", "last_line"),
    [
        ("html", "Error: http://{addr} is not a mesh control plane "
         "(give its --control-listen address)"),
        ("notfound", "Error: http://{addr} is not a mesh control plane "
         "(give its --control-listen address)"),
        ("closed", "Error: cannot reach the control plane at http://{addr}: "
         "[Errno 111] Connection refused"),
    ],
)  # fmt: skip
def test_get_from_the_wrong_server(servers: dict[str, str], target: str, last_line: str) -> None:
    addr = servers[target] if target in servers else _closed_port()
    out = subprocess.run(
        [*MESH, "get", "svc", "--control", addr], capture_output=True, text=True, timeout=30
    )
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [last_line.format(addr=addr)]
    assert out.returncode == 1


def test_config_dump_from_the_wrong_server(servers: dict[str, str]) -> None:
    out = subprocess.run(
        [*MESH, "config", "dump", "dns", "--admin", servers["html"]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stderr.strip().splitlines() == [
        f"Error: http://{servers['html']} is not a mesh admin endpoint"
    ]
    assert out.returncode == 1


@pytest.mark.parametrize(
    ("text", "last_line"),
    [
        ("servics: []\n", "mesh: invalid config file {path}: servics: Extra inputs are not permitted"),
        ("ttl: -3\n", "mesh: invalid config file {path}: ttl: Input should be greater than or equal to 0"),
        ("[unclosed\n", "mesh: invalid config file {path}: not valid JSON or YAML: "),
    ],
)  # fmt: skip
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_config_file_at_start_stops_the_command(
    tmp_path: Path, text: str, last_line: str, workers: str
) -> None:
    """Said once, also with several workers (the supervisor checks before starting any)."""
    path = tmp_path / "dns.yaml"
    path.write_text(text)
    out = subprocess.run(
        [*MESH, "dns", "--config", str(path), "--dns-listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--workers", workers],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(last_line.format(path=path))
    assert out.stderr.count("invalid config file") == 1
    assert out.returncode == 1
