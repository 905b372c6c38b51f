"""Local routes that make IPv6 ClusterIPs bindable for the userspace proxy.

All of 127.0.0.0/8 is local on Linux, so IPv4 loopback ClusterIPs need no setup; IPv6 has
only ::1. A ``local RANGE dev lo`` route in the local table (what ``ip -6 route add local
RANGE dev lo`` makes) turns a whole IPv6 service range local: packets to any ClusterIP in it
are delivered on this host. Unlike IPv4, IPv6 ``bind`` still wants an address assigned to an
interface, so listeners on those addresses set IP_FREEBIND (see :meth:`LocalRoutes.routes`).
Adding the route needs CAP_NET_ADMIN: as root the proxy adds the
route at start and removes it at exit; without the privilege it says so once, and the IPv6
ClusterIPs are answered in DNS but not proxied.

Whose route is it? Routing daemons mark their routes with a protocol number of their own
(``proto bird``, ``proto zebra``); so does the proxy (:data:`RTPROT_MESH`). A route already
there with our mark was left by a run that could not clean up (SIGKILL): the next start adopts
it and removes it at exit. A route with any other mark belongs to someone else and is left
alone. Removal names our mark too, so the kernel never deletes another owner's route.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("mesh.proxy")

LOCAL_TABLE = 255  # the kernel's "local" routing table
RTN_LOCAL = 2
# Our routes' protocol number (rtm_protocol): not one of iproute2's rt_protos, shown by
# ``ip route`` as "proto 109".
RTPROT_MESH = 109
IP_FREEBIND = 15  # <linux/in.h>; the socket module names it only from Python 3.12


class LocalRoutes:
    """The IPv6 ranges to make local; ``install`` then ``remove`` (idempotent)."""

    def __init__(self, ranges: Iterable[str], *, privileged: bool | None = None) -> None:
        nets = [ipaddress.ip_network(r, strict=False) for r in ranges]
        self.ranges = [n for n in nets if n.version == 6]
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.added: list[str] = []  # ranges this process routed (and removes)
        self.routed: list[ipaddress.IPv6Network | ipaddress.IPv4Network] = []  # usable ranges

    def install(self) -> None:
        if not self.ranges:
            return
        if not self.privileged:
            log.warning(
                "IPv6 ClusterIPs are answered in DNS but not proxied: making the IPv6 service "
                "range local needs root (ip -6 route add local RANGE dev lo)",
                extra={"ranges": [str(r) for r in self.ranges]},
            )
            return
        adopted: list[str] = []
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for net in self.ranges:
                try:
                    ipr.route("add", **_route(net, lo))
                    self.added.append(str(net))
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        log.warning(
                            "cannot make an IPv6 service range local; its ClusterIPs are "
                            "answered in DNS but not proxied",
                            extra={"range": str(net), "error": os.strerror(exc.code)},
                        )
                        continue
                    if _marked_ours(ipr, net):
                        adopted.append(str(net))
                self.routed.append(net)
        self.added += adopted
        if adopted:
            log.info(
                "adopted the local routes a previous run left (removed at exit)",
                extra={"ranges": adopted},
            )
        if len(self.added) > len(adopted):
            made = [r for r in self.added if r not in adopted]
            log.info("IPv6 service ranges made local", extra={"ranges": made})

    def remove(self) -> None:
        if not self.added:
            return
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for text in self.added:
                try:
                    ipr.route("del", **_route(ipaddress.ip_network(text), lo))
                except NetlinkError as exc:
                    if exc.code != errno.ESRCH:
                        log.warning("cannot remove a local route", extra={"range": text})
        self.added = []
        self.routed = []

    def routes(self, ip: str) -> bool:
        """Whether ``ip`` is in a range this host made local (bind it with IP_FREEBIND)."""
        if ":" not in ip:
            return False
        addr = ipaddress.ip_address(ip)
        return any(addr in n for n in self.routed)

    def unroutable(self, ip: str) -> bool:
        """Whether ``ip`` is in a configured IPv6 range that could not be made local."""
        if ":" not in ip:
            return False
        addr = ipaddress.ip_address(ip)
        return any(addr in n for n in self.ranges) and not any(addr in n for n in self.routed)


def _route(net: ipaddress.IPv4Network | ipaddress.IPv6Network, lo: int) -> dict[str, object]:
    return {
        "dst": str(net),
        "family": socket.AF_INET6,
        "oif": lo,
        "table": LOCAL_TABLE,
        "type": RTN_LOCAL,
        "proto": RTPROT_MESH,  # ours (see the module comment); del matches it too
    }


def _marked_ours(ipr: IPRoute, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether the local route for exactly ``net`` carries our protocol number. (A dump of
    the local table, which holds only local addresses and ranges: a ``get`` would answer
    the route a single address takes, not the one for the range.)"""
    for msg in ipr.route("dump", family=socket.AF_INET6, table=LOCAL_TABLE):
        if msg["dst_len"] == net.prefixlen and msg.get_attr("RTA_DST") == str(net.network_address):
            return bool(msg["proto"] == RTPROT_MESH)
    return False
