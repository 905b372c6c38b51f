"""Cluster DNS against dnsmasq and unbound: queries/s, latency and CPU per query, by dnsperf.

Every server gets the same records (a generated DnsConfig of a few hundred Services; dnsmasq
reads them as a hosts file, unbound as local-data of a static local zone), listens on its own
127.0.0.x address and runs pinned to one CPU core, with dnsperf pinned to another. Workloads
(``WORKLOADS``; each a query file):

- ``repeated``: one cluster name, asked again and again;
- ``nxdomain``: 300,000 distinct names in the cluster zone, none of which exists (a random-
  subdomain flood, and what a pod's search path produces for external names);
- ``mixed``: search-path expansions of external names inside the zone (NXDOMAIN), A and AAAA,
  among real Service names, A and AAAA.

- ``forward-cached``: 1,000 external names repeated, TTL 300 (the forward cache);
- ``forward-distinct``: 300,000 distinct external names, each forwarded once.

Every server gets the same upstream: a third dnsmasq on its own loopback address answering
every name under ``bench.example``, pinned to dnsperf's core so it does not share the measured
server's.

Then the same with two cores: our server with ``--workers 2`` and unbound with two threads
(dnsmasq has one thread; it is shown as is), dnsperf sharing the cores. For each server:

- a saturation run (``-l`` seconds): queries/s, average latency, CPU seconds per query
  (utime + stime of the server from /proc/PID/stat, before and after; stime, the kernel's
  part, shown apart), the server's and the upstream's busy share (CPU seconds per second:
  a server below 100% waited for packets, or for a core the machine gave to others; an
  upstream near 100% would mean it, not the server, set the pace), and lost queries;
- a latency run at a fixed rate (``-Q``) with per-query output: p50 and p99 latency.

The servers alternate round by round and the summary takes medians, since a shared machine
makes single runs noisy; CPU time per query is the steadier comparison.

Usage: python benchmarks/dns_bench.py [--services 300] [--seconds 10] [--rate 20000]
       [--workloads repeated,nxdomain,mixed] [--no-two-cores] [--latency-seconds 0]
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dnslib import DNSRecord

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPort, DnsService

DNSMASQ_ADDR = "127.0.0.2"
OURS_ADDR = "127.0.0.3"
UPSTREAM_ADDR = "127.0.0.4"
UNBOUND_ADDR = "127.0.0.5"
EXTERNAL = "bench.example"
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


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its live children (our workers): system
    time is the kernel's share, the syscalls that move the packets."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0, 0.0
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime (14, 15)
    for k in kids:
        u, s = cpu_times(int(k))
        user, system = user + u, system + s
    return user, system


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


@dataclass
class Result:
    qps: float
    avg_latency: float
    completed: int
    lost: int
    cpu_per_query: float
    p50: float
    p99: float
    sys_per_query: float  # the kernel's part of cpu_per_query
    busy: float  # the server's CPU seconds per second of the run: 1.0 is its core saturated
    upstream_busy: float  # the same for the upstream (forwarding workloads)


def dnsperf(args: list[str], core: str, timeout: float) -> str:
    cmd = ["taskset", "-c", core, "dnsperf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def measure(
    pid: int, host: str, port: int, queries: Path, opts: argparse.Namespace, upstream_pid: int
) -> Result:
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
    before, up_before, began = cpu_times(pid), cpu_seconds(upstream_pid), time.monotonic()
    out = dnsperf([*base, "-l", str(opts.seconds)], opts.client_core, opts.seconds + 30)
    elapsed = time.monotonic() - began
    after = cpu_times(pid)
    cpu = sum(after) - sum(before)
    system = after[1] - before[1]
    up_cpu = cpu_seconds(upstream_pid) - up_before

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([0-9.]+)", out)
        if m is None:
            raise SystemExit(f"dnsperf output without {label!r}:\n{out}")
        return float(m.group(1))

    completed = int(num("Queries completed"))
    lat: list[float] = []  # per-query latencies, from a second rate-limited verbose run
    if opts.latency_seconds:
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
        sys_per_query=system / completed if completed else float("nan"),
        p50=pick(0.50),
        p99=pick(0.99),
        busy=cpu / elapsed,
        upstream_busy=up_cpu / elapsed,
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
        f"  {name:16s} {r.qps:>11,.0f} q/s  avg {r.avg_latency * 1e3:6.3f} ms  "
        f"p50 {r.p50 * 1e3:6.3f} ms  p99 {r.p99 * 1e3:6.3f} ms (at {OPTS.rate} q/s)  "
        f"cpu {r.cpu_per_query * 1e6:6.2f} us/query (sys {r.sys_per_query * 1e6:5.2f})  "
        f"busy {r.busy:4.0%}  "
        f"upstream busy {r.upstream_busy:4.0%}  lost {r.lost}"
    )


@dataclass(frozen=True)
class Workload:
    queries: Callable[[DnsConfig, list[str]], list[str]]  # (config, names) -> "NAME TYPE" lines
    upstream: bool = False  # forwards: needs an upstream server behind each server


def _repeated(config: DnsConfig, names: list[str]) -> list[str]:
    return [f"{names[0]} A"]


def _nxdomain(config: DnsConfig, names: list[str]) -> list[str]:
    return [f"q{i}-{i * 7919 % 100_003}.ns{i % 10}.svc.{config.zone} A" for i in range(300_000)]


def _mixed(config: DnsConfig, names: list[str]) -> list[str]:
    """A pod in ns0 resolving external names through its search path (each expansion an
    NXDOMAIN in the zone), A and AAAA, between lookups of real Services."""
    zone = config.zone
    out = []
    for i in range(5000):
        ext = f"host{i}.example{i % 50}.com"
        for qtype in ("A", "AAAA"):
            out += [f"{ext}.ns0.svc.{zone} {qtype}", f"{ext}.svc.{zone} {qtype}"]
            out += [f"{ext}.{zone} {qtype}", f"{names[i % len(names)]} {qtype}"]
    return out


def _external(n: int) -> Callable[[DnsConfig, list[str]], list[str]]:
    return lambda config, names: [f"n{i}.{EXTERNAL} A" for i in range(n)]


WORKLOADS: dict[str, Workload] = {
    "repeated": Workload(_repeated),
    "nxdomain": Workload(_nxdomain),
    "mixed": Workload(_mixed),
    "forward-cached": Workload(_external(1_000), upstream=True),
    "forward-distinct": Workload(_external(300_000), upstream=True),
}


def unbound_conf(
    d: Path, port: int, threads: int, records: list[tuple[str, str]], upstream: int
) -> Path:
    zone = "cluster.local."
    lines = [
        "server:",
        f"  interface: {UNBOUND_ADDR}",
        f"  port: {port}",
        f"  num-threads: {threads}",
        "  so-reuseport: yes",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{d}"',
        '  pidfile: ""',
        "  use-syslog: no",
        "  verbosity: 0",
        "  do-ip6: no",
        "  access-control: 127.0.0.0/8 allow",
        "  do-not-query-localhost: no",
        "  msg-cache-size: 64m",
        "  rrset-cache-size: 128m",
        '  module-config: "iterator"',
        f'  local-zone: "{zone}" static',
        f'  local-data: "{zone} 5 IN SOA ns.dns.{zone} hostmaster.{zone} 1 7200 1800 86400 5"',
    ]
    lines += [f'  local-data: "{name}. 5 IN A {ip}"' for name, ip in records]
    lines += [
        "forward-zone:",
        f'  name: "{EXTERNAL}."',
        f"  forward-addr: {UPSTREAM_ADDR}@{upstream}",
    ]
    lines += ["remote-control:", "  control-enable: no"]
    path = d / f"unbound-{threads}.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_servers(
    d: Path, opts: argparse.Namespace, records: list[tuple[str, str]], two: bool, upstream: int
) -> dict[str, tuple[subprocess.Popen[bytes], str, int]]:
    """The servers of one pass: each on one core, or (``two``) on both with two workers."""
    core = f"{opts.client_core},{opts.server_core}" if two else opts.server_core
    threads = 2 if two else 1
    tag = " @2 cores" if two else ""  # dnsmasq has one thread either way
    servers: dict[str, tuple[subprocess.Popen[bytes], str, int]] = {}
    port = free_port(DNSMASQ_ADDR)
    servers[f"dnsmasq x1{tag}"] = (
        subprocess.Popen(
            ["taskset", "-c", core, "dnsmasq", "--keep-in-foreground",
             "--no-resolv", "--no-hosts", f"--addn-hosts={d / 'hosts'}",
             f"--listen-address={DNSMASQ_ADDR}", "--bind-interfaces", f"--port={port}",
             f"--pid-file={d / 'dnsmasq.pid'}", "--conf-file=/dev/null", "--local-ttl=5",
             "--cache-size=10000", "--local=/cluster.local/",
             f"--user={getpass.getuser()}", f"--server={UPSTREAM_ADDR}#{upstream}"],
        ),
        DNSMASQ_ADDR,
        port,
    )  # fmt: skip
    if shutil.which("unbound"):
        port = free_port(UNBOUND_ADDR)
        conf = unbound_conf(d, port, threads, records, upstream)
        servers[f"unbound x{threads}{tag}"] = (
            subprocess.Popen(["taskset", "-c", core, "unbound", "-d", "-c", str(conf)]),
            UNBOUND_ADDR,
            port,
        )
    port = free_port(OURS_ADDR)
    servers[f"mesh-dns x{threads}{tag}"] = (
        subprocess.Popen(
            ["taskset", "-c", core, sys.executable, "-m", "mesh.cli", "dns", "--workers",
             str(threads), "--config", str(d / "config.json"), "--dns-listen",
             f"{OURS_ADDR}:{port}", "--admin-listen", f"{OURS_ADDR}:0",
             "--upstream", f"{UPSTREAM_ADDR}:{upstream}",
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
        ),
        OURS_ADDR,
        port,
    )  # fmt: skip
    return servers


def measure_pass(
    d: Path,
    opts: argparse.Namespace,
    records: list[tuple[str, str]],
    names: list[str],
    chosen: list[str],
    two: bool,
    upstream: int,
    upstream_pid: int,
    runs: dict[tuple[str, str], list[Result]],
) -> None:
    """Every chosen workload against every server of one pass (one core, or two)."""
    servers = start_servers(d, opts, records, two, upstream)
    try:
        for _, host, port in servers.values():
            wait_answering(host, port, names[0])
        for w in chosen:
            for _ in range(opts.rounds):  # alternate: drift on the machine hits all
                for name, (proc, host, port) in servers.items():
                    r = measure(proc.pid, host, port, d / f"{w}.txt", opts, upstream_pid)
                    runs.setdefault((w, name), []).append(r)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)


def main() -> int:
    opts = OPTS
    for tool in ("dnsmasq", "dnsperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    if shutil.which("unbound") is None:
        print("unbound is not installed: compared with dnsmasq only", file=sys.stderr)
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        print("needs two CPU cores", file=sys.stderr)
        return 2
    config = make_config(opts.services)
    records = address_records(config)
    names = sorted({name for name, _ in records})
    chosen = [w for w in opts.workloads.split(",") if w]
    for w in chosen:
        if w not in WORKLOADS:
            print(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
    runs: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        d = Path(tmp)
        (d / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
        (d / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in records))
        for w in chosen:
            lines = WORKLOADS[w].queries(config, names)
            (d / f"{w}.txt").write_text("\n".join(lines) + "\n")
        up_port = free_port(UPSTREAM_ADDR)
        upstream = subprocess.Popen(
            ["taskset", "-c", opts.client_core, "dnsmasq", "--keep-in-foreground",
             "--no-resolv", "--no-hosts", f"--listen-address={UPSTREAM_ADDR}",
             "--bind-interfaces", f"--port={up_port}", f"--pid-file={d / 'up.pid'}",
             "--conf-file=/dev/null", f"--address=/{EXTERNAL}/192.0.2.1",
             "--local-ttl=300", "--cache-size=0", f"--user={getpass.getuser()}"],
        )  # fmt: skip
        passes = (False, True) if opts.two_cores else (False,)
        try:
            wait_answering(UPSTREAM_ADDR, up_port, f"n0.{EXTERNAL}")
            for two in passes:
                measure_pass(d, opts, records, names, chosen, two, up_port, upstream.pid, runs)
        finally:
            stop(upstream)

    print(
        f"{len(names)} names, {opts.services} services, {opts.rounds} rounds of "
        f"{opts.seconds}s saturation runs; x1: server on core {opts.server_core}, "
        f"dnsperf on core {opts.client_core}; x2: servers and dnsperf share both cores"
    )
    for w in chosen:
        print(f"{w}:")
        qps: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for (wl, name), rs in runs.items():
            if wl != w:
                continue
            for r in rs:
                report(name, r)
            # Medians: a shared machine adds noise to single runs.
            qps[name] = statistics.median(r.qps for r in rs)
            cpu[name] = statistics.median(r.cpu_per_query for r in rs)
        for ours in [n for n in qps if n.startswith("mesh-dns")]:
            two = ours.endswith("cores")
            for peer in [
                n for n in qps if not n.startswith("mesh-dns") and n.endswith("cores") == two
            ]:
                print(
                    f"  {ours} / {peer}: {qps[ours] / qps[peer]:.2f}x queries/s "
                    f"({qps[ours]:,.0f} vs {qps[peer]:,.0f}), "
                    f"{cpu[ours] / cpu[peer]:.2f}x CPU per query "
                    f"({cpu[ours] * 1e6:.1f} vs {cpu[peer] * 1e6:.1f} us)"
                )
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=300)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-seconds", type=int, default=3, help="0: no latency run")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument(
        "--no-two-cores", dest="two_cores", action="store_false", help="skip the x2 pass"
    )
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
