"""The ``mesh`` command: one subcommand per component, plus inspection commands.

Each serving subcommand builds its components, starts them in one trio nursery, prints every
address it listens on, and runs until interrupted. Imports of the components happen inside
the subcommands so ``mesh --help`` and ``mesh get`` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from mesh.addresses import Address
from mesh.cli_types import (
    ADDRESS,
    CONTROL_URL,
    GATEWAY_CIDR,
    HOST,
    POD_CIDRS,
    SERVICE_CIDRS,
    whole,
)
from mesh.cliopts import (
    DEFAULT_ADMIN,
    DEFAULT_CONTROL,
    DEFAULT_DNS,
    DEFAULT_GATEWAY_CIDR,
    DEFAULT_NETNS_SERVICE_CIDR,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    STATE_ROOT,
    announce,
    box_option,
    forward_options,
    gateway_limits,
    gateway_options,
    log_options,
    setup_logs,
    upstream_options,
    upstreams_of,
)
from mesh.getcmd import control_plane_error, get
from mesh.params import DNS_NAME
from mesh.registry import registrations


def _manifest_options(f: Any) -> Any:
    f = click.option("--control-listen", default=DEFAULT_CONTROL, show_default=True, type=ADDRESS)(
        f
    )
    return click.option(
        "-f",
        "--filename",
        "manifest_dir",
        required=True,
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Manifests, the cluster: a YAML/JSON file, or a directory of them (read "
        "recursively); repeatable, as kubectl's -f. Edits are applied as they are saved.",
    )(f)


def _gateway_cidr_option(f: Any) -> Any:
    return click.option(
        "--gateway-cidr",
        default=DEFAULT_GATEWAY_CIDR,
        show_default=True,
        type=GATEWAY_CIDR,
        help="Range a Gateway's address is allocated from when its spec.addresses is empty.",
    )(f)


def _dns_options(f: Any) -> Any:
    f = click.option(
        "--zone",
        default="cluster.local",
        show_default=True,
        type=DNS_NAME,
        help="Cluster DNS zone.",
    )(f)
    f = click.option(
        "--ttl",
        default=5,
        show_default=True,
        type=whole(0, 3600, "seconds"),
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


class _Commands(click.Group):
    """The built-in commands plus one per registered component (mesh/registry.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return sorted({*own, *(r.name for r in registrations() if r.command is not None)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for reg in registrations():
            if reg.name == cmd_name:
                return reg.command
        return None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mesh")
def main() -> None:
    """A service mesh and networking data plane: cluster DNS, node proxy, ingress gateway and
    their control plane."""


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
    type=DNS_NAME,
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
    "the node proxy in nftables mode, the ingress gateway on the node's address (at the "
    "ports of --gateway-listen and --gateway-tls-listen), reachable from the pods.",
)
@click.option(
    "--pod-cidr",
    default=DEFAULT_POD_CIDR,
    show_default=True,
    type=POD_CIDRS,
    help="Pod addresses (--netns): one range, or an IPv4 and an IPv6 range comma-separated "
    "(pods then get an address of each family).",
)
@click.option(
    "--gateway/--no-gateway",
    "with_gateway",
    default=True,
    show_default=True,
    help="Run the ingress gateway (Ingress and Gateway API).",
)
@gateway_options
@_gateway_cidr_option
@box_option
@_dns_options
@upstream_options
@click.option("--autopath", is_flag=True, help="Server-side search paths (see mesh dns --help).")
@log_options
def up(
    manifest_dir: tuple[Path, ...],
    control_listen: Address,
    dns_listen: Address,
    admin_listen: Address,
    service_cidr: str | None,
    node_name: str,
    with_proxy: bool,
    netns: bool,
    pod_cidr: str,
    with_gateway: bool,
    gateway_listen: Address,
    gateway_tls_listen: Address,
    access_log: str | None,
    otlp_endpoint: str | None,
    trace_sample_ratio: float,
    gateway_cidr: str,
    box: str,
    zone: str,
    ttl: int,
    pod_mode: str,
    upstreams: Sequence[Address],
    no_forward: bool,
    autopath: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the control plane and every component in one process (the embedded default)."""
    from mesh.control import early

    early.start(manifest_dir)  # the second core parses while the rest is imported and built
    from mesh.run import PlaneOptions, run_up, run_up_netns

    setup_logs(log_level, log_format)
    if netns:
        if os.geteuid() != 0:
            raise click.UsageError("--netns needs root (it creates network namespaces)")
        gateway_factory = None
        if with_gateway:
            from mesh.components import make_gateway

            gateway_factory = functools.partial(
                make_gateway,
                access_log=access_log,
                otlp_endpoint=otlp_endpoint,
                trace_sample_ratio=trace_sample_ratio,
                limits=gateway_limits(),
            )
        run_up_netns(
            options=PlaneOptions(
                manifest_dir,
                service_cidr or DEFAULT_NETNS_SERVICE_CIDR,
                node_name,
                zone,
                ttl,
                pod_mode,
                gateway_cidr,
            ),
            gateway=gateway_factory,
            gateway_ports=(gateway_listen[1], gateway_tls_listen[1]),
            control_listen=control_listen,
            admin_listen=admin_listen,
            pod_cidr=pod_cidr,
            box=box,
            state_dir=STATE_ROOT / box,
            upstreams=upstreams_of(upstreams, no_forward),
            dns_options={**forward_options(), "autopath": autopath},
            announce=announce,
        )
        return
    gateway = None
    if with_gateway:
        from mesh.components import make_gateway

        gateway = make_gateway(
            gateway_listen,
            gateway_tls_listen,
            access_log,
            otlp_endpoint,
            trace_sample_ratio,
            limits=gateway_limits(),
        )
    run_up(
        options=PlaneOptions(
            manifest_dir,
            service_cidr or DEFAULT_SERVICE_CIDR,
            node_name,
            zone,
            ttl,
            pod_mode,
            gateway_cidr,
            (gateway_listen[0],),
        ),
        gateway=gateway,
        control_listen=control_listen,
        dns_listen=dns_listen,
        admin_listen=admin_listen,
        with_proxy=with_proxy,
        upstreams=upstreams_of(upstreams, no_forward),
        dns_options={**forward_options(), "autopath": autopath},
        announce=announce,
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
@click.option("--node-name", default="node-1", show_default=True, type=DNS_NAME)
@_gateway_cidr_option
@click.option(
    "--gateway-address",
    default="127.0.0.1",
    show_default=True,
    type=HOST,
    help="The address Ingresses are served on (written to their status.loadBalancer).",
)
@_dns_options
@log_options
def control(
    manifest_dir: tuple[Path, ...],
    control_listen: Address,
    admin_listen: Address,
    service_cidr: str,
    node_name: str,
    gateway_cidr: str,
    gateway_address: str,
    zone: str,
    ttl: int,
    pod_mode: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run the control plane alone, serving the config stream to components."""
    from mesh.control import early

    early.start(manifest_dir)  # the second core parses while the rest is imported and built
    from mesh.run import PlaneOptions, run_control

    setup_logs(log_level, log_format)
    run_control(
        options=PlaneOptions(
            manifest_dir,
            service_cidr,
            node_name,
            zone,
            ttl,
            pod_mode,
            gateway_cidr,
            (gateway_address,),
        ),
        control_listen=control_listen,
        admin_listen=admin_listen,
        announce=announce,
    )


# --- the cluster in a box ------------------------------------------------------------------


@main.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@box_option
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
@box_option
def down(box: str) -> None:
    """Remove every namespace, link and ruleset a cluster in a box made (also after a crash)."""
    from mesh.proxy.cluster_box import down as remove_box

    removed = remove_box(STATE_ROOT / box)
    click.echo(f"removed {len(removed)} namespaces" if removed else "nothing to remove")


# --- inspection commands -------------------------------------------------------------------


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
    type=CONTROL_URL,
    help="Admin address of the process running the component (http://HOST:PORT or HOST:PORT).",
)
@click.option(
    "--state",
    is_flag=True,
    help="Print the component's live state instead of only its config: its whole admin view "
    "(derived state, listeners, sync results); for a component that keeps none beside its "
    "config (dns), the config with its readiness and its counters from /metrics.",
)
@click.option(
    "--show-secrets",
    is_flag=True,
    help="Fill in the private keys (redacted by default: the admin port never serves them) "
    "from the Secrets the control plane holds, so the dump runs with --config as it is.",
)
@click.option(
    "--control",
    "control_url",
    default=f"http://{DEFAULT_CONTROL}",
    show_default=True,
    type=CONTROL_URL,
    help="Control plane to read the Secrets from (with --show-secrets).",
)
def config_dump(
    component: str, admin_url: str, state: bool, show_secrets: bool, control_url: str
) -> None:
    """Print the live config of COMPONENT (dns, proxy, ingress) as JSON: the format mesh
    COMPONENT --config reads, so mesh config dump dns > dns.json; mesh dns --config dns.json
    runs a copy. Private keys are printed as <redacted> unless --show-secrets."""
    from mesh.inspect import SecretMismatch, WrongServer, fetch_json, fill_secrets

    try:
        data = fetch_json(f"{admin_url.rstrip('/')}/config/{component}")
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the admin endpoint at {admin_url}: {exc}"
        ) from None
    except LookupError:
        raise click.ClickException(f"no component {component!r} runs behind {admin_url}") from None
    except WrongServer:
        raise click.ClickException(f"{admin_url} is not a mesh admin endpoint") from None
    # A component's view is its config, or its config under "config" beside derived state
    # (mesh/component.py).
    bare = not (isinstance(data, dict) and "config" in data and "version" not in data)
    if not state:
        if not bare:
            data = data["config"]
        if data is None:
            raise click.ClickException(f"{component} has no config yet")
    elif bare:
        from mesh.dumpstate import live_state

        data = live_state(admin_url, component, data)
    if show_secrets:
        config_part = data.get("config") if state and isinstance(data, dict) else data
        try:
            fill_secrets(config_part, control_url)
        except SecretMismatch as exc:
            raise click.ClickException(str(exc)) from None
        except (WrongServer, OSError) as exc:
            raise control_plane_error(control_url, exc) from None
    click.echo(json.dumps(data, indent=2))


main.add_command(get)


if __name__ == "__main__":  # pragma: no cover
    main()
