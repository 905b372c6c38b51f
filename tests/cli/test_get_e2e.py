"""``mesh get``, ``mesh config dump`` and the logs of a real ``mesh up`` process."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc, addresses, http_get, listen_anywhere, manifests, query

__all__ = ["manifests"]  # the fixture, shared with tests/test_cli_e2e.py

CART = """
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {app: cart}}
spec:
  clusterIP: 127.10.0.40
  ports: [{name: http, port: 80}]
"""


def _up_args(manifests: Path, *extra: str) -> list[str]:
    args = ["up", "-f", str(manifests), *extra, "--upstream", "127.0.0.1:9"]
    args += listen_anywhere()
    return args


@pytest.fixture
def up(manifests: Path) -> Iterator[Proc]:
    proc = Proc(_up_args(manifests), {"control", "dns", "admin"})
    yield proc
    proc.stop()


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESH, *args], capture_output=True, text=True, timeout=30)


def test_get_as_kubectl(up: Proc) -> None:
    control = ["--control", up.url("control")]
    default = mesh("get", "svc", *control)
    assert (default.returncode, default.stdout) == (0, "")
    assert default.stderr == "No resources found in default namespace.\n"

    shop = mesh("get", "svc", "-n", "shop", *control).stdout.splitlines()
    assert shop[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = {line.split()[0]: line.split() for line in shop[1:]}
    assert set(rows) == {"api", "fixed", "payments", "web"}
    assert rows["fixed"][1:5] == ["ClusterIP", "127.10.0.20", "<none>", "80/TCP"]
    assert rows["payments"][1:5] == ["ExternalName", "<none>", "payments.example.com", "<none>"]
    assert rows["web"][5].endswith("s")  # AGE: seconds since the object was created

    named = mesh("get", "svc", "-A", "-l", "app in (web,api)", "-o", "name", *control)
    assert named.stdout.split() == []  # Services carry no labels in the demo
    pods = mesh("get", "pods", "-A", "-l", "app in (web,api),app!=api", "-o", "name", *control)
    assert pods.stdout.split() == ["pod/web-1", "pod/web-2"]

    one = json.loads(mesh("get", "svc/web", "-n", "shop", "-o", "json", *control).stdout)
    assert (one["kind"], one["metadata"]["name"]) == ("Service", "web")
    assert one["metadata"]["creationTimestamp"].endswith("Z")
    # A uid as the API server gives one: a UUID, each object its own, the same on every read.
    uid = one["metadata"]["uid"]
    assert str(uuid.UUID(uid)) == uid
    again = json.loads(mesh("get", "svc", "-n", "shop", "-o", "json", *control).stdout)
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in again["items"]}
    assert uids["web"] == uid and len(set(uids.values())) == len(uids)
    # Status conditions carry when they last changed, the same on every read (-o yaml).
    first = mesh("get", "gateway", "demo", "-n", "echo", "-o", "yaml", *control).stdout
    gateway = yaml.safe_load(first)
    times = [c["lastTransitionTime"] for c in gateway["status"]["conditions"]]
    assert times and all(t.endswith("Z") and t[:4].isdigit() for t in times), first
    assert "uid: ''" not in first and "lastTransitionTime: ''" not in first
    assert mesh("get", "gateway", "demo", "-n", "echo", "-o", "yaml", *control).stdout == first

    endpoints = mesh("get", "endpoints", "web", "-n", "shop", *control).stdout.splitlines()
    assert endpoints[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert endpoints[1].split()[:2] == ["web", "127.20.0.11:8080,127.20.0.12:8080"]

    missing = mesh("get", "svc", "web", "nope", "-n", "shop", *control)
    assert missing.returncode == 1
    assert missing.stdout.splitlines()[1].split()[0] == "web"
    assert missing.stderr == 'Error from server (NotFound): services "nope" not found\n'


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout lines as they come (a reader thread: no buffering surprises)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout

    def read() -> None:
        for line in out:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _line(lines: queue.Queue[str], deadline: float) -> str:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise AssertionError("no line from mesh get -w in time") from None


def test_get_watch_follows_changes(up: Proc, manifests: Path) -> None:
    watch = subprocess.Popen(
        [*MESH, "get", "svc", "-n", "shop", "-w", "--control", up.url("control")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines = _lines(watch)
    try:
        deadline = time.monotonic() + 20
        listed = [_line(lines, deadline) for _ in range(5)]  # header + 4 Services
        assert listed[0].split()[0] == "NAME"
        (manifests / "cart.yaml").write_text(CART)
        added = _line(lines, deadline).split()
        assert added[:3] == ["cart", "ClusterIP", "127.10.0.40"]
        (manifests / "cart.yaml").unlink()
        deleted = _line(lines, deadline).split()
        assert deleted[:3] == ["cart", "ClusterIP", "127.10.0.40"]
    finally:
        watch.terminate()
        watch.wait(10)
    assert watch.stderr is not None
    assert "Traceback" not in watch.stderr.read()


def _dump(component: str, admin: str) -> object:
    out = mesh("config", "dump", component, "--admin", admin)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("component", ["dns", "proxy"])
def test_config_dump_round_trips(manifests: Path, tmp_path: Path, component: str) -> None:
    first = Proc(_up_args(manifests), {"admin"})
    try:
        dumped = _dump(component, first.url("admin"))
    finally:
        first.stop()
    path = tmp_path / f"{component}.json"
    path.write_text(json.dumps(dumped))
    args = [component, "--config", str(path), "--admin-listen", "127.0.0.1:0"]
    if component == "dns":
        args += ["--dns-listen", "127.0.0.1:0", "--no-forward"]
    second = Proc(args, {"admin"})
    try:
        wait_for(lambda: _dump(component, second.url("admin")) == dumped, timeout=10)
        if component == "dns":
            server = second.addresses["dns"]
            assert addresses(query(server, "fixed.shop.svc.cluster.local")) == {"127.10.0.20"}
    finally:
        second.stop()


def test_pinned_address_conflict_is_refused_and_the_rest_serves(
    manifests: Path, tmp_path: Path
) -> None:
    (manifests / "clash.yaml").write_text(CART.replace("cart", "clash").replace(".40", ".20"))
    with (tmp_path / "stderr").open("w") as log:
        proc = Proc(
            _up_args(manifests, "--no-proxy", "--log-format", "text"), {"dns", "admin"}, log
        )
        try:
            server = proc.addresses["dns"]
            assert addresses(query(server, "web.shop.svc.cluster.local"))
            status, body = http_get(f"{proc.url('admin')}/ready")
            assert (status, body) == (200, b"ready\n")
        finally:
            proc.stop()
    err = (tmp_path / "stderr").read_text()
    refused = [line for line in err.splitlines() if "ERROR" in line]
    assert len(refused) == 1, err
    # Which of the two gets the address depends on the order the files are read in.
    assert refused[0].split(" is already allocated to Service ")[1] in ("shop/fixed", "shop/clash")
    assert "spec.clusterIPs: 127.10.0.20" in refused[0]
    assert "Traceback" not in err
    assert "\x1b" not in err  # stderr is not a terminal: no colour codes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_get_watch_lists_again_and_resumes_when_the_plane_restarts(
    manifests: Path, tmp_path: Path
) -> None:
    port = _free_port()
    args = _up_args(manifests, "--no-proxy")
    args[args.index("--control-listen") + 1] = f"127.0.0.1:{port}"
    first = Proc(args, {"control"})
    stderr = (tmp_path / "stderr").open("w")
    watch = subprocess.Popen(
        [*MESH, "get", "svc", "-n", "shop", "-w", "--control", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
    )
    lines = _lines(watch)
    second: Proc | None = None
    try:
        deadline = time.monotonic() + 30
        listed = [_line(lines, deadline) for _ in range(5)]  # header + 4 Services
        assert [line.split()[0] for line in listed] == ["NAME", "api", "fixed", "payments", "web"]
        first.stop()  # the watch breaks; while the plane is away, cart comes and fixed goes
        (manifests / "cart.yaml").write_text(CART)
        (manifests / "fixed.yaml").unlink()
        second = Proc(args, {"control"})
        # The re-list prints what changed (the others are unchanged: not printed again).
        assert _line(lines, deadline).split()[:3] == ["cart", "ClusterIP", "127.10.0.40"]
        assert _line(lines, deadline).split()[:3] == ["fixed", "ClusterIP", "127.10.0.20"]
        # ... and the watch goes on from the new list.
        (manifests / "cart.yaml").write_text(CART.replace("port: 80", "port: 81"))
        assert _line(lines, deadline).split()[:5] == [
            "cart",
            "ClusterIP",
            "127.10.0.40",
            "<none>",
            "81/TCP",
        ]
        assert lines.empty()
    finally:
        watch.terminate()
        watch.wait(10)
        first.stop()
        if second is not None:
            second.stop()
        stderr.close()
    err = (tmp_path / "stderr").read_text()
    assert "Traceback" not in err
    assert err.count("cannot reach the control plane") <= 1, err
