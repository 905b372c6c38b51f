"""The cluster in a box when things go wrong (root): a Service pinning the kube-dns address,
a pod range that fills up, a second SIGTERM during shutdown. Each is reported in one line and
the rest keeps running; the box is always removed."""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.polling import wait_for
from tests.test_netns_e2e import namespaces, pod

MESH = [sys.executable, "-m", "mesh.cli"]

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: squatter, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{port: 53, protocol: UDP}]
"""


class Box:
    def __init__(self, manifests: Path, log: Path, *extra: str) -> None:
        self.name = f"f{secrets.token_hex(3)}"
        self.log = log
        args = ["up", "--netns", "--box", self.name, "-f", str(manifests), "--no-forward"]
        args += ["--control-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        args += ["--log-format", "text", *extra]
        with log.open("w") as err:
            self.popen = subprocess.Popen(
                [*MESH, *args], stdout=subprocess.PIPE, stderr=err, text=True
            )
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        assert self.popen.stdout is not None
        while "admin" not in seen:
            if time.monotonic() > deadline or self.popen.poll() is not None:
                self.stop()
                raise AssertionError(f"mesh up --netns did not start:\n{log.read_text()}")
            m = re.match(r"^(\w+)\s", self.popen.stdout.readline())
            if m:
                seen.add(m.group(1))

    def owned(self) -> set[str]:
        return {n for n in namespaces() if n.startswith(f"{self.name}-")}

    def exec(self, pod_name: str, *argv: str) -> str:
        out = subprocess.run(
            [*MESH, "exec", "--box", self.name, pod_name, "--", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        subprocess.run([*MESH, "down", "--box", self.name], capture_output=True, timeout=60)


@pytest.fixture
def manifests(tmp_path: Path) -> Iterator[Path]:
    require_root()
    require_tool("ip", "nft", "dig")
    target = tmp_path / "manifests"
    target.mkdir()
    (target / "services.yaml").write_text(SERVICES)
    for i in range(1, 7):
        (target / f"web-{i}.yaml").write_text(pod(f"web-{i}", "web"))
    yield target


def test_conflicts_are_reported_and_the_rest_runs(manifests: Path, tmp_path: Path) -> None:
    # A /29 holds the node and five pods: the sixth does not fit.
    box = Box(manifests, tmp_path / "stderr", "--pod-cidr", "198.18.0.0/29")
    try:
        wait_for(lambda: len(box.owned()) == 6, timeout=20)  # the node and five pods
        pods = f"{box.name}-shop-"
        placed = {n.removeprefix(pods) for n in box.owned() if n.startswith(pods)}
        assert len(placed) == 5
        # kube-dns kept its address, so pods resolve names through it.
        wait_for(lambda: box.exec(sorted(placed)[0], "dig", "+search", "+short", "web") != "")
        err = (tmp_path / "stderr").read_text()
        errors = [line for line in err.splitlines() if " ERROR " in line]
        assert len(errors) == 2, err
        assert (
            "Service/shop/squatter: spec.clusterIPs: 198.19.0.10 is already allocated to "
            "Service kube-system/kube-dns" in errors[0]
        )
        (unplaced,) = {f"web-{i}" for i in range(1, 7)} - placed
        assert errors[1].endswith(
            f'cannot place pod pod=shop/{unplaced} error="pod CIDR 198.18.0.0/29 is full"'
        )
        assert "Traceback" not in err
    finally:
        box.stop()
    assert not box.owned()


def test_a_second_sigterm_still_removes_the_box(manifests: Path, tmp_path: Path) -> None:
    box = Box(manifests, tmp_path / "stderr")
    wait_for(lambda: len(box.owned()) == 7, timeout=20)
    # Signals keep coming while it shuts down (an impatient user, a supervisor).
    deadline = time.monotonic() + 30
    sig = itertools.cycle([signal.SIGTERM, signal.SIGINT])
    while box.popen.poll() is None and time.monotonic() < deadline:
        box.popen.send_signal(next(sig))
        time.sleep(0.005)
    try:
        assert not box.owned()  # removed by the process itself, not by mesh down
        assert "Traceback" not in (tmp_path / "stderr").read_text()
        assert box.popen.returncode == 0
    finally:
        box.stop()
