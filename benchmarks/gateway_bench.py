"""L7 gateway benchmark: our engine (mesh.http) against nginx as a reverse proxy and HAProxy
in http mode, all in front of the same upstream (nginx answering a small static response).

wrk measures requests per second and p50/p99 latency over keep-alive connections and with a
new connection per request (``Connection: close``), and the proxy's own CPU time per request
(from /proc): on a shared machine the req/s figures move with the neighbours' load, the CPU
per request much less, and its ratio to nginx's is the req/s ratio each would reach alone on a
core. Each proxy runs alone on one core
(``--proxy-cpu``, one worker / thread / process); the upstream and wrk share the other
(``--backend-cpu``). Everything listens on 127.0.0.0/8; every program is stopped by its PID.
Plain HTTP only; ingress_tls_bench.py measures TLS termination.

    python benchmarks/gateway_bench.py [--seconds 5] [--connections 32] [--rounds 1]
        [--targets mesh,nginx,haproxy] [--proxy-cpu 0] [--backend-cpu 1]

The engine is run by this same file: ``gateway_bench.py --serve-mesh ADDR UPSTREAM``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxy_bench import Processes, pinned, wait_listening

UPSTREAM = ("127.0.0.70", 18180)
TARGETS = {
    "mesh": ("127.0.0.71", 18180),
    "nginx": ("127.0.0.72", 18180),
    "haproxy": ("127.0.0.73", 18180),
}


def upstream_conf(d: Path) -> Path:
    host, port = UPSTREAM
    conf = d / "upstream.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {d}/upstream.pid;
error_log {d}/upstream.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "hello\\n"; }}
    }}
}}
"""
    )
    return conf


def nginx_proxy_conf(d: Path, listen: str = "") -> Path:
    """``listen``: the server's listen (and ssl_*) directives; plain HTTP on TARGETS by default."""
    listen = listen or "listen {}:{} backlog=4096;".format(*TARGETS["nginx"])
    uh, up = UPSTREAM
    conf = d / "nginx-proxy.conf"
    conf.write_text(
        f"""worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {d}/pbody; proxy_temp_path {d}/pproxy; fastcgi_temp_path {d}/pfcgi;
    uwsgi_temp_path {d}/puwsgi; scgi_temp_path {d}/pscgi;
    upstream backend {{ server {uh}:{up}; keepalive 64; }}
    server {{
        {listen}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""
    )
    return conf


def haproxy_conf(d: Path, bind: str = "") -> Path:
    """``bind``: the frontend's bind line(s); plain HTTP on TARGETS by default."""
    bind = bind or "bind {}:{}".format(*TARGETS["haproxy"])
    uh, up = UPSTREAM
    conf = d / "haproxy.cfg"
    conf.write_text(
        f"""global
    maxconn 8000
    nbthread 1
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen gw
    {bind}
    http-reuse always
    server backend {uh}:{up}
"""
    )
    return conf


def vary_head_script(d: Path) -> Path:
    """A wrk script whose every request carries a field no earlier one had: no head repeats,
    so what the engine remembers of repeated heads (mesh.http.h1, h1_passthrough,
    proxyheaders) never helps the request side (the upstream's answers still repeat)."""
    script = d / "vary-head.lua"
    # wrk.headers copied: the -H fields (Connection: close) stay on every request
    script.write_text(
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  local h = {}\n"
        "  for k, v in pairs(wrk.headers) do h[k] = v end\n"
        '  h["X-N"] = tostring(n)\n'
        "  return wrk.format(nil, nil, h)\n"
        "end\n"
    )
    return script


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    cpu: int,
    addr: tuple[str, int],
    seconds: int,
    close: bool,
    connections: int,
    pid: int,
    scheme: str = "http",
    script: Path | None = None,
) -> dict[str, float]:
    """``script``: a wrk Lua script (``vary_head_script``)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    if script is not None:
        cmd += ["-s", str(script)]
    used = cpu_seconds(pid)
    out = subprocess.run(
        pinned(cpu, *cmd, f"{scheme}://{addr[0]}:{addr[1]}/"),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    used = cpu_seconds(pid) - used
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"wrk output not understood:\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "rps": float(rps.group(1)),
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
        # CPU per request of the proxy alone: steadier than req/s on a shared machine
        "cpu_us": used / max(int(total.group(1)), 1) * 1e6,
    }


@contextlib.contextmanager
def servers(args: argparse.Namespace, d: Path) -> Iterator[dict[str, int]]:
    procs = Processes(d)
    try:
        p, b = args.proxy_cpu, args.backend_cpu
        procs.start("upstream", pinned(b, "nginx", "-c", str(upstream_conf(d)), "-e", "stderr"))
        wait_listening(*UPSTREAM)
        pids: dict[str, int] = {}
        if "nginx" in args.targets:
            cmd = ["nginx", "-c", str(nginx_proxy_conf(d)), "-e", "stderr"]
            pids["nginx"] = procs.start("nginx", pinned(p, *cmd)).pid
        if "haproxy" in args.targets:
            pids["haproxy"] = procs.start(
                "haproxy", pinned(p, "haproxy", "-f", str(haproxy_conf(d)))
            ).pid
        if "mesh" in args.targets:
            mesh = "{}:{}".format(*TARGETS["mesh"])
            upstream = "{}:{}".format(*UPSTREAM)
            cmd = [sys.executable, __file__, "--serve-mesh", mesh, upstream]
            pids["mesh"] = procs.start("mesh", pinned(p, *cmd)).pid
        for name in args.targets:
            wait_listening(*TARGETS[name])
        yield pids
    finally:
        procs.stop_all()


def serve_mesh(listen: str, upstream: str) -> None:
    import trio

    from mesh.http.balance import RoundRobin
    from mesh.http.decision import Forward
    from mesh.http.server import HttpServer

    host, port = listen.rsplit(":", 1)
    uh, up = upstream.rsplit(":", 1)
    decision = Forward(RoundRobin([(uh, int(up))]))
    server = HttpServer(lambda request, peer: decision)
    trio.run(server.listen, host, int(port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--targets", default="mesh,nginx,haproxy")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--backend-cpu", type=int, default=1)
    parser.add_argument("--serve-mesh", nargs=2, metavar=("LISTEN", "UPSTREAM"))
    args = parser.parse_args()
    if args.serve_mesh:
        serve_mesh(*args.serve_mesh)
        return
    args.targets = [t for t in args.targets.split(",") if t]
    for tool in ("taskset", "wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk nginx-light haproxy)")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        servers(args, Path(tmp)) as pids,
    ):
        for _ in range(args.rounds):
            for name in args.targets:
                for mode, close in (("keepalive", False), ("new-conn", True)):
                    row = wrk(
                        args.backend_cpu,
                        TARGETS[name],
                        args.seconds,
                        close,
                        args.connections,
                        pids[name],
                    )
                    results.setdefault((name, mode), []).append(row)
    print(
        f"{'proxy':<10}{'mode':<11}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs nginx':>10}"
        f"{'CPU us/req':>12}{'CPU vs nginx':>14}"
    )
    for mode in ("keepalive", "new-conn"):
        base = results.get(("nginx", mode))
        base_rps = statistics.median(r["rps"] for r in base) if base else None
        base_cpu = statistics.median(r["cpu_us"] for r in base) if base else None
        for name in args.targets:
            rows = results[(name, mode)]
            rps = statistics.median(r["rps"] for r in rows)
            p50 = statistics.median(r["p50_ms"] for r in rows)
            p99 = statistics.median(r["p99_ms"] for r in rows)
            cpu = statistics.median(r["cpu_us"] for r in rows)
            ratio = f"{rps / base_rps:.2f}x" if base_rps else "-"
            # nginx's CPU per request over ours: the req/s ratio each would reach alone on a core
            cpu_ratio = f"{base_cpu / cpu:.2f}x" if base_cpu and cpu else "-"
            print(
                f"{name:<10}{mode:<11}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{ratio:>10}"
                f"{cpu:>12.1f}{cpu_ratio:>14}"
            )


if __name__ == "__main__":
    main()
