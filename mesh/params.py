"""Click parameter types: every flag value is checked where it is parsed.

A bad value ends the command before anything starts, with click's usage error (exit status 2)
naming the flag, e.g. ``Invalid value for '--box': ...``. Each type returns the value in the
form the rest of the program uses, so nothing downstream parses flags again.
"""

from __future__ import annotations

import re
from typing import Any

import click

from mesh.addresses import parse_address, parse_url

# The box name prefixes every network namespace of the box ("NAME-node", "NAME-NS-POD") and
# names its state directory, so it must be a path component and a netns name the kernel and
# iproute2 accept: lower-case letters, digits and '-', short enough that the derived names
# stay far below NAME_MAX. proxy/cluster_box.py enforces the same rule.
BOX_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class AddressType(click.ParamType):  # type: ignore[type-arg]
    """``HOST:PORT`` -> (host, port); IPv6 in brackets, port 0 picks a free one."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class UrlType(click.ParamType):  # type: ignore[type-arg]
    """An ``http://HOST:PORT[/prefix]`` URL, or ``HOST:PORT`` as every other address flag
    takes it; returned as a full ``http://`` URL without a trailing slash."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        try:
            host, port, prefix = parse_url(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{prefix}"


class BoxNameType(click.ParamType):  # type: ignore[type-arg]
    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not BOX_NAME.fullmatch(text):
            self.fail(
                f"{text!r}: use 1 to 40 lower-case letters, digits and '-', starting with a "
                "letter or digit (it prefixes network namespace names)",
                param,
                ctx,
            )
        return text


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _dns_name_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS name of RFC 1123 labels, or None."""
    if not name:
        return "is empty"
    if len(name) > 253:
        return "is longer than 253 characters"
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            return (
                f"has the label {label!r}: labels are 1 to 63 lower-case letters, digits "
                "and '-', starting and ending with a letter or digit"
            )
    return None


class DnsNameType(click.ParamType):  # type: ignore[type-arg]
    """A DNS name such as a cluster zone (``cluster.local``) or a node name; a trailing dot is
    dropped and upper case folded, as DNS compares names."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        name = text.lower().removesuffix(".")
        problem = _dns_name_problem(name)
        if problem is not None:
            self.fail(f"{text!r} {problem}", param, ctx)
        return name


ADDRESS = AddressType()
URL = UrlType()
BOX = BoxNameType()
DNS_NAME = DnsNameType()
