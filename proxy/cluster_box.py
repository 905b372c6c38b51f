"""A one-node cluster in a box: a node namespace, a bridge, one namespace per pod.

Layout (defaults; every CIDR is configurable)::

    node namespace PREFIX-node          pod namespace PREFIX-NS-NAME (one per pod)
      br0 198.18.0.1/16 ── veth ──────── eth0 198.18.x.y/32, default via 198.18.0.1
      route 198.19.0.0/16 dev br0         /etc/netns/PREFIX-NS-NAME/resolv.conf
      nftables table ip mesh-proxy         (nameserver DNS_IP, cluster search path)
      no default route: nothing leaves

Pods get /32 addresses routed through the node (not a shared /16): a reply from one pod to
another then crosses the node's forward path and its conntrack, so DNATed Service traffic
is un-NATed without br_netfilter. The node's own address answers NodePorts.

Dual-stack: with an IPv6 pod range beside the IPv4 one (``pod_cidr="198.18.0.0/16,
fd00:18::/64"``) every pod also gets an IPv6 /128 (the same host number in the IPv6 range),
routed through the node's IPv6 address on the bridge; IPv6 service ranges are routed to the
bridge too, and the node proxy syncs an ``ip6`` table beside the ``ip`` one. Use ranges that
are never routed (unique local fd00::/8): nothing leaves the node namespace either way.

Use ``async with ClusterBox(...) as box`` (removes everything on exit, also on error), or
:func:`up` / :func:`down` / :func:`exec_argv` from separate commands: every namespace and
resolv.conf is recorded in ``state_dir`` before it is made, so :func:`down` cleans up after
a crash too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from mesh.cidrs import parse_cidrs
from mesh.proxy import netns
from mesh.proxy.nft_render import RenderOptions
from mesh.proxy.nft_sync import SyncPolicy
from mesh.proxy.nftables import NftablesProxy

DEFAULT_STATE_DIR = Path("/run/mesh/netns")
BRIDGE = "br0"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class BoxPod:
    namespace: str
    name: str
    ip: str
    netns: str  # the network namespace's name (for ip netns exec)
    ip6: str | None = None  # the IPv6 address, when the box is dual-stack

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, self.ip6) if self.ip6 else (self.ip,)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _slug(value: str, limit: int) -> str:
    s = re.sub(r"[^a-z0-9-]", "-", value.lower())
    if len(s) <= limit:
        return s
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{s[: limit - 9]}-{digest}"


class ClusterBox:
    def __init__(
        self,
        prefix: str | None = None,
        pod_cidr: str = "198.18.0.0/16",
        service_cidr: str = "198.19.0.0/16",
        dns_ip: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
    ) -> None:
        self.prefix = prefix or f"mesh-{secrets.token_hex(3)}"
        if len(self.prefix) > 40 or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: lower case letters, digits and '-'")
        pods = parse_cidrs(pod_cidr, "pod")
        services = parse_cidrs(service_cidr, "service")
        pod4 = pods.get(4)
        if not isinstance(pod4, ipaddress.IPv4Network):
            raise ValueError(f"pod range {pod_cidr}: the box needs an IPv4 range (IPv6 may follow)")
        self.pod_net = pod4
        self.pod_net6 = pods.get(6)
        self.service_nets = list(services.values())
        self.service_net = self.service_nets[0]  # the primary range
        self.node_ip = str(self.pod_net.network_address + 1)
        self.node_ip6 = str(self.pod_net6.network_address + 1) if self.pod_net6 else None
        # The DNS server listens on the node's IPv4 address, so kube-dns takes its ClusterIP
        # from the IPv4 service range even when IPv6 is primary.
        dns_net = next((n for n in self.service_nets if n.version == 4), self.service_net)
        self.dns_ip = dns_ip or str(dns_net.network_address + 10)
        self.domain = cluster_domain
        self.state = netns.StateFile(state_dir or DEFAULT_STATE_DIR / self.prefix)
        self.node = f"{self.prefix}-node"
        self.pods: dict[str, BoxPod] = {}
        self._next_host = 2
        self._veth_id = secrets.token_hex(2)
        self._built = False

    # --- lifecycle ---------------------------------------------------------------------

    def build(self) -> None:
        """Make the node namespace: bridge, node address, Service route, forwarding."""
        self.state.update(
            prefix=self.prefix,
            node=self.node,
            node_ip=self.node_ip,
            pod_cidr=",".join(
                map(str, (self.pod_net, self.pod_net6) if self.pod_net6 else [self.pod_net])
            ),
            service_cidr=",".join(map(str, self.service_nets)),
            dns_ip=self.dns_ip,
            pods={},
        )
        netns.create(self.node, self.state)
        netns.add_bridge(self.node, BRIDGE, self.node_ip, self.pod_net.prefixlen)
        settings = [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            (f"net.ipv4.conf.{BRIDGE}.send_redirects", "0"),
        ]
        if self.pod_net6 is not None and self.node_ip6 is not None:
            netns.add_address6(self.node, BRIDGE, self.node_ip6, self.pod_net6.prefixlen)
            settings.append(("net.ipv6.conf.all.forwarding", "1"))
        for net in self.service_nets:
            if net.version == 4 or self.pod_net6 is not None:
                netns.add_route(self.node, str(net), BRIDGE)
        for key, value in settings:
            netns.sysctl(self.node, key, value)
        self._built = True

    def teardown(self) -> list[str]:
        self._built = False
        return netns.cleanup(self.state.dir)

    async def __aenter__(self) -> ClusterBox:
        try:
            await trio.to_thread.run_sync(self.build)
        except BaseException:
            await trio.to_thread.run_sync(self.teardown)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.teardown)

    # --- pods --------------------------------------------------------------------------

    def add_pod(self, namespace: str, name: str, ip: str | None = None) -> BoxPod:
        """A pod namespace with a veth on the bridge, its IP and resolv.conf."""
        key = f"{namespace}/{name}"
        if key in self.pods:
            raise ValueError(f"pod {key} exists")
        address = ip or self._allocate()
        if ipaddress.IPv4Address(address) not in self.pod_net:
            raise ValueError(f"{address} is not in the pod CIDR {self.pod_net}")
        if any(p.ip == address for p in self.pods.values()) or address == self.node_ip:
            raise ValueError(f"{address} is taken")
        address6 = self._twin(address)
        pod_ns = f"{self.prefix}-{_slug(namespace, 20)}-{_slug(name, 40)}"
        index = len(self.pods) + 1
        veth = f"v{self._veth_id}{index:x}"[: netns.IFNAMSIZ]
        netns.create(pod_ns, self.state)
        netns.add_veth(self.node, BRIDGE, veth, pod_ns)
        netns.configure_pod(pod_ns, "eth0", address, self.node_ip)
        if address6 is not None and self.node_ip6 is not None:
            netns.configure_pod6(pod_ns, "eth0", address6, self.node_ip6)
        netns.write_resolv_conf(
            pod_ns,
            self.dns_ip,
            [f"{namespace}.svc.{self.domain}", f"svc.{self.domain}", self.domain],
        )
        pod = BoxPod(namespace, name, address, pod_ns, address6)
        self.pods[key] = pod
        data = self.state.load()
        record = {"ip": address, "netns": pod_ns}
        if address6 is not None:
            record["ip6"] = address6
        data.setdefault("pods", {})[key] = record
        self.state.save(data)
        return pod

    def remove_pod(self, namespace: str, name: str) -> None:
        """Remove a pod's namespace (its veth goes with it); idempotent."""
        pod = self.pods.pop(f"{namespace}/{name}", None)
        if pod is None:
            return
        netns.remove(pod.netns)
        data = self.state.load()
        data.get("pods", {}).pop(pod.key, None)
        self.state.save(data)

    def _twin(self, address: str) -> str | None:
        """The pod's IPv6 address: the same host number in the IPv6 range (so the pairs
        are easy to read), or None when the box is IPv4 only."""
        if self.pod_net6 is None:
            return None
        host = int(ipaddress.IPv4Address(address)) - int(self.pod_net.network_address)
        if host >= self.pod_net6.num_addresses:
            raise ValueError(f"pod range {self.pod_net6} has no twin for {address}")
        return str(self.pod_net6.network_address + host)

    def _allocate(self) -> str:
        taken = {p.ip for p in self.pods.values()}
        for _ in range(self.pod_net.num_addresses):
            candidate = self.pod_net.network_address + self._next_host
            self._next_host += 1
            if candidate >= self.pod_net.broadcast_address:
                break
            if str(candidate) not in taken:
                return str(candidate)
        raise ValueError(f"pod CIDR {self.pod_net} is full")

    def pod(self, ref: str) -> BoxPod:
        """A pod by "namespace/name" or by name alone when unique."""
        if ref in self.pods:
            return self.pods[ref]
        matches = [p for p in self.pods.values() if p.name == ref]
        if len(matches) != 1:
            raise KeyError(f"no single pod named {ref!r}")
        return matches[0]

    # --- running things ----------------------------------------------------------------

    def exec_argv(self, pod: str | BoxPod, argv: Sequence[str]) -> list[str]:
        target = pod if isinstance(pod, BoxPod) else self.pod(pod)
        return netns.exec_argv(target.netns, argv)

    def node_argv(self, argv: Sequence[str]) -> list[str]:
        return netns.exec_argv(self.node, argv)

    async def exec(self, pod: str | BoxPod, argv: Sequence[str], **kw: Any) -> Any:
        """Run ``argv`` in the pod to completion (trio.run_process, output captured)."""
        kw.setdefault("capture_stdout", True)
        kw.setdefault("capture_stderr", True)
        return await trio.run_process(self.exec_argv(pod, argv), **kw)

    def popen(self, pod: str | BoxPod, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the pod; the caller ends it by PID (teardown also does)."""
        return subprocess.Popen(self.exec_argv(pod, argv), **kw)

    def render_options(self, **kw: Any) -> RenderOptions:
        """One table's options: ``family="ip6"`` for the IPv6 one (its pod range)."""
        pod_net = self.pod_net6 if kw.get("family") == "ip6" else self.pod_net
        kw.setdefault("pod_cidr", str(pod_net) if pod_net is not None else None)
        return RenderOptions(**kw)

    @property
    def dual_stack(self) -> bool:
        return self.pod_net6 is not None

    def proxy(self, policy: SyncPolicy | None = None, **options: Any) -> NftablesProxy:
        """The node proxy in nftables mode, syncing into the node namespace: the ip table,
        and the ip6 one too when the box is dual-stack."""
        families = ("ip", "ip6") if self.dual_stack else ("ip",)
        tables = [self.render_options(family=f, **options) for f in families]
        return NftablesProxy(netns=self.node, options=tables, policy=policy)


# --- plain functions for the command line ------------------------------------------------


def up(
    prefix: str | None = None,
    pods: Sequence[tuple[str, str, str | None]] = (),
    state_dir: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> ClusterBox:
    """Build a box with ``pods`` ((namespace, name, ip or None), ...); on any error remove
    what was made and re-raise. The caller runs ``box.proxy()`` and later :func:`down`."""
    box = ClusterBox(prefix, state_dir=state_dir, **kw)
    try:
        box.build()
        for namespace, name, ip in pods:
            box.add_pod(namespace, name, ip)
    except BaseException:
        box.teardown()
        raise
    return box


def down(state_dir: str | os.PathLike[str]) -> list[str]:
    """Remove everything a box recorded in ``state_dir`` (idempotent, also after a crash)."""
    return netns.cleanup(state_dir)


def exec_argv(state_dir: str | os.PathLike[str], pod: str, argv: Sequence[str]) -> list[str]:
    """For ``mesh exec POD -- CMD`` from another process: the argv that runs CMD in POD
    ("namespace/name", or a unique name)."""
    pods: dict[str, dict[str, str]] = netns.StateFile(state_dir).load().get("pods", {})
    found = pods.get(pod) or next((v for k, v in pods.items() if k.split("/", 1)[1] == pod), None)
    if found is None:
        raise KeyError(f"no pod {pod!r} in {state_dir}")
    return netns.exec_argv(found["netns"], argv)
