"""``mesh dns --workers N``: N processes on one port (SO_REUSEPORT), every one answering, one
merged /metrics, all gone after SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.dns.metrics import DnsMetrics
from mesh.dns.worker_metrics import merge
from mesh.dns.workers import reserve
from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ready(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def answered(admin: tuple[str, int]) -> float:
    """The queries a worker counted, from its /metrics."""
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^mesh_dns_queries_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    )


def config_version(admin: tuple[str, int]) -> float:
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r"^mesh_dns_config_version ([0-9.e+]+)$", text, re.M)
    assert found is not None, text
    return float(found.group(1))


def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    config = tmp_path / "dns.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "services": [
                    {
                        "namespace": "shop",
                        "name": "web",
                        "kind": "ClusterIP",
                        "cluster_ips": ["127.10.0.5"],
                    }
                ],
            }
        )
    )
    args = ["dns", "--config", str(config), "--no-forward", "--workers", "3"]
    args += ["--dns-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    proc = Proc(args, {"dns", "admin", "admin1", "admin2"})
    try:
        workers = children(proc.popen.pid)
        assert len(workers) == 3
        server = proc.addresses["dns"]
        admins = [proc.addresses[name] for name in ("admin", "admin1", "admin2")]
        # Each worker reads the config file on its own.
        wait_for(lambda: all(ready(host, port) for host, port in admins), timeout=20)
        # Each query from a new socket (a new source port): the kernel's hash spreads them.
        for i in range(90):
            q = dns.message.make_query("web.shop.svc.cluster.local.", "A")
            if i % 10 == 0:
                reply = dns.query.tcp(q, server[0], port=server[1], timeout=5)
            else:
                reply = dns.query.udp(q, server[0], port=server[1], timeout=5)
            assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["127.10.0.5"]
        # Worker 0's /metrics (the announced admin) is the whole server's: its own counters
        # and the others' as they last published them (at most a second old).
        peers = [answered(admin) for admin in admins[1:]]
        assert all(c > 0 for c in peers), peers
        wait_for(lambda: answered(admins[0]) >= 90, timeout=10)
        merged = answered(admins[0])
        assert merged == 90  # every query exactly once: no worker counted twice
        assert merged > sum(answered(admin) for admin in admins[1:])  # worker 0's own too
        wait_for(lambda: config_version(admins[0]) == 1, timeout=5)  # a version, not a sum
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(20) == 0
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers)
    finally:
        proc.stop()


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "dns.yaml"
    config.write_text("zone: cluster.local\n")  # valid: only the port is wrong
    with socket.socket() as other:  # bound without SO_REUSEPORT: no worker can join it
        other.bind(("127.0.0.1", 0))
        port = other.getsockname()[1]
        args = ["--workers", "2", "--dns-listen", f"127.0.0.1:{port}"]
        result = subprocess.run(
            [*MESH, "dns", "--config", str(config), *args, "--admin-listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"mesh: cannot start the DNS server on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr


def test_reserve_holds_one_port_for_both_protocols() -> None:
    port, held = reserve("127.0.0.1", 0)
    try:
        assert [s.getsockname()[1] for s in held] == [port, port]
        # A worker joins the same port through SO_REUSEPORT.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            udp.bind(("127.0.0.1", port))
    finally:
        for s in held:
            s.close()


def test_merge_sums_samples_and_keeps_the_lowest_config_version() -> None:
    a, b = DnsMetrics(), DnsMetrics()
    a.queries[("A", "NOERROR")] = 3
    b.queries[("A", "NOERROR")] = 4
    b.queries[("AAAA", "NXDOMAIN")] = 1
    a.latency["cache"].observe(0.001, 3)
    b.latency["cache"].observe(0.001, 4)
    a.forwards_in_flight, b.forwards_in_flight = 2, 5
    a.config_version, b.config_version = 7, 6  # b has not applied the newest config yet
    registry = CollectorRegistry(auto_describe=False)
    registry.register(b)
    published = list(text_string_to_metric_families(generate_latest(registry).decode()))
    merged = {f.name: f for f in merge([*a.collect(), *published])}
    queries = {tuple(s.labels.values()): s.value for s in merged["mesh_dns_queries"].samples}
    assert queries == {("A", "NOERROR"): 7, ("AAAA", "NXDOMAIN"): 1}
    counts = [s.value for s in merged["mesh_dns_request_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels["path"] == "cache"]  # fmt: skip
    assert counts == [7]
    assert [s.value for s in merged["mesh_dns_forwards_in_flight"].samples] == [7]
    assert [s.value for s in merged["mesh_dns_config_version"].samples] == [6]
