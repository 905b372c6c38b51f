"""Name helpers: the owner names the Kubernetes DNS specification defines.

Every name here is absolute, lower case and ends with a dot ("web.shop.svc.cluster.local."),
which is also the form the zone index is keyed on.
"""

from __future__ import annotations

import ipaddress
import re

REVERSE_SUFFIXES = ("in-addr.arpa.", "ip6.arpa.")
REVERSE_WIRE_SUFFIXES = (b"\x07in-addr\x04arpa\x00", b"\x03ip6\x04arpa\x00")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# A dotted quad in canonical form: taken as it is, without an ipaddress round trip (the
# zone index of 10,000 Services handles tens of thousands of them per full build).
CANONICAL_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def absolute(name: str) -> str:
    """``name`` lower-cased with exactly one trailing dot."""
    return name.strip(".").lower() + "."


def join(*labels: str) -> str:
    return absolute(".".join(label.strip(".") for label in labels if label))


def in_zone(name: str, zone: str) -> bool:
    """Whether absolute ``name`` is ``zone`` or below it (both lower case)."""
    return name == zone or name.endswith("." + zone)


def from_wire(wire: bytes) -> str:
    """``\\x03web\\x04shop\\x00`` -> ``web.shop.``: a name of plain ASCII labels."""
    labels = []
    i = 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return b".".join(labels).decode("ascii") + "."


def is_reverse(name: str) -> bool:
    return name.endswith(REVERSE_SUFFIXES)


def reverse_name(ip: str) -> str:
    """``10.0.0.1`` -> ``1.0.0.10.in-addr.arpa.``; IPv6 as 32 reversed nibbles."""
    if CANONICAL_V4.fullmatch(ip):
        a, b, c, d = ip.split(".")
        return f"{d}.{c}.{b}.{a}.in-addr.arpa."
    return ipaddress.ip_address(ip).reverse_pointer + "."


def endpoint_label(ip: str) -> str:
    """The label of an endpoint with no hostname: its address with dashes, as CoreDNS does
    (``10-0-0-1``, ``fd00--1``; a trailing dash gets a ``0`` so the label stays valid)."""
    label = ip.replace(".", "-") if "." in ip and ":" not in ip else ip.replace(":", "-")
    return label + "0" if label.endswith("-") else label.lower()


def pod_label_ip(label: str) -> str | None:
    """The address a pod label names (``10-0-0-1`` or ``fd00--1``), canonical, or None."""
    if label.count("-") == 3 and "--" not in label:
        text = label.replace("-", ".")
    else:
        text = label.replace("-", ":")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def ip_version(ip: str) -> int:
    if CANONICAL_V4.fullmatch(ip):
        return 4
    return ipaddress.ip_address(ip).version
