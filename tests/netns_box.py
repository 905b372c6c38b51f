"""The cluster in a box for root tests: ``mesh up --netns`` started and stopped by PID, pods
run with ``mesh exec``, and ``mesh down`` always run at the end so no namespace is left."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

MESH = [sys.executable, "-m", "mesh.cli"]

PODS = (  # (name, app, hostname): two web pods, a client, a headless db pod
    ("web-1", "web", None),
    ("web-2", "web", None),
    ("client", "client", None),
    ("db-0", "db", "db-0"),
)


def pod(name: str, app: str, hostname: str | None = None) -> str:
    host = f"\n  hostname: {hostname}\n  subdomain: db" if hostname else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}
spec:{host}
  containers:
    - name: c
      ports: [{{name: http, containerPort: 8080}}]
status: {{phase: Running}}
"""


def write_manifests(
    tmp_path: Path, services: str, pods: Iterable[tuple[str, str, str | None]]
) -> Path:
    """A manifests folder with the Services and one file a pod (the box watches it)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "services.yaml").write_text(services)
    for name, app, host in pods:
        (manifests / f"{name}.yaml").write_text(pod(name, app, host))
    return manifests


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


class Box:
    """``mesh up --netns --box NAME``, ready once it has printed its admin address; its
    stderr goes to ``log`` when given (and is shown if it does not start)."""

    def __init__(
        self,
        name: str,
        manifests: Path,
        extra: Sequence[str] = (),
        dns_args: Sequence[str] = ("--no-forward",),
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.addresses: dict[str, str] = {}
        argv = [*MESH, "up", "--netns", "--box", name, "-f", str(manifests)]
        argv += ["--control-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        argv += [*dns_args, *extra]
        if log is None:
            self.popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        else:
            with log.open("w") as err:
                self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        assert self.popen.stdout is not None
        while "admin" not in seen:
            if time.monotonic() > deadline or self.popen.poll() is not None:
                self.stop()  # mesh down: a half-started box leaves no namespace
                said = f":\n{log.read_text()}" if log is not None else ""
                raise AssertionError(f"mesh up --netns did not start{said}")
            m = re.match(r"^(\w+)\s+(\S+)", self.popen.stdout.readline())
            if m:
                seen.add(m.group(1))
                self.addresses[m.group(1)] = m.group(2)

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
