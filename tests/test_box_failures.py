"""The cluster in a box when things go wrong (root): a Service pinning the kube-dns address,
a pod range that fills up, a second SIGTERM during shutdown. Each is reported in one line and
the rest keeps running; the box is always removed."""

from __future__ import annotations

import itertools
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.netns_box import Box, write_manifests
from tests.polling import wait_for

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


def start(manifests: Path, log: Path, *extra: str) -> Box:
    return Box(f"f{secrets.token_hex(3)}", manifests, ("--log-format", "text", *extra), log=log)


@pytest.fixture
def manifests(tmp_path: Path) -> Iterator[Path]:
    require_root()
    require_tool("ip", "nft", "dig")
    yield write_manifests(tmp_path, SERVICES, [(f"web-{i}", "web", None) for i in range(1, 7)])


def test_conflicts_are_reported_and_the_rest_runs(manifests: Path, tmp_path: Path) -> None:
    # A /29 holds the node and five pods: the sixth does not fit.
    box = start(manifests, tmp_path / "stderr", "--pod-cidr", "198.18.0.0/29")
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
    box = start(manifests, tmp_path / "stderr")
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
