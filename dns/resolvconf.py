"""Upstream servers from resolv.conf, without the ones that are this server itself."""

from __future__ import annotations

import ipaddress

DNS_PORT = 53
UNSPECIFIED = frozenset(("", "0.0.0.0", "::"))


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order, invalid ones skipped."""
    out: list[str] = []
    for line in text.splitlines()[:1000]:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return out


def upstreams(text: str, listen: tuple[str, int]) -> list[tuple[str, int]]:
    """Upstreams from resolv.conf ``text`` for a server listening on ``listen``: a loopback
    nameserver that is this server's own address and port would forward to itself."""
    host, port = listen
    out: list[tuple[str, int]] = []
    for ip in nameservers(text):
        loopback = ipaddress.ip_address(ip).is_loopback
        if port == DNS_PORT and loopback and (host in UNSPECIFIED or _same(host, ip)):
            continue
        out.append((ip, DNS_PORT))
    return out


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
