"""A network namespace a root test creates for itself (no route out), and ways to run things
inside it: a command, a Python callable in a thread that entered it, an HTTP server."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute_netns

from mesh.proxy import netns
from tests.conftest import require_root, require_tool

T = TypeVar("T")


@contextmanager
def scratch_namespace(*tools: str) -> Iterator[str]:
    """A fresh namespace named ``mesh-test-XXXXXX``; needs root and the tools named."""
    require_root()
    require_tool(*tools)
    name = f"mesh-test-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)  # also ends every process left in it


def run_in(ns: str, *argv: str) -> str:
    """What ``argv`` run in the namespace prints (stripped)."""
    out = subprocess.run(netns.exec_argv(ns, argv), capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def in_namespace(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that entered network namespace ``name`` (the namespace is
    per thread on Linux: sockets and netlink made there belong to it)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pyroute_netns.setns(name, flags=0)
            out.append(fn())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
    assert out, "the namespace thread did not finish"
    return out[0]


def serve_http(ns: str, port: int, site: Path) -> subprocess.Popen[bytes]:
    """``python -m http.server`` on both families in the namespace, serving ``site``; the
    caller terminates it by PID."""
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "::", "--directory"]
    return subprocess.Popen(
        netns.exec_argv(ns, [*argv, str(site)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
