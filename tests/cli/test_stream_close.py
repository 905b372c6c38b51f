"""A component fed by a control plane that stops says so, in words a user reads right: the
control plane closed the stream and the component reconnects (never "bad HTTP from the
server"); when the plane is back, the component takes its config again."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

MESH = [sys.executable, "-m", "mesh.cli"]
DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")
ANY = "127.0.0.1:0"
MORE = """\
apiVersion: v1
kind: Service
metadata: {name: more, namespace: shop}
spec: {clusterIP: 127.10.99.99, ports: [{port: 80}]}
"""


class Running:
    """A mesh process whose stdout and stderr lines are read as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*MESH, *args, "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        for name, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True).start()

    def _pump(self, name: str, pipe: IO[str] | None) -> None:
        assert pipe is not None
        for line in pipe:
            self.lines.put((name, line.rstrip("\n")))

    def wait_for(self, name: str, test: Any, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such {name} line; saw {self.seen[-20:]}")
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(item)
            if item[0] == name and test(item[1]):
                return item[1]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for name, line in self.seen if name == "err"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when a test fails
                self.proc.kill()
                self.proc.wait()


def _control(manifests: Path, port: str) -> tuple[Running, str]:
    plane = Running(["control", "-f", str(manifests), "--control-listen", f"127.0.0.1:{port}",
                     "--admin-listen", ANY])  # fmt: skip
    line = plane.wait_for("out", lambda line: line.startswith("control"))
    plane.wait_for("out", lambda line: line.startswith("admin"))
    return plane, line.rsplit(":", 1)[1]


@pytest.fixture
def started() -> Iterator[list[Running]]:
    processes: list[Running] = []
    try:
        yield processes
    finally:
        for p in processes:
            p.stop()


def _applied(line: str) -> bool:
    record = json.loads(line)
    return bool(record.get("msg") == "config applied" and record.get("component"))


@pytest.mark.parametrize(
    "component",
    [
        ["dns", "--dns-listen", ANY, "--workers", "1", "--no-forward"],
        ["proxy", "--node-ip", "127.0.0.1"],
    ],
)
def test_a_stopped_control_plane_is_said_as_such(
    started: list[Running], component: list[str], tmp_path: Path
) -> None:
    manifests = tmp_path / "cluster"
    shutil.copytree(DEMO, manifests)
    plane, port = _control(manifests, "0")
    started.append(plane)
    fed = Running([*component, "--control", f"127.0.0.1:{port}", "--admin-listen", ANY])
    started.append(fed)
    fed.wait_for("err", _applied)

    plane.stop()
    lost = fed.wait_for("err", lambda line: json.loads(line).get("msg") == "config stream lost")
    assert json.loads(lost)["level"] == "warning"
    assert json.loads(lost)["error"] == (
        "the control plane closed the stream (it stopped or restarted); reconnecting"
    )
    retry = fed.wait_for("err", lambda line: json.loads(line).get("msg") == "config stream lost")
    assert json.loads(retry)["error"].startswith("cannot reach the control plane: ")
    assert json.loads(retry)["error"].endswith("Connection refused; retrying")

    # Back on the same address, with one more Service: the component takes its config again.
    (manifests / "more.yaml").write_text(MORE)
    started.append(_control(manifests, port)[0])
    fed.wait_for("err", _applied)
    assert not any("bad HTTP" in str(r.get("error", "")) for r in fed.records())
