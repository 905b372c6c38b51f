"""Cluster DNS against dnsmasq: queries/s, latency and CPU per query, measured by dnsperf.

Both servers get the same records (a generated DnsConfig of a few hundred Services; dnsmasq
reads them as a hosts file), listen on their own 127.0.0.x address, run pinned to the same
CPU core one after the other, with dnsperf pinned to another core. For each server:

- a saturation run (``-l`` seconds): queries/s, average latency, CPU seconds per query
  (utime + stime of the server from /proc/PID/stat, before and after);
- a latency run at a fixed rate (``-Q``) with per-query output: p50 and p99 latency.

The servers alternate round by round and the summary takes medians, since a shared machine
makes single runs noisy; CPU time per query is the steadier comparison.

Workloads (``--workload``):

- ``cluster``: every cluster name of the config, repeated (the wire cache);
- ``forward-cached``: 1,000 external names repeated, TTL 300 (the forward cache);
- ``forward-distinct``: 300,000 distinct external names, each forwarded once.

The forwarding workloads give both servers the same upstream: a third dnsmasq on its own
loopback address answering every name under ``bench.example`` (``--address``), pinned to
dnsperf's core so it does not share the measured server's.

Usage: python benchmarks/dns_bench.py [--workload cluster] [--services 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dnslib import DNSRecord

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPort, DnsService

DNSMASQ_ADDR = "127.0.0.2"
OURS_ADDR = "127.0.0.3"
UPSTREAM_ADDR = "127.0.0.4"
EXTERNAL = "bench.example"
WORKLOADS = {"forward-cached": 1_000, "forward-distinct": 300_000}  # external names
TICKS = os.sysconf("SC_CLK_TCK")


def make_config(n: int) -> DnsConfig:
    services = []
    for i in range(n):
        ns = f"ns{i % 10}"
        if i % 10 == 9:  # one in ten headless, three endpoints
            eps = tuple(
                DnsEndpoint(
                    addresses=(f"127.2{k}.{i // 250}.{i % 250 + 1}",),
                    hostname=f"pod-{k}",
                    ports=(DnsPort(name="http", port=8080),),
                )
                for k in range(3)
            )
            services.append(
                DnsService(namespace=ns, name=f"svc{i}", kind="Headless", endpoints=eps)
            )
        else:
            ip = f"127.10.{i // 250}.{i % 250 + 1}"
            services.append(
                DnsService(
                    namespace=ns,
                    name=f"svc{i}",
                    kind="ClusterIP",
                    cluster_ips=(ip,),
                    ports=(DnsPort(name="http", port=80),),
                )
            )
    return DnsConfig(version=1, services=tuple(services))


def address_records(config: DnsConfig) -> list[tuple[str, str]]:
    """(name, ip) pairs: every A record of the config's Services."""
    out = []
    for s in config.services:
        base = f"{s.name}.{s.namespace}.svc.{config.zone}"
        if s.kind == "ClusterIP":
            out += [(base, ip) for ip in s.cluster_ips]
        for ep in s.endpoints:
            for ip in ep.addresses:
                out.append((base, ip))
                if ep.hostname:
                    out.append((f"{ep.hostname}.{base}", ip))
    return out


def free_port(host: str) -> int:
    for port in range(15300, 15400):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind((host, port))
                t.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port on {host}")


def wait_answering(host: str, port: int, name: str, timeout: float = 10.0) -> None:
    q = DNSRecord.question(name).pack()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(q, (host, port))
            try:
                s.recvfrom(4096)
                return
            except OSError:
                continue
    raise SystemExit(f"server on {host}:{port} did not answer within {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


@dataclass
class Result:
    qps: float
    avg_latency: float
    completed: int
    lost: int
    cpu_per_query: float
    p50: float
    p99: float


def dnsperf(args: list[str], core: str, timeout: float) -> str:
    cmd = ["taskset", "-c", core, "dnsperf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def measure(pid: int, host: str, port: int, queries: Path, opts: argparse.Namespace) -> Result:
    base = [
        "-s",
        host,
        "-p",
        str(port),
        "-d",
        str(queries),
        "-c",
        str(opts.clients),
        "-q",
        str(opts.outstanding),
    ]
    before = cpu_seconds(pid)
    out = dnsperf([*base, "-l", str(opts.seconds)], opts.client_core, opts.seconds + 30)
    cpu = cpu_seconds(pid) - before

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([0-9.]+)", out)
        if m is None:
            raise SystemExit(f"dnsperf output without {label!r}:\n{out}")
        return float(m.group(1))

    completed = int(num("Queries completed"))
    verbose = dnsperf(
        [*base, "-l", str(opts.latency_seconds), "-Q", str(opts.rate), "-v"],
        opts.client_core,
        opts.latency_seconds + 30,
    )
    lat = sorted(
        float(line.rsplit(" ", 1)[1]) for line in verbose.splitlines() if line.startswith("> ")
    )

    def pick(fraction: float) -> float:
        return lat[min(len(lat) - 1, int(fraction * len(lat)))] if lat else float("nan")

    return Result(
        qps=num("Queries per second"),
        avg_latency=num("Average Latency \\(s\\)"),
        completed=completed,
        lost=int(num("Queries lost")),
        cpu_per_query=cpu / completed if completed else float("nan"),
        p50=pick(0.50),
        p99=pick(0.99),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def report(name: str, r: Result) -> None:
    print(
        f"{name:8s} {r.qps:>11,.0f} q/s  avg {r.avg_latency * 1e3:6.3f} ms  "
        f"p50 {r.p50 * 1e3:6.3f} ms  p99 {r.p99 * 1e3:6.3f} ms (at {OPTS.rate} q/s)  "
        f"cpu {r.cpu_per_query * 1e6:6.2f} us/query  lost {r.lost}"
    )


def main() -> int:
    opts = OPTS
    for tool in ("dnsmasq", "dnsperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        print("needs two CPU cores", file=sys.stderr)
        return 2
    config = make_config(opts.services)
    records = address_records(config)
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        d = Path(tmp)
        (d / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
        (d / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in records))
        names = sorted({name for name, _ in records})
        forwarding = opts.workload != "cluster"
        if forwarding:
            names = [f"n{i}.{EXTERNAL}" for i in range(WORKLOADS[opts.workload])]
        (d / "queries.txt").write_text("".join(f"{n} A\n" for n in names))
        servers: dict[str, tuple[subprocess.Popen[bytes], str, int]] = {}
        upstream: subprocess.Popen[bytes] | None = None
        try:
            dnsmasq_forward = ["--no-resolv"]
            ours_forward = ["--no-forward"]
            if forwarding:
                up_port = free_port(UPSTREAM_ADDR)
                upstream = subprocess.Popen(
                    ["taskset", "-c", opts.client_core, "dnsmasq", "--keep-in-foreground",
                     "--no-resolv", "--no-hosts", f"--listen-address={UPSTREAM_ADDR}",
                     "--bind-interfaces", f"--port={up_port}", f"--pid-file={d / 'up.pid'}",
                     "--conf-file=/dev/null", f"--address=/{EXTERNAL}/192.0.2.1",
                     "--local-ttl=300", "--cache-size=0", f"--user={getpass.getuser()}"],
                )  # fmt: skip
                wait_answering(UPSTREAM_ADDR, up_port, names[0])
                dnsmasq_forward = ["--no-resolv", f"--server={UPSTREAM_ADDR}#{up_port}"]
                ours_forward = ["--upstream", f"{UPSTREAM_ADDR}:{up_port}"]
            port = free_port(DNSMASQ_ADDR)
            servers["dnsmasq"] = (
                subprocess.Popen(
                    ["taskset", "-c", opts.server_core, "dnsmasq", "--keep-in-foreground",
                     "--no-resolv", "--no-hosts", f"--addn-hosts={d / 'hosts'}",
                     f"--listen-address={DNSMASQ_ADDR}", "--bind-interfaces", f"--port={port}",
                     f"--pid-file={d / 'dnsmasq.pid'}", "--conf-file=/dev/null", "--local-ttl=5",
                     "--cache-size=10000", "--local=/cluster.local/",
                     f"--user={getpass.getuser()}", *dnsmasq_forward],
                ),
                DNSMASQ_ADDR,
                port,
            )  # fmt: skip
            port = free_port(OURS_ADDR)
            servers["mesh-dns"] = (
                subprocess.Popen(
                    ["taskset", "-c", opts.server_core, sys.executable, "-m", "mesh.cli", "dns",
                     "--config", str(d / "config.json"), "--dns-listen", f"{OURS_ADDR}:{port}",
                     "--admin-listen", f"{OURS_ADDR}:0", *ours_forward, "--log-level", "warning"],
                    stdout=subprocess.DEVNULL,
                ),
                OURS_ADDR,
                port,
            )  # fmt: skip
            for _, host, port in servers.values():
                wait_answering(host, port, names[0])
            # Alternate the servers round by round, so drift on the machine hits both.
            runs: dict[str, list[Result]] = {name: [] for name in servers}
            for _ in range(opts.rounds):
                for name, (proc, host, port) in servers.items():
                    runs[name].append(measure(proc.pid, host, port, d / "queries.txt", opts))
        finally:
            for proc, _, _ in servers.values():
                stop(proc)
            if upstream is not None:
                stop(upstream)

    print(
        f"workload {opts.workload}: "
        f"{len(names)} names, {opts.services} services, {opts.rounds} rounds of "
        f"{opts.seconds}s saturation runs; server on core {opts.server_core}, "
        f"dnsperf on core {opts.client_core}"
    )
    for name, rs in runs.items():
        for r in rs:
            report(name, r)
    # Medians: a shared machine adds noise to single runs.
    qps = {name: statistics.median(r.qps for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r.cpu_per_query for r in rs) for name, rs in runs.items()}
    print(
        f"median q/s: mesh-dns {qps['mesh-dns']:,.0f}, dnsmasq {qps['dnsmasq']:,.0f}; "
        f"ratio (mesh-dns / dnsmasq): {qps['mesh-dns'] / qps['dnsmasq']:.2f}x queries/s, "
        f"{cpu['mesh-dns'] / cpu['dnsmasq']:.2f}x CPU per query"
    )
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", choices=["cluster", *WORKLOADS], default="cluster")
    p.add_argument("--services", type=int, default=300)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-seconds", type=int, default=3)
    p.add_argument("--rate", type=int, default=20000, help="q/s of the latency run")
    p.add_argument("--outstanding", type=int, default=100)
    p.add_argument("--clients", type=int, default=1)
    cores = sorted(os.sched_getaffinity(0))
    p.add_argument("--server-core", default=str(cores[-1]))
    p.add_argument("--client-core", default=str(cores[0]))
    return p.parse_args()


OPTS = parse_args() if __name__ == "__main__" else argparse.Namespace()

if __name__ == "__main__":
    sys.exit(main())
