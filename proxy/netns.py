"""Network namespace plumbing with pyroute2, and a record of it for cleanup after a crash.

Every object this module makes lives inside a network namespace it created (links,
addresses, routes, sysctls, nftables), so deleting the namespaces removes all of it; the
only things outside are the namespace mounts themselves (/run/netns/NAME) and per-namespace
resolv.conf files (/etc/netns/NAME/). :class:`StateFile` records each of those *before* it
is made, so :func:`cleanup` can remove everything after a crash. Names carry a caller's
prefix; cleanup only touches names that were recorded or that start with that prefix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from mesh.netns import inside

log = logging.getLogger(__name__)

ETC_NETNS = Path("/etc/netns")
IFNAMSIZ = 15


class StateFile:
    """A JSON record of what was made: {"prefix", "netns": [...], "etc": [...], ...}."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "state.json"

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def save(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)  # atomic: a crash leaves the old or the new record

    def update(self, **fields: Any) -> None:
        data = self.load()
        data.update(fields)
        self.save(data)

    def add(self, key: str, value: str) -> None:
        data = self.load()
        items = data.setdefault(key, [])
        if value not in items:
            items.append(value)
        self.save(data)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside namespace ``name`` (with its resolv.conf)."""
    return ["ip", "netns", "exec", name, *argv]


@contextlib.contextmanager
def _netlink(name: str) -> Iterator[IPRoute]:
    """A netlink socket of namespace ``name``, opened by switching this thread in and out.

    Not pyroute2's ``NetNS``: that forks a Python child to open the socket, and a fork of a
    process with threads can hang forever in the child on a lock another thread held (seen
    while signals kept arriving during shutdown). setns + socket + setns back forks nothing.
    """
    with inside(name):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def create(name: str, state: StateFile | None = None) -> None:
    if state is not None:
        state.add("netns", name)
    if name not in netns.listnetns():
        # ip(8) execs; pyroute2's netns.create forks a Python child (see _netlink).
        _run(["ip", "netns", "add", name])
    with _netlink(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def remove(name: str) -> None:
    """Delete the namespace (its links, routes and nftables go with it); idempotent."""
    kill_processes(name)
    with contextlib.suppress(FileNotFoundError):
        if name in netns.listnetns():
            netns.remove(name)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def kill_processes(name: str, grace: float = 1.0) -> None:
    """End the processes running inside our namespace ``name`` (they are ours)."""
    try:
        pids = [int(p) for p in _run(["ip", "netns", "pids", name]).split()]
    except (subprocess.CalledProcessError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _exists(p)]
            time.sleep(0.02)
        if not alive:
            return
        pids = alive


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie still answers kill(0); check its state
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _run(argv: Sequence[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout


def sysctl(name: str, key: str, value: str) -> None:
    _run(exec_argv(name, ["sysctl", "-qw", f"{key}={value}"]))


def add_bridge(name: str, ifname: str, address: str, prefixlen: int) -> None:
    with _netlink(name) as ns:
        # No multicast snooping: IPv6 neighbour discovery is multicast, and a snooping bridge
        # may drop a solicitation sent before the pod's group membership report was seen.
        ns.link("add", ifname=ifname, kind="bridge", br_mcast_snooping=0)
        idx = ns.link_lookup(ifname=ifname)[0]
        ns.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ns.link("set", index=idx, state="up")


def add_veth(node: str, bridge: str, node_if: str, pod: str, pod_if: str = "eth0") -> None:
    """A veth pair made inside ``node``, its peer moved into ``pod``, node end on the bridge."""
    if len(node_if) > IFNAMSIZ:
        raise ValueError(f"interface name {node_if!r} is longer than {IFNAMSIZ} characters")
    with _netlink(node) as ns:
        ns.link("add", ifname=node_if, kind="veth", peer={"ifname": pod_if, "net_ns_fd": pod})
        idx = ns.link_lookup(ifname=node_if)[0]
        master = ns.link_lookup(ifname=bridge)[0]
        ns.link("set", index=idx, master=master, state="up")
        # Hairpin: with br_netfilter loaded, a pod reaching itself through a Service is
        # DNATed at the bridge and must leave by the port it came in on.
    _run(
        exec_argv(
            node, ["ip", "link", "set", "dev", node_if, "type", "bridge_slave", "hairpin", "on"]
        )
    )


def configure_pod(pod: str, pod_if: str, address: str, gateway: str) -> None:
    """A /32 address and routes through the gateway: every packet, also to another pod,
    goes through the node, so its conntrack sees (and un-DNATs) both directions."""
    with _netlink(pod) as ns:
        idx = ns.link_lookup(ifname=pod_if)[0]
        ns.addr("add", index=idx, address=address, prefixlen=32)
        ns.link("set", index=idx, state="up")
        ns.route("add", dst=f"{gateway}/32", oif=idx, scope=253)  # scope link
        ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)


def configure_pod6(pod: str, pod_if: str, address: str, gateway: str) -> None:
    """The IPv6 twin of :func:`configure_pod`: a /128 and routes through the node. ``nodad``
    (no duplicate address detection): the box hands out each address once, and DAD would
    leave it unusable ("tentative") for the first second of the pod's life."""
    _batch6(
        pod,
        [
            f"addr add {address}/128 dev {pod_if} nodad",
            f"route add {gateway}/128 dev {pod_if}",
            f"route add default via {gateway} dev {pod_if}",
        ],
    )


def add_address6(name: str, device: str, address: str, prefixlen: int) -> None:
    _batch6(name, [f"addr add {address}/{prefixlen} dev {device} nodad"])


def _batch6(name: str, commands: Sequence[str]) -> None:
    """Several ``ip -6`` commands in one process (one fork per pod, not three)."""
    argv = exec_argv(name, ["ip", "-6", "-batch", "-"])
    script = "\n".join(commands) + "\n"
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"ip -6 in {name}: {proc.stderr.strip() or proc.returncode}")


def add_route(name: str, dst: str, device: str) -> None:
    with _netlink(name) as ns:
        ns.route("add", dst=dst, oif=ns.link_lookup(ifname=device)[0])


def write_resolv_conf(
    name: str, nameserver: str, search: Sequence[str], options: Sequence[str] = ("ndots:5",)
) -> Path:
    """/etc/netns/NAME/resolv.conf: ``ip netns exec`` bind-mounts it over /etc/resolv.conf."""
    path = ETC_NETNS / name / "resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"nameserver {nameserver}", f"search {' '.join(search)}"]
    if options:
        lines.append(f"options {' '.join(options)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def owned(prefix: str) -> Iterator[str]:
    """Namespaces whose name starts with ``prefix`` (ours by naming rule)."""
    return (n for n in netns.listnetns() if n.startswith(prefix))


def cleanup(state_dir: str | os.PathLike[str]) -> list[str]:
    """Remove every namespace recorded in ``state_dir`` (and any left with its prefix),
    their resolv.conf directories and the record itself. Idempotent; works after a crash."""
    state = StateFile(state_dir)
    data = state.load()
    names = list(data.get("netns", []))
    prefix = data.get("prefix")
    if prefix:
        names += [n for n in owned(prefix) if n not in names]
    removed = []
    for name in reversed(names):  # pods first, the node last
        try:
            remove(name)
            removed.append(name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot remove namespace", extra={"netns": name, "error": str(exc)})
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    with contextlib.suppress(OSError):  # the box's own directory, when nothing else is in it
        state.path.parent.rmdir()
    return removed
