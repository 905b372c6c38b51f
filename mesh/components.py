"""The built-in data-plane components, one registration each (see mesh/registry.py).

Each registration carries the component's config kind, translator, title and the command that
runs it alone (``mesh dns``, ``mesh proxy``, ``mesh ingress``). Heavy imports (servers, translators) happen
inside the functions so ``mesh --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from mesh.addresses import Address, format_address
from mesh.cli_types import ADDRESS, IP, SERVICE_CIDRS, seconds, whole
from mesh.cliopts import (
    DEFAULT_ADMIN_DNS,
    DEFAULT_ADMIN_INGRESS,
    DEFAULT_ADMIN_PROXY,
    DEFAULT_DNS,
    announce,
    check_source,
    forward_options,
    gateway_limits,
    gateway_options,
    log_options,
    setup_logs,
    source_options,
    upstream_options,
    upstreams_of,
)
from mesh.config.dns import DnsConfig
from mesh.config.gateway import ServedGatewayConfig
from mesh.config.proxy import ProxyConfig
from mesh.params import DNS_NAME
from mesh.registry import PlaneSettings, Registration, StatusWriter, Translator, register

# --- dns ---------------------------------------------------------------------------------


def _dns_translator(settings: PlaneSettings) -> Translator:
    # An instance, not a function: it keeps each Service's record between snapshots and
    # updates from store events (control/translate/memo.py).
    from mesh.control.translate.dns import DnsTranslator

    return DnsTranslator(
        zone=settings.zone,
        ttl=settings.ttl,
        pod_mode=settings.pod_mode,  # type: ignore[arg-type]
    )


@click.command("dns")
@source_options
@click.option("--dns-listen", default=DEFAULT_DNS, show_default=True, type=ADDRESS)
@click.option("--admin-listen", default=DEFAULT_ADMIN_DNS, show_default=True, type=ADDRESS)
@click.option(
    "--zone",
    default="cluster.local",
    show_default=True,
    type=DNS_NAME,
    help="Cluster zone (answered SERVFAIL until the first config).",
)
@upstream_options
@click.option(
    "--workers",
    type=whole(1, 256),
    help="Server processes sharing the port (SO_REUSEPORT), each with its own caches "
    "[default: one per core].",
)
@click.option(
    "--autopath",
    is_flag=True,
    help="Walk a known pod's search path server-side when its first step does not exist, "
    "and answer with a CNAME (as CoreDNS's autopath): one query instead of up to four.",
)
@click.option("--reuse-port", is_flag=True, hidden=True)  # set by the supervisor on its workers
@click.option("--worker-index", type=int, default=0, hidden=True)  # the same
@click.option("--metrics-dir", type=click.Path(path_type=Path), hidden=True)  # the same
@log_options
def dns_command(
    control_url: str | None,
    config_file: Path | None,
    dns_listen: Address,
    admin_listen: Address,
    zone: str,
    upstreams: Sequence[Address],
    no_forward: bool,
    workers: int | None,
    autopath: bool,
    reuse_port: bool,
    worker_index: int,
    metrics_dir: Path | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the cluster DNS server alone."""
    from mesh.dns.server import DnsServer
    from mesh.run import run_component

    check_source(control_url, config_file)
    resolved = upstreams_of(upstreams, no_forward)
    if workers is None:
        from mesh.dns.workers import default_workers

        workers = 1 if reuse_port else default_workers()
    if workers > 1:
        from mesh.config.dns import DnsConfig
        from mesh.dns.workers import supervise
        from mesh.run import StartupError, check_config_file

        if config_file is not None:  # said once here, not once by each worker
            try:
                check_config_file(config_file, DnsConfig)
            except StartupError as exc:
                sys.exit(f"mesh: {exc}")

        def worker_args(listen: Address, admin: Address) -> list[str]:
            args = ["--workers", "1", "--reuse-port", "--zone", zone]
            args += [
                "--dns-listen",
                format_address(listen),
                "--admin-listen",
                format_address(admin),
            ]
            args += ["--log-level", log_level, "--log-format", log_format]
            if control_url is not None:
                args += ["--control", control_url]
            if config_file is not None:
                args += ["--config", str(config_file)]
            if no_forward:
                args.append("--no-forward")
            if autopath:
                args.append("--autopath")
            for upstream in upstreams:
                args += ["--upstream", format_address(upstream)]
            for name, value in forward_options().items():
                args += [f"--{name.replace('_', '-')}", str(value)]
            return args

        sys.exit(supervise(workers, dns_listen, admin_listen, worker_args, announce))
    setup_logs(log_level, log_format)
    server = DnsServer(
        dns_listen,
        resolved,
        zone=zone,
        reuse_port=reuse_port,
        autopath=autopath,
        worker=worker_index,
        metrics_dir=metrics_dir,
        **forward_options(),
    )
    run_component(server, control_url, config_file, admin_listen, announce, ("dns", dns_listen))


register(Registration("dns", "DNS server", DnsConfig, _dns_translator, dns_command))


# --- proxy -------------------------------------------------------------------------------


def _proxy_translator(settings: PlaneSettings) -> Translator:
    from mesh.control.translate.proxy import ProxyTranslator

    return ProxyTranslator(node_name=settings.node_name)


@click.command("proxy")
@source_options
@click.option(
    "--mode", default="userspace", show_default=True, type=click.Choice(["userspace", "nftables"])
)
@click.option(
    "--node-ip",
    default="127.0.0.1",
    show_default=True,
    type=IP,
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
    type=seconds(0.1, 86400),
    help="Seconds before an idle UDP session is closed (userspace mode).",
)
@click.option(
    "--service-cidr",
    default=None,
    type=SERVICE_CIDRS,
    help="The cluster's service range(s), as given to the control plane (userspace mode: an "
    "IPv6 range is made local with 'local RANGE dev lo' while the proxy runs, as root, so its "
    "ClusterIPs can be proxied).",
)
@click.option("--admin-listen", default=DEFAULT_ADMIN_PROXY, show_default=True, type=ADDRESS)
@log_options
def proxy_command(
    control_url: str | None,
    config_file: Path | None,
    mode: str,
    node_ip: str,
    cleanup: bool,
    udp_idle_timeout: float,
    service_cidr: str | None,
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
        from mesh.proxy.nft_runner import NftError, SubprocessNftRunner

        table = RenderOptions().table
        for family in ("ip", "ip6"):  # one table per address family, as kube-proxy
            try:
                SubprocessNftRunner().delete_table(table, family)
            except (NftError, OSError) as exc:
                raise click.ClickException(f"cannot remove the ruleset: {exc}") from None
            click.echo(f"removed table {family} {table}")
        return
    check_source(control_url, config_file)
    setup_logs(log_level, log_format)
    component: Any = make_proxy(
        mode, node_ip=node_ip, udp_idle_timeout=udp_idle_timeout, service_cidr=service_cidr
    )
    run_component(component, control_url, config_file, admin_listen, announce, None)


register(Registration("proxy", "node proxy", ProxyConfig, _proxy_translator, proxy_command))


# --- ingress gateway ---------------------------------------------------------------------


def _ingress_translator(settings: PlaneSettings) -> Translator:
    from mesh.control.translate.gateway_served import ServedTranslator

    return ServedTranslator(gateway_cidr=settings.gateway_cidr, privileged=settings.privileged)


def _ingress_status(settings: PlaneSettings) -> StatusWriter:
    from mesh.control.translate.gateway_served import StatusWriter as Writer

    return Writer(
        ingress_addresses=settings.ingress_addresses,
        gateway_cidr=settings.gateway_cidr,
        privileged=settings.privileged,
    )


def make_gateway(
    gateway_listen: Address,
    gateway_tls_listen: Address,
    access_log: str | None,
    otlp_endpoint: str | None,
    trace_sample_ratio: float,
    netns: str | None = None,
    limits: Any = None,
) -> Any:
    """The gateway component as the flags of ``mesh ingress`` and ``mesh up`` describe it;
    ``netns``: it runs in that network namespace (the cluster in a box's node)."""
    from mesh.ingress.gateway import IngressGateway
    from mesh.ingress.server import build_telemetry

    try:
        telemetry = build_telemetry(
            access_log=access_log, otlp_endpoint=otlp_endpoint, sample_ratio=trace_sample_ratio
        )
    except OSError as exc:
        raise click.ClickException(f"cannot open the access log {access_log}: {exc}") from None
    return IngressGateway(
        gateway_listen, gateway_tls_listen, telemetry=telemetry, netns=netns, limits=limits
    )


@click.command("ingress")
@source_options
@gateway_options
@click.option("--admin-listen", default=DEFAULT_ADMIN_INGRESS, show_default=True, type=ADDRESS)
@log_options
def ingress_command(
    control_url: str | None,
    config_file: Path | None,
    gateway_listen: Address,
    gateway_tls_listen: Address,
    access_log: str | None,
    otlp_endpoint: str | None,
    trace_sample_ratio: float,
    admin_listen: Address,
    log_level: str,
    log_format: str,
) -> None:
    """Run the ingress gateway alone: Ingress (ingress-nginx annotations) and Gateway API
    routes over HTTP and HTTPS (certificates by SNI)."""
    from mesh.run import run_component

    check_source(control_url, config_file)
    setup_logs(log_level, log_format)
    gateway = make_gateway(
        gateway_listen,
        gateway_tls_listen,
        access_log,
        otlp_endpoint,
        trace_sample_ratio,
        limits=gateway_limits(),
    )

    def announce_all(what: str, address: Address) -> None:
        announce(what, address)
        if what == "gateway":
            announce("gateway-tls", (gateway_tls_listen[0], gateway.tls_port))

    run_component(
        gateway, control_url, config_file, admin_listen, announce_all, ("gateway", gateway_listen)
    )


register(
    Registration(
        "ingress",
        "ingress gateway",
        ServedGatewayConfig,
        _ingress_translator,
        ingress_command,
        _ingress_status,
    )
)
