"""Options and helpers shared by the ``mesh`` commands (mesh/cli.py, mesh/components.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from mesh import log as meshlog
from mesh.addresses import Address, format_address
from mesh.cli_types import ADDRESS, CONTROL_URL, RATIO, SERVER, seconds, whole
from mesh.params import BOX

DEFAULT_CONTROL = "127.0.0.1:15010"
DEFAULT_DNS = "127.0.0.1:10053"
DEFAULT_ADMIN = "127.0.0.1:15000"
DEFAULT_ADMIN_DNS = "127.0.0.1:15053"
DEFAULT_ADMIN_PROXY = "127.0.0.1:15080"
DEFAULT_ADMIN_INGRESS = "127.0.0.1:15081"
DEFAULT_GATEWAY = "127.0.0.1:8080"
DEFAULT_GATEWAY_TLS = "127.0.0.1:8443"
DEFAULT_GATEWAY_CIDR = "127.11.0.0/16"
DEFAULT_SERVICE_CIDR = "127.10.0.0/16"
DEFAULT_NETNS_SERVICE_CIDR = "198.19.0.0/16"
DEFAULT_POD_CIDR = "198.18.0.0/16"
STATE_ROOT = Path("/run/mesh/netns")


def log_options(f: Any) -> Any:
    f = click.option(
        "--log-level",
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
    )(f)
    f = click.option(
        "--log-format",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "json", "text"]),
        help="auto: text on a terminal, JSON lines otherwise.",
    )(f)
    return f


def _store_forward(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """The forwarding settings travel in the context, not through every command's signature."""
    ctx.meta.setdefault("mesh.dns.forward", {})[param.name] = value


def forward_options() -> dict[str, Any]:
    """The DnsServer keyword arguments of the forwarding flags of the running command."""
    return dict(click.get_current_context().meta.get("mesh.dns.forward", {}))


def upstream_options(f: Any) -> Any:
    """--upstream and --no-forward, and how forwarding behaves (CoreDNS forward and cache)."""
    for name, default, kind, text in reversed(_FORWARD_FLAGS):
        f = click.option(
            name,
            name.lstrip("-").replace("-", "_"),
            default=default,
            type=kind,
            help=text,
            expose_value=False,
            callback=_store_forward,
            show_default=True,
        )(f)
    f = click.option(
        "--no-forward",
        is_flag=True,
        help="Answer REFUSED for names outside the cluster instead of forwarding them.",
    )(f)
    return click.option(
        "--upstream",
        "upstreams",
        multiple=True,
        type=SERVER,
        help="Upstream DNS server for non-cluster names (repeatable); default: /etc/resolv.conf.",
    )(f)


_FORWARD_FLAGS: list[tuple[str, Any, Any, str]] = [
    (
        "--upstream-policy",
        "random",
        click.Choice(["random", "round_robin", "sequential"]),
        "Which upstream is asked first.",
    ),
    (
        "--max-fails",
        2,
        whole(0, 1000),
        "Consecutive failures that mark an upstream down; 0: never.",
    ),
    (
        "--health-check",
        0.5,
        seconds(0, 3600),
        "Seconds between probes of an upstream marked down; 0: never probe.",
    ),
    (
        "--max-forwards",
        1024,
        whole(1, 1_000_000),
        "Queries waiting for upstreams at once; beyond it: SERVFAIL.",
    ),
    (
        "--forward-cache-size",
        10_000,
        whole(0, 10_000_000),
        "Upstream answers kept (least recently used evicted first); 0: no cache.",
    ),
    (
        "--serve-stale",
        0.0,
        seconds(0, 86400),
        "Seconds an expired upstream answer may still be served when every upstream fails "
        "(RFC 8767); 0: never.",
    ),
]


def upstreams_of(upstreams: Sequence[Address], no_forward: bool) -> list[Address] | None:
    """None lets the DNS server read /etc/resolv.conf; an empty list forwards nothing."""
    if no_forward:
        if upstreams:
            raise click.UsageError("--no-forward and --upstream exclude each other")
        return []
    return list(upstreams) or None


def _store_gateway(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """The gateway's proxy-header settings travel in the context, as the forwarding ones."""
    ctx.meta.setdefault("mesh.gateway.limits", {})[param.name] = value


def gateway_limits() -> Any:
    """The engine ``Limits`` the gateway flags of the running command describe."""
    from mesh.http.server import Limits

    given = click.get_current_context().meta.get("mesh.gateway.limits", {})
    return Limits(
        trust_downstream=given.get("trust_downstream", "drop") == "trust",
        forwarded=bool(given.get("forwarded", False)),
    )


def gateway_options(f: Any) -> Any:
    """The ingress gateway's flags, shared by ``mesh ingress`` and ``mesh up``."""
    for option in reversed(
        [
            click.option(
                "--gateway-listen",
                default=DEFAULT_GATEWAY,
                show_default=True,
                type=ADDRESS,
                help="Where the gateway serves Ingress over plain HTTP.",
            ),
            click.option(
                "--gateway-tls-listen",
                default=DEFAULT_GATEWAY_TLS,
                show_default=True,
                type=ADDRESS,
                help="Where the gateway serves Ingress over TLS (certificates by SNI).",
            ),
            click.option(
                "--client-forwarded-headers",
                "trust_downstream",
                default="drop",
                show_default=True,
                type=click.Choice(["drop", "trust"]),
                expose_value=False,
                callback=_store_gateway,
                help="What the gateway does with X-Forwarded-* and Forwarded sent by a client. "
                "drop (the edge): they are removed, X-Forwarded-For is the peer's address; "
                "trust (behind a proxy you run): they are kept and the peer's address is "
                "appended to X-Forwarded-For (ingress-nginx use-forwarded-headers with "
                "compute-full-forwarded-for).",
            ),
            click.option(
                "--forwarded-header/--no-forwarded-header",
                "forwarded",
                default=False,
                show_default=True,
                expose_value=False,
                callback=_store_gateway,
                help="Also send the upstream an RFC 7239 Forwarded field (for, proto, host).",
            ),
            click.option(
                "--access-log",
                type=click.Path(dir_okay=False, writable=True, allow_dash=True),
                help="Write the gateway's JSON access log (one line a request) to this file; "
                "'-' for stdout. Default: no access log.",
            ),
            click.option(
                "--otlp-endpoint",
                type=CONTROL_URL,
                help="Export request spans over OTLP/HTTP to this collector "
                "(http://HOST:PORT; /v1/traces is appended). Default: tracing off.",
            ),
            click.option(
                "--trace-sample-ratio",
                default=1.0,
                show_default=True,
                type=RATIO,
                help="Share of new traces sampled (incoming sampling decisions are kept).",
            ),
        ]
    ):
        f = option(f)
    return f


def box_option(f: Any) -> Any:
    return click.option(
        "--box",
        default="mesh",
        show_default=True,
        type=BOX,
        help="Name of the cluster in a box (--netns): prefixes its namespaces; what it makes "
        "is recorded under /run/mesh/netns/NAME so mesh down can remove it after a crash.",
    )(f)


def source_options(f: Any) -> Any:
    f = click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Run from this config file (JSON or YAML, the format mesh config dump prints), "
        "re-read when it changes.",
    )(f)
    f = click.option(
        "--control",
        "control_url",
        type=CONTROL_URL,
        help="Control plane address, http://HOST:PORT or HOST:PORT.",
    )(f)
    return f


def check_source(control_url: str | None, config_file: Path | None) -> None:
    if (control_url is None) == (config_file is None):
        raise click.UsageError("give exactly one of --control URL and --config FILE")


def setup_logs(level: str, fmt: str) -> None:
    color = sys.stderr.isatty()
    if fmt == "auto":
        fmt = "text" if color else "json"
    meshlog.setup(level, json_format=fmt == "json", color=color)


def announce(what: str, address: Address) -> None:
    click.echo(f"{what:<11} {format_address(address)}", err=False)
    sys.stdout.flush()
