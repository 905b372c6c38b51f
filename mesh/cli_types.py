"""Click parameter types that validate where a flag is parsed: a bad value is a usage
error naming the flag (exit status 2), never a traceback from deep inside a component."""

from __future__ import annotations

from typing import Any

import click

from mesh.cidrs import format_cidrs, parse_cidrs


class CidrsType(click.ParamType):  # type: ignore[type-arg]
    """One range, or two of different families ("V4,V6" in either order); converts to the
    canonical spelling (primary first), which every consumer parses again cheaply."""

    name = "CIDR[,CIDR]"

    def __init__(self, what: str, need_ipv4: bool = False) -> None:
        self.what = what
        self.need_ipv4 = need_ipv4

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            ranges = parse_cidrs(str(value), self.what)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.need_ipv4 and 4 not in ranges:
            self.fail(f"{value}: an IPv4 {self.what} range is required (IPv6 may follow)")
        return format_cidrs(ranges)


SERVICE_CIDRS = CidrsType("service")
# The box's node and DNS server live on IPv4; pods get an IPv6 address beside it.
POD_CIDRS = CidrsType("pod", need_ipv4=True)


class RatioType(click.ParamType):  # type: ignore[type-arg]
    """A share between 0 and 1."""

    name = "RATIO"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0.0 <= ratio <= 1.0:
            self.fail(f"{value!r} is not between 0 and 1", param, ctx)
        return ratio


class GatewayCidrType(click.ParamType):  # type: ignore[type-arg]
    """The one range Gateway addresses are allocated from (IPv4 or IPv6)."""

    name = "CIDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import ipaddress

        try:
            net = ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as exc:
            self.fail(f"{value!r} is not a network range: {exc}", param, ctx)
        if net.num_addresses < 4:
            self.fail(f"{value!r} is too small for Gateway addresses", param, ctx)
        return str(net)


RATIO = RatioType()
GATEWAY_CIDR = GatewayCidrType()
