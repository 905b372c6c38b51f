"""``mesh proxy --mode nftables`` as a process, run inside a node namespace of a test box:
it syncs its config file into the kernel, serves /ready there, keeps the ruleset when it
stops (as kube-proxy does), and ``--cleanup`` removes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import cluster_box
from mesh.proxy.cluster_box import ClusterBox
from tests.conftest import require_root, require_tool
from tests.polling import wait_for
from tests.proxy.netns_tools import ask, nft, start_who, stop, unique_prefix

MESH = [sys.executable, "-m", "mesh.cli"]
VIP = "198.19.0.7"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[ClusterBox]:
    require_root()
    require_tool("ip", "nft")
    state = tmp_path / "state"
    b = cluster_box.up(unique_prefix(), state_dir=state)
    try:
        b.add_pod("default", "client")
        b.add_pod("default", "backend", "198.18.0.50")
        yield b
    finally:
        cluster_box.down(state)


def config(version: int) -> ProxyConfig:
    return ProxyConfig(
        version=version,
        services=(
            ProxyService(
                namespace="default",
                name="web",
                cluster_ips=(VIP,),
                ports=(ProxyPort(name="http", port=80),),
                endpoints=(ProxyEndpoint(address="198.18.0.50", ports={"http": 8080}),),
            ),
        ),
    )


def test_standalone_nftables_proxy(box: ClusterBox, tmp_path: Path) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(config(3).model_dump_json())
    who = start_who(box, "backend", "198.18.0.50", [8080])
    cmd = [*MESH, "proxy", "--mode", "nftables", "--config", str(path)]
    cmd += ["--admin-listen", "127.0.0.1:18080", "--log-level", "warning"]
    proc = subprocess.Popen(box.node_argv(cmd), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ask(box, "client", VIP, 80, "TCP") == "198.18.0.50:8080", timeout=15.0)
        ready = subprocess.run(
            box.node_argv(["curl", "-s", "http://127.0.0.1:18080/config/proxy"]),
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert json.loads(ready.stdout)["synced_version"] == 3

        # A new config file takes the endpoint away: the VIP moves to the reject map.
        service = config(4).services[0].model_copy(update={"endpoints": ()})
        path.write_text(config(4).model_copy(update={"services": (service,)}).model_dump_json())
        wait_for(
            lambda: (
                "198.19.0.7 . tcp . 80 : goto reject-chain"
                in nft(box, "list", "map", "ip", "mesh-proxy", "no-endpoint-services")
            ),
            timeout=15.0,
        )
        assert ask(box, "client", VIP, 80, "TCP") == "reject"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        stop([who])

    # The ruleset outlives the process; --cleanup removes it.
    tables = nft(box, "list", "tables")
    assert "table ip mesh-proxy" in tables and "table ip6 mesh-proxy" in tables
    out = subprocess.run(
        box.node_argv([*MESH, "proxy", "--mode", "nftables", "--cleanup"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "mesh-proxy" not in nft(box, "list", "tables")
