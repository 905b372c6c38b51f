"""Click parameter types that validate where a flag is parsed: a bad value is a usage
error naming the flag (exit status 2), never a traceback from deep inside a component."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

import click

from mesh.addresses import parse_url
from mesh.cidrs import format_cidrs, parse_cidrs
from mesh.params import AddressType, UrlType


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
            self.fail(f"{value!r} is not a number from 0 to 1", param, ctx)
        if not 0.0 <= ratio <= 1.0:  # nan too
            self.fail(f"{value!r} is not a number from 0 to 1", param, ctx)
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


class NumberType(click.ParamType):  # type: ignore[type-arg]
    """A number within bounds: whole (counts, TTLs) or not (seconds), finite, and within the
    bounds the program can honour. Every bad value (not a number, negative, zero where that
    means nothing, huge, ``nan``, ``inf``) gets the same sentence, naming what is wanted."""

    def __init__(self, low: float, high: float, *, whole: bool, unit: str = "") -> None:
        self.low, self.high, self.whole = low, high, whole
        self.name = ("INTEGER" if whole else "NUMBER") if not unit else unit.upper()
        of = f" of {unit}" if unit else ""
        span = f"from {_number(low)} to {_number(high)}"
        self.wanted = f"{'a whole number' if whole else 'a number'}{of} {span}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: float = value  # a default
        else:
            text = str(value).strip()
            try:
                number = int(text, 10) if self.whole else float(text)
            except ValueError:
                self.fail(f"{value!r} is not {self.wanted}", param, ctx)
        if not (math.isfinite(number) and self.low <= number <= self.high):
            self.fail(f"{value!r} is not {self.wanted}", param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name


def _number(x: float) -> str:
    return f"{int(x):,}" if x == int(x) else f"{x:g}"


def whole(low: int, high: int, unit: str = "") -> NumberType:
    return NumberType(low, high, whole=True, unit=unit)


def seconds(low: float, high: float) -> NumberType:
    return NumberType(low, high, whole=False, unit="seconds")


class IpType(click.ParamType):  # type: ignore[type-arg]
    """An IPv4 or IPv6 address, in its canonical spelling."""

    name = "IP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return str(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            self.fail(f"{value!r} is not an IP address", param, ctx)


_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP address nor a host name (RFC 1123), or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(lab) for lab in labels):
        return "is not an IP address or a host name"
    if labels[-1].isdigit():  # 256.1.1.1, 99999: meant as an address, and not one
        return "is not an IP address"
    return None


class HostType(click.ParamType):  # type: ignore[type-arg]
    """An IP address or a host name."""

    name = "HOST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        problem = host_problem(text)
        if problem is not None:
            self.fail(f"{value!r} {problem}", param, ctx)
        return text


class ControlUrlType(UrlType):
    """mesh.params' URL, and its host an IP address or a host name; ``HOST`` alone (no
    scheme, no port) is refused: the flags say HOST:PORT, and port 80 is never meant."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        url = super().convert(value, param, ctx)
        if "://" not in text and ":" not in text.lstrip("["):
            self.fail(f"{text!r} has no port: write HOST:PORT or http://HOST:PORT", param, ctx)
        host = parse_url(url)[0]
        problem = host_problem(host)
        if problem is not None:
            self.fail(f"{text!r}: {host!r} {problem}", param, ctx)
        return url


_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class NamespaceType(click.ParamType):  # type: ignore[type-arg]
    """A namespace name (an RFC 1123 label, as the API server requires)."""

    name = "NAMESPACE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not _NAMESPACE.fullmatch(text):
            self.fail(
                f"{text!r} is not a namespace name: 1 to 63 lower-case letters, digits and "
                "'-', starting and ending with a letter or digit",
                param,
                ctx,
            )
        return text


IP = IpType()
HOST = HostType()
CONTROL_URL = ControlUrlType()
NAMESPACE = NamespaceType()


class ListenType(AddressType):
    """mesh.params' ``HOST:PORT``, with the one mistake its parser words wrongly: an IPv6
    address in brackets and no port (``[::1]``) is told its port is missing."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip() if not isinstance(value, tuple) else ""
        if text.startswith("[") and text.endswith("]"):
            self.fail(f"{text!r} has no port: write HOST:PORT, as [::1]:53", param, ctx)
        return super().convert(value, param, ctx)


class ServerType(ListenType):
    """``HOST:PORT`` of a server to ask (an upstream): port 0 picks nothing there."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        host, port = super().convert(value, param, ctx)
        if port == 0:
            self.fail(f"{value!r}: port 0 is not a server's port", param, ctx)
        return host, port


ADDRESS = ListenType()
SERVER = ServerType()
