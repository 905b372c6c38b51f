"""Endpoint churn under load in nftables mode: while a client opens connection after
connection to a Service, one endpoint keeps joining and leaving; connections never fail,
because each sync is one atomic transaction and the endpoints that stay are never touched."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import cluster_box
from mesh.proxy.cluster_box import ClusterBox
from mesh.proxy.conntrack import ConntrackCleaner
from mesh.proxy.nft_runner import SubprocessNftRunner
from mesh.proxy.nft_sync import Syncer
from tests.conftest import require_root, require_tool
from tests.proxy.netns_tools import start_who, stop, unique_prefix

VIP = "198.19.0.1"
STAYING = ("198.18.1.1", "198.18.1.2", "198.18.1.3")
CHURNING = "198.18.1.4"
CLIENT = "198.18.0.11"

# A bounded load: sequential connections (each with a timeout and its own source port) until
# its stdin ends (the test is done changing endpoints), at most MAX of them and 60 s; a tally
# of who answered. It runs as long as the syncs take, however slow a loaded machine makes
# them: a fixed count could end before the endpoint set changed often.
MAX = 10000
LOAD = r"""
import json, select, socket, sys, time
dest, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fails, seen, deadline, stage, made = [], {}, time.monotonic() + 60, "", 0
for i in range(count):
    if time.monotonic() > deadline or select.select([sys.stdin], [], [], 0)[0]:
        break  # stdin readable: at its end, the test is done
    made += 1
    try:
        # A source port of its own per connection: a reused 4-tuple could meet the
        # endpoint's TIME_WAIT socket of an earlier flow, which is not what this measures.
        with socket.socket() as s:
            # Long enough for TCP to recover a lost segment by retransmission (a SYN is
            # resent after 1 s, then 3 s): a failure here is a flow that stays broken.
            s.settimeout(5)
            s.bind(("", 20000 + i))
            stage = "connect"
            s.connect((dest, port))
            stage = "read"
            who = s.makefile().readline().strip()
        if not who:
            fails.append("empty")
        seen[who] = seen.get(who, 0) + 1
    except OSError as exc:
        fails.append(f"{i} {stage}: {exc!r}")
    time.sleep(0.002)
print(json.dumps({"fails": fails, "seen": seen, "made": made}))
"""


@pytest.fixture
def box(tmp_path: Path) -> Iterator[ClusterBox]:
    require_root()
    require_tool("nft", "ip", "conntrack")
    state = tmp_path / "state"
    b = cluster_box.up(unique_prefix(), state_dir=state)
    try:
        for ip in (*STAYING, CHURNING, CLIENT):
            b.add_pod("default", "pod-" + ip.replace(".", "-"), ip)
        yield b
    finally:
        cluster_box.down(state)


def web(version: int, *addresses: str) -> ProxyConfig:
    svc = ProxyService(
        namespace="default",
        name="web",
        cluster_ips=(VIP,),
        ports=(ProxyPort(port=80),),
        endpoints=tuple(ProxyEndpoint(address=a, ports={"": 8080}) for a in addresses),
    )
    return ProxyConfig(version=version, services=(svc,))


@pytest.mark.parametrize("dispatch", ["inline", "shared"])
def test_endpoint_churn_under_load(box: ClusterBox, dispatch: str) -> None:
    opts = box.render_options(dispatch=dispatch)
    syncer = Syncer(SubprocessNftRunner(box.node), opts, ConntrackCleaner(box.node))
    assert syncer.sync(web(1, *STAYING)).ok
    servers = [
        start_who(box, "default/pod-" + ip.replace(".", "-"), ip, [8080])
        for ip in (*STAYING, CHURNING)
    ]
    client = box.popen(
        "default/pod-" + CLIENT.replace(".", "-"),
        [sys.executable, "-c", LOAD, VIP, "80", str(MAX)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        version = 1
        rounds = 0
        for round_ in range(40):  # bounded: 40 syncs while the load runs
            if client.poll() is not None:
                break
            rounds += 1
            version += 1
            members = (*STAYING, CHURNING) if round_ % 2 == 0 else STAYING
            result = syncer.sync(web(version, *members))
            assert result.ok, result.error
            time.sleep(0.05)
        out, err = client.communicate(timeout=90)  # closes its stdin: the load ends
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
        stop(servers)
    report = json.loads(out)
    assert rounds == 40, "the load must run while the endpoint set changes, every time"
    assert report["fails"] == [], err
    seen = report["seen"]
    assert {f"{ip}:8080" for ip in STAYING} <= set(seen)
    assert f"{CHURNING}:8080" in seen  # it did take traffic while it was in
    assert sum(seen.values()) == report["made"] > 40  # every connection was answered
