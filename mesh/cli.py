"""The ``mesh`` command: one subcommand per component, plus inspection commands.

Each serving subcommand builds its components, starts them in one trio nursery, prints every
address it listens on, and runs until interrupted. Imports of the components happen inside
the subcommands so ``mesh --help`` and ``mesh get`` stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from mesh import log as meshlog
from mesh.addresses import Address, parse_address
from mesh.cli_types import POD_CIDRS, SERVICE_CIDRS

DEFAULT_CONTROL = "127.0.0.1:15010"
DEFAULT_DNS = "127.0.0.1:10053"
DEFAULT_ADMIN = "127.0.0.1:15000"
DEFAULT_ADMIN_DNS = "127.0.0.1:15053"
DEFAULT_ADMIN_PROXY = "127.0.0.1:15080"
DEFAULT_SERVICE_CIDR = "127.10.0.0/16"
DEFAULT_NETNS_SERVICE_CIDR = "198.19.0.0/16"
DEFAULT_POD_CIDR = "198.18.0.0/16"
STATE_ROOT = Path("/run/mesh/netns")

log = logging.getLogger("mesh.cli")


class AddressType(click.ParamType):  # type: ignore[type-arg]
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = AddressType()


def _log_options(f: Any) -> Any:
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


def _manifest_options(f: Any) -> Any:
    f = click.option("--control-listen", default=DEFAULT_CONTROL, show_default=True, type=ADDRESS)(
        f
    )
    return click.option(
        "-f",
        "--filename",
        "manifest_dir",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Directory of YAML/JSON manifests: the cluster.",
    )(f)


def _dns_options(f: Any) -> Any:
    f = click.option(
        "--zone", default="cluster.local", show_default=True, help="Cluster DNS zone."
    )(f)
    f = click.option(
        "--ttl",
        default=5,
        show_default=True,
        type=click.IntRange(0, 3600),
        help="TTL of cluster records.",
    )(f)
    f = click.option(
        "--pod-mode",
        default="insecure",
        show_default=True,
        type=click.Choice(["disabled", "insecure", "verified"]),
        help="Pod A records (a-b-c-d.NS.pod.ZONE), as CoreDNS's 'pods' option.",
    )(f)
    return f


def _upstream_option(f: Any) -> Any:
    f = click.option(
        "--no-forward",
        is_flag=True,
        help="Answer REFUSED for names outside the cluster instead of forwarding them.",
    )(f)
    return click.option(
        "--upstream",
        "upstreams",
        multiple=True,
        type=ADDRESS,
        help="Upstream DNS server for non-cluster names (repeatable); default: /etc/resolv.conf.",
    )(f)


def _upstreams(upstreams: Sequence[Address], no_forward: bool) -> list[Address] | None:
    """None lets the DNS server read /etc/resolv.conf; an empty list forwards nothing."""
    if no_forward:
        if upstreams:
            raise click.UsageError("--no-forward and --upstream exclude each other")
        return []
    return list(upstreams) or None


def _box_option(f: Any) -> Any:
    return click.option(
        "--box",
        default="mesh",
        show_default=True,
        help="Name of the cluster in a box (--netns): prefixes its namespaces; what it makes "
        "is recorded under /run/mesh/netns/NAME so mesh down can remove it after a crash.",
    )(f)


def _setup_logs(level: str, fmt: str) -> None:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    meshlog.setup(level, json_format=fmt == "json")


def _announce(what: str, address: Address) -> None:
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    click.echo(f"{what:<10} {shown}", err=False)
    sys.stdout.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mesh")
def main() -> None:
    """A service mesh and networking data plane: cluster DNS, node proxy and their control plane."""


# --- serving commands ----------------------------------------------------------------------


@main.command()
@_manifest_options
@click.option("--dns-listen", default=DEFAULT_DNS, show_default=True, type=ADDRESS)
@click.option("--admin-listen", default=DEFAULT_ADMIN, show_default=True, type=ADDRESS)
@click.option(
    "--service-cidr",
    default=None,
    type=SERVICE_CIDRS,
    help="Range(s) ClusterIPs are allocated from: one, or an IPv4 and an IPv6 range "
    f"comma-separated for dual-stack (the first is primary) [default: {DEFAULT_SERVICE_CIDR}; "
    f"with --netns {DEFAULT_NETNS_SERVICE_CIDR}].",
)
@click.option(
    "--node-name",
    default="node-1",
    show_default=True,
    help="This node's name (for traffic policy Local).",
)
@click.option(
    "--proxy/--no-proxy",
    "with_proxy",
    default=True,
    show_default=True,
    help="Run the node proxy (userspace mode; nftables mode with --netns).",
)
@click.option(
    "--netns",
    is_flag=True,
    help="The cluster in a box (root): a network namespace per pod, DNS on the node, "
    "the node proxy in nftables mode.",
)
@click.option(
    "--pod-cidr",
    default=DEFAULT_POD_CIDR,
    show_default=True,
    type=POD_CIDRS,
    help="Pod addresses (--netns): one range, or an IPv4 and an IPv6 range comma-separated "
    "(pods then get an address of each family).",
)
@_box_option
@_dns_options
@_upstream_option
@_log_options
def up(
    manifest_dir: Path,
    control_listen: Address,
    dns_listen: Address,
    admin_listen: Address,
    service_cidr: str | None,
    node_name: str,
    with_proxy: bool,
    netns: bool,
    pod_cidr: str,
    box: str,
    zone: str,
    ttl: int,
    pod_mode: str,
    upstreams: Sequence[Address],
    no_forward: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the control plane and every component in one process (the embedded default)."""
    from mesh.run import PlaneOptions, run_up, run_up_netns

    _setup_logs(log_level, log_format)
    if netns:
        if os.geteuid() != 0:
            raise click.UsageError("--netns needs root (it creates network namespaces)")
        run_up_netns(
            options=PlaneOptions(
                manifest_dir,
                service_cidr or DEFAULT_NETNS_SERVICE_CIDR,
                node_name,
                zone,
                ttl,
                pod_mode,
            ),
            control_listen=control_listen,
            admin_listen=admin_listen,
            pod_cidr=pod_cidr,
            box=box,
            state_dir=STATE_ROOT / box,
            upstreams=_upstreams(upstreams, no_forward),
            announce=_announce,
        )
        return
    run_up(
        options=PlaneOptions(
            manifest_dir, service_cidr or DEFAULT_SERVICE_CIDR, node_name, zone, ttl, pod_mode
        ),
        control_listen=control_listen,
        dns_listen=dns_listen,
        admin_listen=admin_listen,
        with_proxy=with_proxy,
        upstreams=_upstreams(upstreams, no_forward),
        announce=_announce,
    )


@main.command()
@_manifest_options
@click.option("--admin-listen", default=DEFAULT_ADMIN, show_default=True, type=ADDRESS)
@click.option(
    "--service-cidr",
    default=DEFAULT_SERVICE_CIDR,
    show_default=True,
    type=SERVICE_CIDRS,
    help="Range(s) ClusterIPs are allocated from: one, or an IPv4 and an IPv6 range "
    "comma-separated for dual-stack (the first is primary).",
)
@click.option("--node-name", default="node-1", show_default=True)
@_dns_options
@_log_options
def control(
    manifest_dir: Path,
    control_listen: Address,
    admin_listen: Address,
    service_cidr: str,
    node_name: str,
    zone: str,
    ttl: int,
    pod_mode: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run the control plane alone, serving the config stream to components."""
    from mesh.run import PlaneOptions, run_control

    _setup_logs(log_level, log_format)
    run_control(
        options=PlaneOptions(manifest_dir, service_cidr, node_name, zone, ttl, pod_mode),
        control_listen=control_listen,
        admin_listen=admin_listen,
        announce=_announce,
    )


def _source_options(f: Any) -> Any:
    f = click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Run from this config file (JSON or YAML), re-read when it changes.",
    )(f)
    f = click.option(
        "--control", "control_url", help="Control plane URL, e.g. http://127.0.0.1:15010."
    )(f)
    return f


def _check_source(control_url: str | None, config_file: Path | None) -> None:
    if (control_url is None) == (config_file is None):
        raise click.UsageError("give exactly one of --control URL and --config FILE")


@main.command()
@_source_options
@click.option("--dns-listen", default=DEFAULT_DNS, show_default=True, type=ADDRESS)
@click.option("--admin-listen", default=DEFAULT_ADMIN_DNS, show_default=True, type=ADDRESS)
@click.option(
    "--zone",
    default="cluster.local",
    show_default=True,
    help="Cluster zone (answered SERVFAIL until the first config).",
)
@_upstream_option
@_log_options
def dns(
    control_url: str | None,
    config_file: Path | None,
    dns_listen: Address,
    admin_listen: Address,
    zone: str,
    upstreams: Sequence[Address],
    no_forward: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the cluster DNS server alone."""
    from mesh.run import run_component

    _check_source(control_url, config_file)
    _setup_logs(log_level, log_format)
    from mesh.dns.server import DnsServer

    server = DnsServer(dns_listen, _upstreams(upstreams, no_forward), zone=zone)
    run_component(server, control_url, config_file, admin_listen, _announce, ("dns", dns_listen))


@main.command()
@_source_options
@click.option(
    "--mode", default="userspace", show_default=True, type=click.Choice(["userspace", "nftables"])
)
@click.option(
    "--node-ip",
    default="127.0.0.1",
    show_default=True,
    help="Address NodePorts are served on (userspace mode).",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="nftables mode: remove the ruleset a previous run left and exit. (The ruleset "
    "outlives the process on purpose, as kube-proxy's does, so a restart drops no traffic.)",
)
@click.option(
    "--udp-idle-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds before an idle UDP session is closed (userspace mode).",
)
@click.option("--admin-listen", default=DEFAULT_ADMIN_PROXY, show_default=True, type=ADDRESS)
@_log_options
def proxy(
    control_url: str | None,
    config_file: Path | None,
    mode: str,
    node_ip: str,
    cleanup: bool,
    udp_idle_timeout: float,
    admin_listen: Address,
    log_level: str,
    log_format: str,
) -> None:
    """Run the node proxy alone, in userspace (no privilege) or nftables (root) mode."""
    from mesh.run import make_proxy, run_component

    if cleanup:
        if mode != "nftables":
            raise click.UsageError("--cleanup applies to --mode nftables")
        from mesh.proxy.nft_render import RenderOptions
        from mesh.proxy.nft_sync import NftError, SubprocessNftRunner

        table = RenderOptions().table
        for family in ("ip", "ip6"):  # one table per address family, as kube-proxy
            try:
                SubprocessNftRunner().delete_table(table, family)
            except (NftError, OSError) as exc:
                raise click.ClickException(f"cannot remove the ruleset: {exc}") from None
            click.echo(f"removed table {family} {table}")
        return
    _check_source(control_url, config_file)
    _setup_logs(log_level, log_format)
    component = make_proxy(mode, node_ip=node_ip, udp_idle_timeout=udp_idle_timeout)
    run_component(component, control_url, config_file, admin_listen, _announce, None)


# --- the cluster in a box ------------------------------------------------------------------


@main.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@_box_option
def exec_(pod: str, argv: tuple[str, ...], box: str) -> None:
    """Run a command inside a pod of the cluster in a box: mesh exec shop/web-1 -- dig web."""
    from mesh.proxy.cluster_box import exec_argv

    try:
        full = exec_argv(STATE_ROOT / box, pod, list(argv))
    except KeyError:
        raise click.ClickException(
            f"no pod {pod!r} in a running box (is mesh up --netns running?)"
        ) from None
    os.execvp(full[0], full)


@main.command()
@_box_option
def down(box: str) -> None:
    """Remove every namespace, link and ruleset a cluster in a box made (also after a crash)."""
    from mesh.proxy.cluster_box import down as remove_box

    removed = remove_box(STATE_ROOT / box)
    click.echo(f"removed {len(removed)} namespaces" if removed else "nothing to remove")


# --- inspection commands -------------------------------------------------------------------


@main.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None, help="Namespace (default: all for lists).")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option("-o", "--output", default="table", type=click.Choice(["table", "json", "yaml"]))
@click.option("--control", "control_url", default=f"http://{DEFAULT_CONTROL}", show_default=True)
def get(
    kind: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str,
    control_url: str,
) -> None:
    """Show what the control plane holds: mesh get svc -n shop, mesh get pods -A -o yaml."""
    from mesh.inspect import fetch_objects
    from mesh.printing import resolve_kind, table

    try:
        resolved = resolve_kind(kind)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ns = None if all_namespaces else namespace
    try:
        items = fetch_objects(control_url, resolved, ns)
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the control plane at {control_url}: {exc}"
        ) from None
    if name is not None:
        items = [o for o in items if o.get("metadata", {}).get("name") == name]
        if not items:
            raise click.ClickException(f'{resolved} "{name}" not found')
    if output == "json":
        click.echo(json.dumps(items[0] if name else {"kind": "List", "items": items}, indent=2))
    elif output == "yaml":
        import yaml

        click.echo(
            yaml.safe_dump(
                items[0] if name else {"kind": "List", "items": items}, sort_keys=False
            ).rstrip()
        )
    elif not items:
        click.echo("No resources found.")
    else:
        click.echo(table(resolved, items, all_namespaces=ns is None))


@main.group()
def config() -> None:
    """What a running component holds."""


@config.command("dump")
@click.argument("component")
@click.option(
    "--admin",
    "admin_url",
    default=f"http://{DEFAULT_ADMIN}",
    show_default=True,
    help="Admin address of the process running the component.",
)
def config_dump(component: str, admin_url: str) -> None:
    """Print the live config of COMPONENT (dns, proxy) as JSON, as its admin /config serves it."""
    from mesh.inspect import fetch_json

    try:
        data = fetch_json(f"{admin_url.rstrip('/')}/config/{component}")
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the admin endpoint at {admin_url}: {exc}"
        ) from None
    except LookupError:
        raise click.ClickException(f"no component {component!r} runs behind {admin_url}") from None
    click.echo(json.dumps(data, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
