"""The nftables proxy on a host with IPv6 off: the ip6 table is left out (said once) instead of
failing every sync; in a test namespace with net.ipv6.conf.all.disable_ipv6 = 1 the standalone
proxy syncs only its ip table and becomes ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.proxy import netns
from mesh.proxy.nftables import read_sysctl, table_families
from tests.polling import wait_for
from tests.scratch_netns import run_in, scratch_namespace
from tests.test_cli_e2e import Proc

ABSENT = "the kernel has no IPv6 (booted with ipv6.disable=1 or built without it)"
DISABLED = "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)"


@pytest.mark.parametrize(
    ("value", "families", "reason"),
    [
        (None, ("ip",), ABSENT),  # no /proc/sys/net/ipv6 at all
        ("1\n", ("ip",), DISABLED),
        ("0\n", ("ip", "ip6"), None),
    ],
)
def test_families_follow_the_host(
    value: str | None, families: tuple[str, ...], reason: str | None
) -> None:
    read = {"ipv6/conf/all/disable_ipv6": value}.get
    assert table_families(read) == (families, reason)


def test_read_sysctl_says_absent_as_none(tmp_path: Path) -> None:
    (tmp_path / "ipv6/conf/all").mkdir(parents=True)
    (tmp_path / "ipv6/conf/all/disable_ipv6").write_text("1\n")
    assert read_sysctl("ipv6/conf/all/disable_ipv6", tmp_path) == "1\n"
    assert read_sysctl("ipv6/conf/lo/disable_ipv6", tmp_path) is None


CONFIG = """
version: 1
services:
  - namespace: shop
    name: web
    cluster_ips: [127.10.0.5, "fd00:10::5"]
    ports: [{name: http, port: 80}]
    endpoints:
      - {address: 127.0.0.1, ports: {http: 18080}}
      - {address: "::1", ports: {http: 18080}}
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    with scratch_namespace("ip", "nft", "curl", "sysctl") as name:
        yield name


def test_standalone_nftables_proxy_without_ipv6(namespace: str, tmp_path: Path) -> None:
    run_in(namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    assert run_in(namespace, "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6") == "1"
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG)
    args = ["proxy", "--mode", "nftables", "--config", str(config), "--log-format", "text"]
    with (tmp_path / "stderr").open("w") as log:
        proxy = Proc(
            [*args, "--admin-listen", "127.0.0.1:0"],
            {"admin"},
            log,
            netns.exec_argv(namespace, []),
        )
        try:
            ready = ["curl", "-s", f"{proxy.url('admin')}/ready"]
            wait_for(lambda: run_in(namespace, *ready) == "ready", timeout=15.0)
            assert run_in(namespace, "nft", "list", "tables") == "table ip mesh-proxy"
        finally:
            proxy.stop()
    err = (tmp_path / "stderr").read_text()
    said = [line for line in err.splitlines() if "IPv6" in line]
    assert len(said) == 1, err
    assert "only the ip table is synced" in said[0] and "disable_ipv6 = 1" in said[0]
    assert "Traceback" not in err
