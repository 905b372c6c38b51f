"""Local routes that make IPv6 ClusterIPs bindable for the userspace proxy.

All of 127.0.0.0/8 is local on Linux, so IPv4 loopback ClusterIPs need no setup; IPv6 has
only ::1. A ``local RANGE dev lo`` route in the local table (what ``ip -6 route add local
RANGE dev lo`` makes) turns a whole IPv6 service range local: packets to any ClusterIP in it
are delivered on this host. Unlike IPv4, IPv6 ``bind`` still wants an address assigned to an
interface, so listeners on those addresses set IP_FREEBIND (see :meth:`LocalRoutes.routes`).
Adding the route needs CAP_NET_ADMIN: as root the proxy adds the
route at start and removes it at exit (only the routes it added: one that was already there
belongs to someone else); without the privilege it says so once, and the IPv6 ClusterIPs are
answered in DNS but not proxied.
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
                self.routed.append(net)
        if self.added:
            log.info("IPv6 service ranges made local", extra={"ranges": self.added})

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
    }
