"""Several DNS server processes on one address: ``mesh dns --workers N``.

Python answers on one core per process, so N processes each bind the same UDP and TCP port
with SO_REUSEPORT and the kernel spreads flows over them (a hash of the client's address and
port). Each worker is a plain ``mesh dns`` with its own caches, fed by the same config stream
or config file; nothing is shared, so a config applies in each worker independently.

This supervisor only starts, watches and stops them: for port 0 it first takes a port free for
both UDP and TCP (holding it with a SO_REUSEPORT pair until every worker has bound it), passes
each worker its own admin port (the given one plus the worker's number, or 0) and a directory
where workers 1..N-1 leave their counters, so worker 0's /metrics (the announced ``admin``)
sums every worker's (dns/worker_metrics.py), relays their
announcements once every worker is ready, forwards SIGTERM and SIGINT, and when one worker dies stops the others and exits
with its status, so a process manager sees one service.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from types import FrameType

Address = tuple[str, int]
STOP_GRACE = 10.0  # seconds a worker gets to close after SIGTERM
READY_WAIT = 5.0  # seconds the announcement waits for every worker's first config


def default_workers() -> int:
    """One per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def reserve(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """A port free for UDP and TCP on ``host`` (``port`` itself unless 0), held by a
    SO_REUSEPORT pair the workers can join."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        return udp.getsockname()[1], [udp, tcp]
    raise OSError(f"no port free for both UDP and TCP on {host}")


def supervise(
    n: int,
    listen: Address,
    admin: Address,
    worker_args: Callable[[Address, Address], Sequence[str]],
    announce: Callable[[str, Address], None],
) -> int:
    """Run ``n`` workers until a signal or the first worker's exit; the exit status."""
    host, port = listen
    try:
        port, held = reserve(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"mesh: cannot start the DNS server on {host}:{port}: {reason}", file=sys.stderr)
        return 1
    procs: list[subprocess.Popen[bytes]] = []
    sel = selectors.DefaultSelector()
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # where workers 1..N-1 leave their counters for worker 0's merged /metrics
    metrics_dir = tempfile.mkdtemp(prefix="mesh-dns-metrics-")
    try:
        for i in range(n):
            aport = admin[1] + i if admin[1] else 0
            args = [*worker_args((host, port), (admin[0], aport))]
            args += ["--worker-index", str(i), "--metrics-dir", metrics_dir]
            proc = subprocess.Popen(
                [sys.executable, "-m", "mesh.cli", "dns", *args], stdout=subprocess.PIPE
            )
            procs.append(proc)
            assert proc.stdout is not None
            sel.register(proc.stdout.fileno(), selectors.EVENT_READ, i)
        pending = [b""] * n  # a line read in part
        startup = _Startup(n, held)
        status = 0
        while not stopping:
            for key, _ in sel.select(timeout=0.2):
                # Raw reads: a buffered readline would keep lines the selector cannot see.
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                *lines, pending[key.data] = (pending[key.data] + chunk).split(b"\n")
                for line in lines:
                    startup.line(key.data, line.decode(errors="replace"))
            startup.announce_when_ready((host, port), announce)
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                status = dead[0].returncode or 1
                break
        return status if not stopping else 0
    finally:
        for s in held:
            s.close()
        _stop(procs)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Startup:
    """The workers' announcements, passed on once, in the single server's order (``dns`` then
    ``admin``, ``admin1``...), when every worker has bound the port and has its first config
    (its /ready) or READY_WAIT has passed (a control plane that is down: serve anyway)."""

    def __init__(self, n: int, held: list[socket.socket]) -> None:
        self.n = n
        self.held = held
        self.bound: set[int] = set()
        self.admins: dict[int, Address] = {}
        self.since: float | None = None  # when every worker had announced
        self.done = False

    def line(self, worker: int, line: str) -> None:
        what, _, shown = line.strip().partition(" ")
        if what == "dns":
            self.bound.add(worker)
        elif what == "admin":
            a_host, _, a_port = shown.strip().rpartition(":")
            self.admins[worker] = (a_host.strip("[]"), int(a_port))

    def announce_when_ready(
        self, listen: Address, announce: Callable[[str, Address], None]
    ) -> None:
        if self.done or len(self.bound) < self.n or len(self.admins) < self.n:
            return
        if self.since is None:
            self.since = time.monotonic()
        waited = time.monotonic() - self.since > READY_WAIT
        if not waited and not all(_ready(a) for a in self.admins.values()):
            return
        for s in self.held:  # every worker has the port: stop taking a share of it
            s.close()
        self.held.clear()
        announce("dns", listen)
        for worker in sorted(self.admins):
            announce("admin" if worker == 0 else f"admin{worker}", self.admins[worker])
        self.done = True


def _ready(admin: Address) -> bool:
    host, port = admin
    url = f"http://[{host}]:{port}/ready" if ":" in host else f"http://{host}:{port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
