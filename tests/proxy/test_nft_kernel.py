"""The nftables mode on a real kernel: the packet-flow table through a cluster in a box.

One dual-stack box (node namespace, bridge, pod namespaces with an IPv4 and an IPv6 address)
per module; each case replaces the table with its config, starts who-servers in the endpoint
pods and asks from the client pods. Service addresses move from the loopback ones of the
shared table to the box's CIDRs: IPv4 through the ``ip`` table, and the same table again
with IPv6 addresses through the ``ip6`` table.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import cluster_box
from mesh.proxy.cluster_box import ClusterBox
from mesh.proxy.conntrack import ConntrackCleaner
from mesh.proxy.nft_runner import SubprocessNftRunner
from mesh.proxy.nft_script import transaction
from mesh.proxy.nft_sync import Syncer
from tests.conftest import require_root, require_tool
from tests.proxy import flows
from tests.proxy.netns_tools import REJECT, ask, nft, start_who, stop, unique_prefix

ADDRESSES = {
    flows.VIP: "198.19.0.1",
    flows.EXTERNAL_IP: "198.19.1.1",
    flows.LB_IP: "198.19.2.1",
    flows.CLIENT_A: "198.18.0.11",
    flows.CLIENT_B: "198.18.0.12",
}


def _box_address(ip: str) -> str:
    if ip in ADDRESSES:
        return ADDRESSES[ip]
    a, b, c, d = ip.split(".")
    assert a == "127" and b == "0", ip
    return f"198.18.{c}.{d}"


POD_NET6 = ipaddress.IPv6Network("fd00:18::/64")
SERVICE_NET6 = ipaddress.IPv6Network("fd00:19::/112")
ADDRESSES6 = {
    flows.VIP: "fd00:19::1",
    flows.EXTERNAL_IP: "fd00:19::1:1",
    flows.LB_IP: "fd00:19::2:1",
}


def _twin(ip4: str) -> str:
    """A pod's IPv6 address in the box: the same host number in the IPv6 pod range."""
    host = int(ipaddress.IPv4Address(ip4)) - int(ipaddress.IPv4Address("198.18.0.0"))
    return str(POD_NET6.network_address + host)


def _remap(case: flows.FlowCase) -> flows.FlowCase:
    ips = {c for c, _ in case.flows} | {ip for ip, _ in case.endpoints()}
    return flows.remap(case, {**ADDRESSES, **{ip: _box_address(ip) for ip in ips}})


def _remap6(case: flows.FlowCase) -> flows.FlowCase:
    ips = {c for c, _ in case.flows} | {ip for ip, _ in case.endpoints()}
    return flows.remap(case, {**ADDRESSES6, **{ip: _twin(_box_address(ip)) for ip in ips}})


CASES = [_remap(c) for c in flows.CASES]
CASES6 = [_remap6(c) for c in flows.CASES]
POD_IPS = sorted(
    {ip for c in CASES for ip, _ in c.endpoints()} | {c for case in CASES for c, _ in case.flows}
)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterBox]:
    require_root()
    require_tool("nft", "ip", "conntrack")
    state = tmp_path_factory.mktemp("box") / "state"
    b = cluster_box.up(
        unique_prefix(),
        state_dir=state,
        pod_cidr=f"198.18.0.0/16,{POD_NET6}",
        service_cidr=f"198.19.0.0/16,{SERVICE_NET6}",
    )
    try:
        for ip in POD_IPS:
            b.add_pod("default", "pod-" + ip.replace(".", "-"), ip)
        yield b
    finally:
        cluster_box.down(state)


V4_OF = {_twin(ip): ip for ip in POD_IPS}  # a pod's IPv6 address -> its IPv4 one


def _pod(ip: str) -> str:
    """The pod holding ``ip`` (either family), named after its IPv4 address."""
    return "default/pod-" + V4_OF.get(ip, ip).replace(".", "-")


def _syncer(
    box: ClusterBox, dispatch: str, pod_cidr: str | None = None, family: str = "ip"
) -> Syncer:
    opts = box.render_options(pod_cidr=pod_cidr, dispatch=dispatch, family=family)
    return Syncer(SubprocessNftRunner(box.node), opts, ConntrackCleaner(box.node))


FLOWS = [("ip", c) for c in CASES] + [("ip6", c) for c in CASES6]


@pytest.mark.parametrize("dispatch", ["inline", "shared"])
@pytest.mark.parametrize(("family", "case"), FLOWS, ids=[f"{f} {c.name}" for f, c in FLOWS])
def test_flow_table(box: ClusterBox, family: str, case: flows.FlowCase, dispatch: str) -> None:
    # Clients stand outside the cluster here (no pod CIDR for the local-traffic detector),
    # so traffic policy Local applies to them as the shared table expects.
    result = _syncer(box, dispatch, family=family).sync(case.config)
    assert result.ok, result.error
    by_ip: dict[str, list[int]] = {}
    for ip, port in sorted(case.endpoints()):
        by_ip.setdefault(ip, []).append(port)
    servers = [start_who(box, _pod(ip), ip, ports) for ip, ports in by_ip.items()]
    try:
        node = (box.node_ip6 if family == "ip6" else box.node_ip) or "node address missing"
        dest = node if case.dest == flows.NODE else case.dest
        got = tuple(ask(box, _pod(c), dest, case.port, case.protocol) for c, _ in case.flows)
    finally:
        stop(servers)
    assert got == case.expected


def _web(*eps: str, protocol: str = "TCP", vip: str = "198.19.0.1") -> ProxyConfig:
    svc = ProxyService(
        namespace="default",
        name="web",
        cluster_ips=(vip,),
        ports=(ProxyPort(port=80, protocol=protocol),),
        endpoints=tuple(ProxyEndpoint(address=a, ports={"": 8080}) for a in eps),
    )
    return ProxyConfig(version=1, services=(svc,))


@pytest.mark.parametrize("affinity", [False, True])
@pytest.mark.parametrize("dispatch", ["inline", "shared"])
@pytest.mark.parametrize("pod_cidr", [True, False])
def test_hairpin_is_masqueraded(
    box: ClusterBox, dispatch: str, affinity: bool, pod_cidr: bool
) -> None:
    """A pod reaching itself through its Service: the reply must come back via the node.

    Without the masquerade the pod would answer itself directly, from its own address
    instead of the Service's, and the connection would fail."""
    me, other = "198.18.1.1", "198.18.1.2"
    cfg = _web(me, other)
    svc = cfg.services[0].model_copy(update={"session_affinity": affinity})
    cidr = str(box.pod_net) if pod_cidr else None
    assert _syncer(box, dispatch, cidr).sync(cfg.model_copy(update={"services": (svc,)})).ok
    servers = [start_who(box, _pod(ip), ip, [8080]) for ip in (me, other)]
    try:
        # Round robin starts at the lower address: the first flow is the hairpin one.
        assert ask(box, _pod(me), "198.19.0.1", 80, "TCP") == f"{me}:8080"
    finally:
        stop(servers)


def test_updates_keep_affinity_and_reject_after_endpoints_go(box: ClusterBox) -> None:
    syncer = _syncer(box, "inline")
    cfg = _web("198.18.1.1", "198.18.1.2")
    sticky = cfg.model_copy(
        update={"services": (cfg.services[0].model_copy(update={"session_affinity": True}),)}
    )
    assert syncer.sync(sticky).ok
    servers = [start_who(box, _pod(ip), ip, [8080]) for ip in ("198.18.1.1", "198.18.1.2")]
    try:
        client = _pod("198.18.0.11")
        first = ask(box, client, "198.19.0.1", 80, "TCP")
        assert syncer.sync(sticky.model_copy(update={"version": 2})).ok  # an update sync
        assert ask(box, client, "198.19.0.1", 80, "TCP") == first  # affinity survived
        assert syncer.sync(_web()).ok
        assert ask(box, client, "198.19.0.1", 80, "TCP") == REJECT
    finally:
        stop(servers)


def _udp_flows_to_vip(box: ClusterBox, vip: str) -> str:
    """The node's conntrack entries of UDP flows to vip:80."""
    family = ["-f", "ipv6"] if ":" in vip else []
    argv = ["conntrack", "-L", *family, "-p", "udp", "--orig-dst", vip, "--orig-port-dst", "80"]
    out = subprocess.run(box.node_argv(argv), capture_output=True, text=True, timeout=10)
    return out.stdout


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_stale_udp_conntrack_entries_are_removed(box: ClusterBox, family: str) -> None:
    syncer = _syncer(box, "inline", family=family)
    a, b, vip = "198.18.1.1", "198.18.1.2", "198.19.0.1"
    if family == "ip6":
        a, b, vip = _twin(a), _twin(b), ADDRESSES6[flows.VIP]
    assert syncer.sync(_web(a, b, protocol="UDP", vip=vip)).ok
    servers = [start_who(box, _pod(ip), ip, [8080]) for ip in (a, b)]
    try:
        client = _pod("198.18.0.11")
        for _ in range(2):
            ask(box, client, vip, 80, "UDP")
        listing = _udp_flows_to_vip(box, vip)
        assert f"src={a}" in listing and f"src={b}" in listing
        result = syncer.sync(_web(b, protocol="UDP", vip=vip))
        assert result.ok and len(result.stale) == 1
        listing = _udp_flows_to_vip(box, vip)
        assert f"src={a}" not in listing and f"src={b}" in listing
    finally:
        stop(servers)


def _listing(box: ClusterBox) -> dict[str, Any]:
    """The table as nft -j lists it, without handles and with set elements sorted."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = subprocess.run(
        box.node_argv(["nft", "-j", "list", "table", "ip", "mesh-proxy"]),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rules: dict[str, list[Any]] = {}
    objects = []
    for item in strip(json.loads(out)["nftables"]):
        if "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
            continue
        for kind in ("set", "map"):
            if kind in item and "elem" in item[kind]:
                item[kind]["elem"] = sorted(item[kind]["elem"], key=json.dumps)
        objects.append(json.dumps(item, sort_keys=True))
    return {"objects": sorted(objects), "rules": rules}


@pytest.mark.parametrize("dispatch", ["inline", "shared"])
def test_incremental_syncs_match_a_full_one(box: ClusterBox, dispatch: str) -> None:
    """After each incremental sync, and the next one that deletes the slots it retired, the
    kernel holds exactly what replacing the table with the same ruleset gives."""
    syncer = _syncer(box, dispatch, str(box.pod_net))
    assert syncer.sync(CASES[0].config, full=True).ok
    steps = [c.config for c in CASES[1:]] + [_web("198.18.1.1"), CASES[2].config, _web()]
    full_at = syncer.last_full
    for step, config in enumerate(steps):
        result = syncer.sync(config)
        assert result.ok, (step, result.error)
        assert syncer.sync(config).ok  # deletes the retired slots
        assert not syncer.lingering
        assert syncer.last_full == full_at and syncer.applied is not None  # incremental
        incremental = _listing(box)
        SubprocessNftRunner(box.node).apply(transaction(syncer.applied, None))
        assert _listing(box) == incremental, step


def test_only_our_tables(box: ClusterBox, tmp_path: Path) -> None:
    out = nft(box, "list", "tables")
    assert set(out.splitlines()) <= {"table ip mesh-proxy", "table ip6 mesh-proxy"}
