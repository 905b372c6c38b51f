"""Address ranges as kube-apiserver's ``--service-cluster-ip-range`` spells them.

One range, or two of different IP families separated by a comma, in either order; the
first is the cluster's primary family (the one a SingleStack Service gets by default).
Pure: used by the command line (click type in mesh/cli_types.py), the allocator and the
cluster in a box.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The fewest addresses a range may hold: its network address is never handed out, and
# the box also takes one for the node, so anything smaller leaves nothing to allocate.
MIN_ADDRESSES = 4


def parse_cidrs(value: str | Iterable[str], what: str = "service") -> dict[int, IPNetwork]:
    """Ranges by IP version (4, 6), in the order given (the first is primary).

    ``value`` is "A" or "A,B" (or an iterable of ranges). Raises ValueError with one
    sentence naming the offending part."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [i.strip() for i in items]
    if not items or items == [""]:
        raise ValueError(f"at least one {what} range is required")
    if len(items) > 2:
        raise ValueError(f"at most two {what} ranges (one IPv4, one IPv6), got {len(items)}")
    out: dict[int, IPNetwork] = {}
    for text in items:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR range such as 10.96.0.0/16") from None
        if net.version in out:
            raise ValueError(
                f"two IPv{net.version} {what} ranges ({out[net.version]}, {net}): "
                "a second range must be of the other family"
            )
        if net.num_addresses < MIN_ADDRESSES:
            raise ValueError(
                f"{what} range {net} is too small (at least {MIN_ADDRESSES} addresses)"
            )
        out[net.version] = net
    return out


def format_cidrs(ranges: dict[int, IPNetwork]) -> str:
    """The canonical flag spelling: "A" or "A,B", primary first."""
    return ",".join(str(net) for net in ranges.values())


def family_name(version: int) -> str:
    return f"IPv{version}"
