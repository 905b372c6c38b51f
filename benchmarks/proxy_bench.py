"""Node proxy benchmark: our userspace proxy against HAProxy (tcp mode), nginx stream, direct.

One run measures, for each path to the backend:

- bulk throughput: iperf3 (one TCP stream, ``--seconds``, the median of ``--repeat`` runs);
- request rate: wrk against a small static response from nginx, over keep-alive connections
  and with a new connection per request (``Connection: close``).

Every server is pinned with taskset: the proxy under test alone on one core (``--proxy-cpu``),
the backends (nginx, iperf3 server) and the load generators on the other (``--backend-cpu``).
Everything listens on 127.0.0.0/8. Each program gets a config and a pid file in a temporary
directory and is stopped by its PID at the end.

With ``--rounds N`` every path is measured N times, the paths taking turns (so a burst of
load elsewhere on the machine hits all of them alike), and each figure is the median.
``--targets`` limits the run to some of the paths.

    python benchmarks/proxy_bench.py [--seconds 5] [--repeat 3] [--rounds 1]
        [--targets mesh-userspace,haproxy] [--proxy-cpu 0] [--backend-cpu 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BACKEND = "127.0.0.50"
HTTP_PORT, IPERF_PORT = 18080, 15201
TARGETS = {  # name -> listening address of the path under test
    "direct": BACKEND,
    "mesh-userspace": "127.10.50.1",
    "haproxy": "127.0.0.60",
    "haproxy-splice": "127.0.0.62",
    "nginx-stream": "127.0.0.61",
}
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def pinned(cpu: int, *cmd: str) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd]


def wait_listening(host: str, port: int, tries: int = 100) -> None:
    for _ in range(tries):
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


class Processes:
    """Programs started by this run, stopped by PID (never by name)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        (self.workdir / f"{name}.started.pid").write_text(str(proc.pid))
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                print(f"  ({name} needed SIGKILL)", file=sys.stderr)


def nginx_backend_conf(d: Path) -> Path:
    conf = d / "nginx-backend.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {d}/nginx-backend.pid;
error_log {d}/nginx-backend.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {BACKEND}:{HTTP_PORT} backlog=4096;
        location / {{ default_type text/plain; return 200 "hello\\n"; }}
    }}
}}
"""
    )
    return conf


def nginx_stream_conf(d: Path) -> Path:
    addr = TARGETS["nginx-stream"]
    conf = d / "nginx-stream.conf"
    conf.write_text(
        f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
daemon off;
pid {d}/nginx-stream.pid;
error_log {d}/nginx-stream.err warn;
events {{ worker_connections 8192; }}
stream {{
    server {{ listen {addr}:{HTTP_PORT} backlog=4096; proxy_pass {BACKEND}:{HTTP_PORT}; }}
    server {{ listen {addr}:{IPERF_PORT}; proxy_pass {BACKEND}:{IPERF_PORT}; }}
}}
"""
    )
    return conf


def haproxy_conf(d: Path, name: str, splice: bool) -> Path:
    addr = TARGETS[name]
    conf = d / f"{name}.cfg"
    extra = "    option splice-auto\n" if splice else ""
    conf.write_text(
        f"""global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
{extra}    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen http
    bind {addr}:{HTTP_PORT}
    server backend {BACKEND}:{HTTP_PORT}
listen iperf
    bind {addr}:{IPERF_PORT}
    server backend {BACKEND}:{IPERF_PORT}
"""
    )
    return conf


def mesh_conf(d: Path) -> Path:
    vip = TARGETS["mesh-userspace"]
    ports = [{"name": "http", "port": HTTP_PORT}, {"name": "iperf", "port": IPERF_PORT}]
    endpoint = {"address": BACKEND, "ports": {"http": HTTP_PORT, "iperf": IPERF_PORT}}
    service = {
        "namespace": "bench",
        "name": "backend",
        "cluster_ips": [vip],
        "ports": ports,
        "endpoints": [endpoint],
    }
    conf = d / "mesh-proxy.json"
    conf.write_text(json.dumps({"version": 1, "services": [service]}))
    return conf


def iperf(cpu: int, host: str, seconds: int) -> float:
    """Gbit/s received over one stream."""
    out = subprocess.run(
        pinned(cpu, "iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def wrk(cpu: int, host: str, seconds: int, close: bool, connections: int) -> float:
    """Requests per second."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        pinned(cpu, *cmd, f"http://{host}:{HTTP_PORT}/"),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    if not match:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return float(match.group(1))


@contextlib.contextmanager
def servers(args: argparse.Namespace, d: Path) -> Iterator[None]:
    procs = Processes(d)
    try:
        p, b = args.proxy_cpu, args.backend_cpu
        procs.start(
            "nginx-backend", pinned(b, "nginx", "-c", str(nginx_backend_conf(d)), "-e", "stderr")
        )
        procs.start(
            "iperf3-server",
            pinned(
                b, "iperf3", "-s", "-B", BACKEND, "-p", str(IPERF_PORT), "-I", str(d / "iperf3.pid")
            ),
        )
        procs.start(
            "nginx-stream", pinned(p, "nginx", "-c", str(nginx_stream_conf(d)), "-e", "stderr")
        )
        for name, splice in (("haproxy", False), ("haproxy-splice", True)):
            conf = haproxy_conf(d, name, splice)
            procs.start(
                name, pinned(p, "haproxy", "-db", "-f", str(conf), "-p", str(d / f"{name}.pid"))
            )
        procs.start(
            "mesh-userspace",
            pinned(
                p,
                sys.executable,
                "-m",
                "mesh.cli",
                "proxy",
                "--config",
                str(mesh_conf(d)),
                "--admin-listen",
                "127.0.0.1:0",
                "--log-level",
                "warning",
            ),
        )
        try:
            for host in TARGETS.values():
                wait_listening(host, HTTP_PORT)
                wait_listening(host, IPERF_PORT)
        except RuntimeError:
            for log in sorted(d.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
        yield
    finally:
        procs.stop_all()


def measure(args: argparse.Namespace, host: str) -> dict[str, float]:
    runs = sorted(iperf(args.backend_cpu, host, args.seconds) for _ in range(args.repeat))
    return {
        "bulk_gbps": runs[len(runs) // 2],  # the median: loopback figures are noisy
        "rps_keepalive": wrk(args.backend_cpu, host, args.seconds, False, args.connections),
        "rps_new_conn": wrk(args.backend_cpu, host, args.seconds, True, args.connections),
    }


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: sorted(row[key] for row in rows)[len(rows) // 2] for key in rows[0]}


def print_row(name: str, row: dict[str, float]) -> None:
    print(
        f"{name:15s} bulk {row['bulk_gbps']:7.2f} Gbit/s   "
        f"keep-alive {row['rps_keepalive']:9.0f} req/s   "
        f"new conn {row['rps_new_conn']:8.0f} req/s",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--backend-cpu", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="iperf3 runs per path (median)")
    ap.add_argument("--rounds", type=int, default=1, help="turns of every path (median)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated paths")
    args = ap.parse_args()
    targets = {name: TARGETS[name] for name in args.targets.split(",")}
    for tool in ("taskset", "iperf3", "wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    if not Path(NGINX_STREAM_MODULE).exists():
        sys.exit("the nginx stream module is not installed (libnginx-mod-stream)")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp, servers(args, Path(tmp)):
        for turn in range(args.rounds):
            if args.rounds > 1:
                print(f"round {turn + 1}/{args.rounds}", flush=True)
            for name, host in targets.items():
                rounds[name].append(measure(args, host))
                print_row(name, rounds[name][-1])
    results = {name: medians(rows) for name, rows in rounds.items()}
    if args.rounds > 1:
        print(f"\nmedians of {args.rounds} rounds:")
        for name, row in results.items():
            print_row(name, row)
    if "mesh-userspace" not in results or "haproxy" not in results:
        print(json.dumps(results))
        return
    ours, ha = results["mesh-userspace"], results["haproxy"]
    print("\nours / haproxy (default tcp mode):")
    for key in ("bulk_gbps", "rps_keepalive", "rps_new_conn"):
        print(f"  {key:14s} {ours[key] / ha[key]:.2f}x")
    goal = ours["bulk_gbps"] / ha["bulk_gbps"]
    print(
        f"bulk throughput goal (>= 0.8x haproxy): {'met' if goal >= 0.8 else 'NOT met'} ({goal:.2f}x)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
