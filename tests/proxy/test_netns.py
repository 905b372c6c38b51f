"""The cluster in a box on a real kernel: namespaces, addresses, resolv.conf, cleanup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mesh.proxy import cluster_box, netns
from mesh.proxy.cluster_box import ClusterBox
from tests.conftest import require_root, require_tool
from tests.proxy.netns_tools import ask, start_who, stop, unique_prefix


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    require_root()
    require_tool("nft", "ip")


def _netns_names() -> list[str]:
    return list(netns.owned(""))


async def test_box_builds_pods_and_cleans_up(tmp_path: Path) -> None:
    prefix = unique_prefix()
    async with ClusterBox(prefix, state_dir=tmp_path / "state") as box:
        a = box.add_pod("default", "a")
        b = box.add_pod("shop", "b", "198.18.7.7")
        assert a.ip == "198.18.0.2" and b.ip == "198.18.7.7"
        assert {box.node, a.netns, b.netns} <= set(_netns_names())
        resolv = (netns.ETC_NETNS / b.netns / "resolv.conf").read_text()
        assert resolv == (
            "nameserver 198.19.0.10\n"
            "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5\n"
        )
        seen = await box.exec(b, ["cat", "/etc/resolv.conf"])
        assert seen.stdout.decode() == resolv  # ip netns exec mounts it
        routes = await box.exec(a, ["ip", "route"])
        assert "default via 198.18.0.1" in routes.stdout.decode()
        node_routes = (
            await trio.run_process(box.node_argv(["ip", "route"]), capture_stdout=True)
        ).stdout.decode()
        assert "default" not in node_routes  # nothing leaves the box
        server = start_who(box, b, b.ip, [8080])
        try:
            assert await trio.to_thread.run_sync(ask, box, a, b.ip, 8080, "TCP") == f"{b.ip}:8080"
        finally:
            stop([server])
        assert cluster_box.exec_argv(box.state.dir, "b", ["true"]) == [
            "ip", "netns", "exec", b.netns, "true",
        ]  # fmt: skip
        with pytest.raises(KeyError):
            cluster_box.exec_argv(box.state.dir, "nope", ["true"])
    assert not [n for n in _netns_names() if n.startswith(prefix)]
    assert not (netns.ETC_NETNS / b.netns).exists()


def test_down_cleans_up_after_a_crash(tmp_path: Path) -> None:
    """A process builds a box and dies without cleanup: ``down`` removes what it recorded."""
    prefix = unique_prefix()
    state = tmp_path / "state"
    script = (
        "import os, subprocess\n"
        "from mesh.proxy import cluster_box\n"
        f"box = cluster_box.up({prefix!r}, [('default', 'a', None), ('default', 'b', None)],"
        f" state_dir={str(state)!r})\n"
        "box.popen('default/a', ['sleep', '300'], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL)\n"
        "os._exit(3)\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
        assert proc.returncode == 3, proc.stderr
        left = [n for n in _netns_names() if n.startswith(prefix)]
        assert len(left) == 3
        removed = cluster_box.down(state)
        assert sorted(removed) == sorted(left)
        assert not [n for n in _netns_names() if n.startswith(prefix)]
        assert not Path(state).exists()  # its record directory goes too
        assert cluster_box.down(state) == []  # idempotent
    finally:
        cluster_box.down(state)


def test_bad_pod_addresses(tmp_path: Path) -> None:
    box = cluster_box.up(unique_prefix(), state_dir=tmp_path / "state")
    try:
        box.add_pod("default", "a", "198.18.0.5")
        with pytest.raises(ValueError, match="taken"):
            box.add_pod("default", "b", "198.18.0.5")
        with pytest.raises(ValueError, match="not in the pod CIDR"):
            box.add_pod("default", "c", "10.0.0.1")
    finally:
        cluster_box.down(tmp_path / "state")
