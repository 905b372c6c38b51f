"""The ``mesh`` command end to end: real processes, real sockets on loopback, real clients
(dig, dnspython, curl-like HTTP reads through urllib)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import require_tool
from tests.polling import wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
MESH = [sys.executable, "-m", "mesh.cli"]


ALL_LISTENS = (
    "--control-listen",
    "--dns-listen",
    "--admin-listen",
    "--gateway-listen",
    "--gateway-tls-listen",
)


def listen_anywhere(flags: Sequence[str] = ALL_LISTENS) -> list[str]:
    """Each listen flag given a free port on loopback (the kernel picks; the process says)."""
    return [arg for flag in flags for arg in (flag, "127.0.0.1:0")]


class Proc:
    """A started ``mesh`` process and the addresses it announced."""

    def __init__(
        self,
        args: list[str],
        want: set[str],
        stderr: Any = subprocess.DEVNULL,
        prefix: Sequence[str] = (),
    ) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [*prefix, *MESH, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        self.addresses: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + 20
        assert self.popen.stdout is not None
        while not want <= set(self.addresses):
            if time.monotonic() > deadline or self.popen.poll() is not None:
                self.stop()
                raise AssertionError(
                    f"mesh {args[0]} did not announce {want - set(self.addresses)}"
                )
            line = self.popen.stdout.readline()
            m = re.match(r"^(\w+)\s+(\S+):(\d+)$", line.strip())
            if m:
                self.addresses[m.group(1)] = (m.group(2), int(m.group(3)))

    def url(self, what: str) -> str:
        host, port = self.addresses[what]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


FIXED = """
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: shop}
spec:
  clusterIP: 127.10.0.20
  ports: [{name: http, port: 80}]
"""


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, target)
    (target / "fixed.yaml").write_text(FIXED)
    return target


@pytest.fixture
def up(manifests: Path) -> Iterator[Proc]:
    proc = Proc(
        [
            "up",
            "-f",
            str(manifests),
            *listen_anywhere(),
            "--no-proxy",
            "--upstream",
            "127.0.0.1:9",  # discard port: nothing answers, so no query leaves the machine
        ],
        {"control", "dns", "admin"},
    )
    yield proc
    proc.stop()


def query(
    server: tuple[str, int], name: str, rdtype: str = "A", tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, server[0], port=server[1], timeout=3)
    return dns.query.udp(q, server[0], port=server[1], timeout=3)


def addresses(msg: dns.message.Message) -> set[str]:
    return {rr.to_text() for rrset in msg.answer for rr in rrset}


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_up_answers_dns_and_follows_manifest_edits(up: Proc, manifests: Path) -> None:
    server = up.addresses["dns"]
    assert addresses(query(server, "fixed.shop.svc.cluster.local")) == {"127.10.0.20"}
    assert addresses(query(server, "db.data.svc.cluster.local", tcp=True)) == {
        "127.20.1.10",
        "127.20.1.11",
    }
    # A manifest edit shows in answers as soon as the new config is applied, not a TTL later.
    text = (manifests / "fixed.yaml").read_text().replace("127.10.0.20", "127.10.0.33")
    (manifests / "fixed.yaml").write_text(text)
    wait_for(lambda: addresses(query(server, "fixed.shop.svc.cluster.local")) == {"127.10.0.33"})
    # Deleting the file deletes its objects.
    (manifests / "data.yaml").unlink()
    wait_for(lambda: query(server, "db.data.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN)


def test_up_with_dig(up: Proc) -> None:
    require_tool("dig")
    host, port = up.addresses["dns"]
    out = subprocess.run(
        [
            "dig",
            f"@{host}",
            "-p",
            str(port),
            "+noall",
            "+answer",
            "SRV",
            "_postgres._tcp.db.data.svc.cluster.local",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    targets = sorted(line.split()[-1] for line in out.splitlines() if "SRV" in line)
    assert targets == ["db-0.db.data.svc.cluster.local.", "db-1.db.data.svc.cluster.local."]


def test_admin_endpoints_and_inspection_commands(up: Proc) -> None:
    admin = up.url("admin")
    status, body = http_get(f"{admin}/ready")
    assert (status, body.strip()) == (200, b"ready")
    status, body = http_get(f"{admin}/metrics")
    assert status == 200
    assert b"mesh_dns_config_version" in body
    status, body = http_get(f"{admin}/config/dns")
    assert status == 200
    names = {s["name"] for s in json.loads(body)["services"]}
    assert {"web", "api", "payments", "db", "fixed"} <= names

    get = subprocess.run(
        [*MESH, "get", "svc", "-n", "shop", "--control", up.url("control")],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    lines = get.splitlines()
    assert lines[0].split()[:3] == ["NAME", "TYPE", "CLUSTER-IP"]
    assert {line.split()[0] for line in lines[1:]} == {"api", "fixed", "payments", "web"}

    dump = subprocess.run(
        [*MESH, "config", "dump", "dns", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert json.loads(dump)["zone"] == "cluster.local"

    missing = subprocess.run(
        [*MESH, "get", "widgets", "--control", up.url("control")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert missing.returncode == 2
    assert "unknown kind 'widgets'" in missing.stderr


def test_standalone_dns_keeps_last_config_across_control_restart(
    manifests: Path, tmp_path: Path
) -> None:
    control = Proc(
        [
            "control",
            "-f",
            str(manifests),
            "--control-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        {"control"},
    )
    control_port = control.addresses["control"][1]
    dns_proc = Proc(
        [
            "dns",
            "--control",
            control.url("control"),
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ],
        {"dns", "admin"},
    )
    try:
        server = dns_proc.addresses["dns"]

        def every_worker(want: set[str]) -> bool:
            # One worker per core, each fed on its own; a new socket per query spreads these
            # over them.
            return all(
                addresses(query(server, "fixed.shop.svc.cluster.local")) == want for _ in range(8)
            )

        wait_for(lambda: every_worker({"127.10.0.20"}))
        control.stop()
        # The control plane is gone: answers continue from the last good config.
        assert addresses(query(server, "fixed.shop.svc.cluster.local")) == {"127.10.0.20"}
        text = (manifests / "fixed.yaml").read_text().replace("127.10.0.20", "127.10.0.44")
        (manifests / "fixed.yaml").write_text(text)
        control = Proc(
            [
                "control",
                "-f",
                str(manifests),
                "--control-listen",
                f"127.0.0.1:{control_port}",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            {"control"},
        )
        # Back on the same port: the component catches up with the edit made meanwhile.
        wait_for(lambda: every_worker({"127.10.0.44"}), timeout=20)
    finally:
        dns_proc.stop()
        control.stop()


def test_bad_manifest_is_reported_and_the_rest_serves(manifests: Path, tmp_path: Path) -> None:
    (manifests / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\n"
        "spec: {ports: [{port: 70000}]}\n"
    )
    args = ["up", "-f", str(manifests), "--no-proxy", "--log-format", "json"]
    args += listen_anywhere()
    with (tmp_path / "stderr").open("w") as log:
        proc = Proc(args, {"dns", "admin"}, stderr=log)
        try:
            assert addresses(query(proc.addresses["dns"], "web.shop.svc.cluster.local"))
        finally:
            proc.stop()
    err = (tmp_path / "stderr").read_text()
    records = [json.loads(line) for line in err.splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1, err  # reported once
    assert errors[0]["msg"] == (
        f"invalid manifest: {manifests / 'broken.yaml'}: Service/shop/broken: "
        "spec.ports[0].port: Input should be less than or equal to 65535"
    )
    assert errors[0]["object"] == "Service/shop/broken"
    assert errors[0]["field"] == "spec.ports[0].port"


def test_address_in_use_is_one_clear_error(up: Proc, tmp_path: Path) -> None:
    host, port = up.addresses["dns"]
    config = tmp_path / "dns.yaml"
    config.write_text("services: []\n")
    out = subprocess.run(
        [*MESH, "dns", "--config", str(config), "--dns-listen", f"{host}:{port}",
         "--admin-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"mesh: cannot start the DNS server on {host}:{port}: Address already in use"
    )
    assert "Traceback" not in out.stderr


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [*MESH, "dns", "--config", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr
