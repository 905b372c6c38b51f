"""The cluster in a box end to end (root): ``mesh up --netns``, ``mesh exec``, ``mesh down``.

Pods are network namespaces on a bridge in an isolated node namespace with no route out; the
names resolve through the cluster DNS on the node (reached at the kube-dns ClusterIP through
the nftables proxy), and Service traffic is balanced by the kernel.
"""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.conftest import require_root, require_tool
from tests.netns_box import MESH, PODS, Box, namespaces, write_manifests
from tests.polling import wait_for

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
"""


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Box, Path]]:
    require_root()
    require_tool("ip", "nft", "dig", "curl")
    manifests = write_manifests(tmp_path, MANIFESTS, PODS)
    b = Box(f"t{secrets.token_hex(3)}", manifests)
    try:
        yield b, manifests
    finally:
        b.stop()


def test_cluster_in_a_box(box: tuple[Box, Path], tmp_path: Path) -> None:
    b, manifests = box
    prefix = f"{b.name}-"
    assert {f"{prefix}node", f"{prefix}shop-web-1", f"{prefix}shop-client"} <= namespaces()

    # DNS through the pod's resolv.conf (search path, ndots:5) and the kube-dns ClusterIP.
    wait_for(
        lambda: b.exec("client", "dig", "+search", "+short", "web").startswith("198.19."),
        timeout=15.0,
    )
    vip = b.exec("client", "dig", "+search", "+short", "web")
    assert b.exec("client", "dig", "+search", "+short", "db-0.db").startswith("198.18.")

    # Two web pods serve their own name; the kernel balances the VIP round robin.
    servers = []
    for name in ("web-1", "web-2"):
        site = tmp_path / name
        site.mkdir()
        (site / "index.html").write_text(name)
        serve = [sys.executable, "-m", "http.server", "8080", "--directory", str(site)]
        servers.append(
            subprocess.Popen(
                [*MESH, "exec", "--box", b.name, name, "--", *serve],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        wait_for(
            lambda: b.exec("client", "curl", "-s", "-m", "2", f"http://{vip}/") != "", timeout=15.0
        )
        answers = [b.exec("client", "curl", "-s", "-m", "2", "http://web.shop/") for _ in range(6)]
        assert set(answers) == {"web-1", "web-2"}
        assert all(a != b_ for a, b_ in itertools.pairwise(answers))
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)

    # A pod deleted from the manifests loses its namespace.
    (manifests / "web-2.yaml").unlink()
    wait_for(lambda: f"{prefix}shop-web-2" not in namespaces(), timeout=15.0)

    b.stop()
    assert not {n for n in namespaces() if n.startswith(prefix)}


def test_down_after_a_crash(box: tuple[Box, Path]) -> None:
    b, _ = box
    prefix = f"{b.name}-"
    b.popen.send_signal(signal.SIGKILL)  # no chance to clean up
    b.popen.wait(10)
    assert {n for n in namespaces() if n.startswith(prefix)}
    out = subprocess.run(
        [*MESH, "down", "--box", b.name], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("removed")
    assert not {n for n in namespaces() if n.startswith(prefix)}


class ThreadedUpstream:
    """An upstream on the host's loopback (the DNS server forwards from the host's network
    namespace): A and AAAA for example.org., NXDOMAIN for the rest; records every question."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.77", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text().lower()
            rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
            self.seen.append((name, rdtype))
            r = dns.message.make_response(q)
            if name == "example.org." and rdtype in ("A", "AAAA"):
                ip = "192.0.2.10" if rdtype == "A" else "2001:db8::10"
                r.answer.append(dns.rrset.from_text(name, 300, "IN", rdtype, ip))
            else:
                r.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(r.to_wire(), addr)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def dns_counters(admin: str) -> tuple[float, float]:
    """(queries answered, autopath walks that found the name) from the server's /metrics."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    queries = sum(
        float(m.group(1))
        for m in re.finditer(r"^mesh_dns_queries_total\{[^}]*\} (\S+)$", text, re.M)
    )
    found = re.search(r'^mesh_dns_autopath_total\{result="found"\} (\S+)$', text, re.M)
    return queries, float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(("autopath", "queries"), [(True, 1), (False, 4)], ids=["on", "off"])
def test_autopath_one_query_instead_of_four(tmp_path: Path, autopath: bool, queries: int) -> None:
    require_root()
    require_tool("ip", "nft", "getent")
    manifests = write_manifests(tmp_path, MANIFESTS, [("client", "client", None)])
    upstream = ThreadedUpstream()
    b = Box(
        f"t{secrets.token_hex(3)}",
        manifests,
        dns_args=("--autopath",) * autopath + ("--upstream", f"127.0.0.77:{upstream.port}"),
    )
    try:
        admin = b.addresses["admin"]
        # The pod's address reaches the DNS config once the node agent has published it.
        wait_for(lambda: b.exec("client", "getent", "hosts", "web") != "", timeout=20.0)
        before_queries, before_found = dns_counters(admin)
        upstream.seen.clear()
        line = b.exec("client", "getent", "hosts", "example.org")
        assert line.split()[0] in ("2001:db8::10", "192.0.2.10"), line
        after_queries, after_found = dns_counters(admin)
        # getent asks one type (AAAA; A only if that failed). Without autopath the pod walks
        # its search path: three NXDOMAINs from the cluster zone, then the name itself.
        assert after_found - before_found == autopath
        assert after_queries - before_queries == queries
        assert len(upstream.seen) == 1
        assert upstream.seen[0][0] == "example.org."
    finally:
        b.stop()
        upstream.close()
