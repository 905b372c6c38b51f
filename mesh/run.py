"""Process wiring for the serving commands: build components, start them, run until stopped.

SIGINT and SIGTERM cancel the whole nursery, so every component closes its sockets before the
process exits. The nftables ruleset of ``mesh proxy --mode nftables`` outlives the process, as
kube-proxy's does (``--cleanup`` removes it); the cluster in a box removes its namespaces.
"""

from __future__ import annotations

import gc
import logging
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from mesh.addresses import Address, format_address
from mesh.component import Component
from mesh.config.base import ComponentConfig

log = logging.getLogger("mesh.run")

Announce = Callable[[str, Address], None]


class _Listening:
    """The addresses a command listens on (the ``announce`` of the serving functions), printed
    together once everything is up: after the start's log lines, under one title line, where
    a reader of the terminal finds them rather than scattered among those lines. Each row
    stays ``NAME HOST:PORT`` (scripts read them)."""

    def __init__(self, announce: Announce) -> None:
        self.announce = announce
        self.rows: list[tuple[str, Address]] = []

    def __call__(self, what: str, address: Address) -> None:
        self.rows.append((what, address))

    def ready(self, command: str, *, configured: bool = True) -> None:
        """Print the table; ``configured``: every component has its first config (a
        component fed from elsewhere is still waiting for it, so it only says it listens)."""
        import sys

        title = f"mesh {command} {'is ready, ' if configured else ''}listening on:"
        if sys.stdout.isatty():
            title = f"\033[1m{title}\033[0m"
        sys.stdout.write(f"\n{title}\n")
        for what, address in self.rows:
            self.announce(what, address)
        sys.stdout.flush()


async def _until_signal(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel.cancel()
            return


def _finish_teardown() -> None:
    """Ignore SIGINT and SIGTERM from now on except while trio listens for them (trio
    restores this on exit): a second signal during shutdown must not cut the box's teardown
    short, nor one that lands after it (the process is about to exit anyway). Only SIGKILL
    may leave state behind; ``mesh down`` clears it."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


class StartupError(Exception):
    """A server could not start (an address in use, not local, no permission)."""


async def _start(
    nursery: trio.Nursery,
    what: str,
    address: Address | None,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
) -> Any:
    """``nursery.start`` that turns an OS error while starting into one clear sentence."""
    try:
        return await nursery.start(fn, *args)
    except* OSError as group:
        exc = group.exceptions[0]
        assert isinstance(exc, OSError)
        where = f" on {format_address(address)}" if address is not None else ""
        reason = exc.strerror or str(exc)
        raise StartupError(f"cannot start the {what}{where}: {reason}") from None


def _reason(exc: Exception) -> str:
    """One line for an OS or subprocess error (ip's own message when it has one)."""
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        return str(exc.stderr).strip().splitlines()[-1]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


# Young-generation size of the cyclic garbage collector for the serving processes. The
# default (700 allocations) makes building a config of 10,000 Services (tens of thousands of
# small objects that all survive) spend most of its time in the collector; the objects these
# processes make are freed by reference counting, and cycles are rare.
GC_YOUNG_THRESHOLD = 100_000


def _run(main: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)

    async def top() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_signal, nursery.cancel_scope)
            await main(nursery)

    try:
        trio.run(top)
    except BaseException as exc:
        startup = _find(exc, StartupError)
        if startup is None:
            raise
        # Said once, on stderr, as the last line (not also as a log record).
        raise SystemExit(f"mesh: {startup}") from None


async def _start_component(nursery: trio.Nursery, component: Component[Any]) -> None:
    from mesh.registry import title

    await _start(nursery, title(component.name), _listen_of(component), component.run)


async def _start_fed(
    nursery: trio.Nursery, plane: Any, components: Sequence[Component[Any]]
) -> None:
    """Start each component, then feed it from the in-process control plane."""
    from mesh.feed import feed_from_plane

    for component in components:
        await _start_component(nursery, component)
        await nursery.start(feed_from_plane, plane, component)


def _listen_of(component: Component[Any]) -> Address | None:
    listen = getattr(component, "listen", None)
    return listen if isinstance(listen, tuple) else None


def make_proxy(
    mode: str,
    *,
    node_ip: str = "127.0.0.1",
    udp_idle_timeout: float = 30.0,
    service_cidr: str | None = None,
) -> Component[Any]:
    if mode == "nftables":
        from mesh.proxy.nft_render import RenderOptions
        from mesh.proxy.nftables import NftablesProxy, host_families

        # Both address families, each in its own table (kube-proxy's dual-stack layout);
        # only ip where the host has IPv6 off.
        return NftablesProxy(options=[RenderOptions(family=f) for f in host_families()])
    from mesh.proxy.userspace import UserspaceProxy

    return UserspaceProxy(
        node_ip=node_ip,
        udp_idle_timeout=udp_idle_timeout,
        local_ranges=_service_ranges(service_cidr),
    )


def _service_ranges(service_cidr: str | None) -> tuple[str, ...]:
    """The ranges of ``--service-cidr`` (already checked by its click type)."""
    if not service_cidr:
        return ()
    from mesh.cidrs import parse_cidrs

    return tuple(str(n) for n in parse_cidrs(service_cidr).values())


@dataclass(frozen=True, slots=True)
class PlaneOptions:
    """What the control plane of ``mesh up`` and ``mesh control`` is built from."""

    manifest_dir: Path | tuple[Path, ...]  # files and directories (-f, repeatable)
    service_cidr: str
    node_name: str
    zone: str
    ttl: int
    pod_mode: str
    gateway_cidr: str = "127.11.0.0/16"
    ingress_addresses: tuple[str, ...] = ("127.0.0.1",)

    def build(self) -> Any:
        import os

        from mesh.control.plane import ControlPlane, GatewaySettings

        return ControlPlane(
            self.manifest_dir,
            service_cidr=self.service_cidr,
            node_name=self.node_name,
            dns_zone=self.zone,
            dns_ttl=self.ttl,
            dns_pod_mode=self.pod_mode,  # type: ignore[arg-type]
            gateway=GatewaySettings(
                self.gateway_cidr, self.ingress_addresses, privileged=os.geteuid() == 0
            ),
            tune_gc=True,
        )


def _without_gateway(plane: Any) -> None:
    """``--no-gateway``: no controller serves Ingress and Gateway API here, so their status
    says so (Accepted and Programmed Unknown, no addresses) instead of what a gateway would
    serve (control/translate/gateway_served.py)."""
    from mesh.control.translate.gateway_served import AbsentGatewayStatus

    served = plane.status_writers.get("ingress")
    if served is not None:
        plane.status_writers["ingress"] = AbsentGatewayStatus(
            ingress_addresses=served.ingress_addresses,
            gateway_cidr=served.gateway_cidr,
            privileged=served.privileged,
        )


def run_up(
    *,
    options: PlaneOptions,
    control_listen: Address,
    dns_listen: Address,
    admin_listen: Address,
    with_proxy: bool,
    upstreams: Sequence[Address] | None,
    announce: Announce,
    gateway: Component[Any] | None = None,
    dns_options: Mapping[str, Any] | None = None,
) -> None:
    from mesh.admin import AdminServer
    from mesh.control.stream import ConfigServer
    from mesh.dns.server import DnsServer

    plane = options.build()
    if gateway is None:
        _without_gateway(plane)
    dns = DnsServer(dns_listen, upstreams, zone=options.zone, **(dns_options or {}))
    components: list[Component[Any]] = [dns]
    if with_proxy:
        from mesh.proxy.userspace import UserspaceProxy

        components.append(UserspaceProxy(local_ranges=_service_ranges(options.service_cidr)))
    if gateway is not None:
        components.append(gateway)
        # Listeners the gateway cannot open go into its Gateways' status.
        name = gateway.name
        gateway.on_failures = lambda failures: plane.report(name, failures)  # type: ignore[attr-defined]
    control = ConfigServer(plane, control_listen)
    admin = AdminServer(admin_listen, components, plane=plane)

    listening = _Listening(announce)

    async def main(nursery: trio.Nursery) -> None:
        await _start(nursery, "control plane", None, plane.run)
        await _start(nursery, "config stream server", control_listen, control.run)
        listening("control", (control_listen[0], control.port))
        await _start_fed(nursery, plane, components)
        listening("dns", (dns_listen[0], dns.port))
        if gateway is not None:
            g: Any = gateway
            listening("gateway", (g.listen[0], g.port))
            listening("gateway-tls", (g.tls_listen[0], g.tls_port))
        await _start(nursery, "admin server", admin_listen, admin.run)
        listening("admin", (admin_listen[0], admin.port))
        listening.ready("up")

    _run(main)


def run_up_netns(
    *,
    options: PlaneOptions,
    control_listen: Address,
    admin_listen: Address,
    pod_cidr: str,
    box: str,
    state_dir: Path,
    upstreams: Sequence[Address] | None,
    announce: Announce,
    dns_options: Mapping[str, Any] | None = None,
    gateway: Callable[..., Component[Any]] | None = None,
    gateway_ports: tuple[int, int] = (8080, 8443),
) -> None:
    """The cluster in a box (root): pods in namespaces, DNS on the node, nftables proxy,
    and the ingress gateway (``gateway`` makes it: ``(listen, tls_listen, netns=...)``).

    The gateway runs where a hostNetwork ingress controller runs on a real node: in the node
    namespace, on the node's address (the pods' next hop, so every pod reaches it), its
    upstream sockets made there too (the pods are reachable only from the node)."""
    from mesh.admin import AdminServer
    from mesh.boxnode import BoxNode, dns_objects
    from mesh.control.stream import ConfigServer
    from mesh.dns.server import DnsServer
    from mesh.proxy.cluster_box import ClusterBox, down

    removed = down(state_dir)  # a box left by a crashed run
    if removed:
        log.info("removed a stale box", extra={"namespaces": removed})
    cluster = ClusterBox(
        box,
        pod_cidr=pod_cidr,
        service_cidr=options.service_cidr,
        state_dir=state_dir,
        cluster_domain=options.zone,
    )
    # the Ingresses' status.loadBalancer: where the pods reach the gateway
    plane = replace(options, ingress_addresses=(cluster.node_ip,)).build()
    if gateway is None:
        _without_gateway(plane)
    dns = DnsServer(
        (cluster.node_ip, 53),
        upstreams,
        zone=options.zone,
        netns=cluster.node,
        **(dns_options or {}),
    )
    proxy = cluster.proxy()
    components: list[Component[Any]] = [dns, proxy]
    gw: Any = None
    if gateway is not None:
        from mesh.http import pool
        from mesh.netns import socket_maker

        http_port, https_port = gateway_ports
        gw = gateway(
            (cluster.node_ip, http_port), (cluster.node_ip, https_port), netns=cluster.node
        )
        pool.new_socket = socket_maker(cluster.node)
        components.append(gw)
        # As in run_up: its listener failures (and that it took a config) go into status.
        gw_name = gw.name
        gw.on_failures = lambda failures: plane.report(gw_name, failures)
    control = ConfigServer(plane, control_listen)
    admin = AdminServer(admin_listen, components, plane=plane)
    node = BoxNode(plane, cluster)

    # System objects first: a manifest Service that pins the kube-dns address is then refused
    # as any conflict is (reported, everything else runs), instead of the box failing.
    for obj in dns_objects(cluster.dns_ip, cluster.node_ip):
        plane.apply(obj)

    listening = _Listening(announce)

    async def main(nursery: trio.Nursery) -> None:
        try:
            await trio.to_thread.run_sync(cluster.build)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise StartupError(f"cannot build the box: {_reason(exc)}") from None
        await _start(nursery, "control plane", None, plane.run)
        await _start(nursery, "box node agent", None, node.run)
        await _start(nursery, "config stream server", control_listen, control.run)
        listening("control", (control_listen[0], control.port))
        await _start_fed(nursery, plane, components)
        listening("dns", (cluster.dns_ip, 53))
        if gw is not None:
            listening("gateway", (cluster.node_ip, gw.port))
            listening("gateway-tls", (cluster.node_ip, gw.tls_port))
        await _start(nursery, "admin server", admin_listen, admin.run)
        listening("admin", (admin_listen[0], admin.port))
        listening.ready("up --netns")

    _finish_teardown()
    try:
        _run(main)
    finally:
        removed = cluster.teardown()
        log.info("box removed", extra={"namespaces": len(removed)})


def run_control(
    *,
    options: PlaneOptions,
    control_listen: Address,
    admin_listen: Address,
    announce: Announce,
) -> None:
    from mesh.admin import AdminServer
    from mesh.control.stream import ConfigServer

    plane = options.build()
    control = ConfigServer(plane, control_listen)
    admin = AdminServer(admin_listen, [], plane=plane)

    listening = _Listening(announce)

    async def main(nursery: trio.Nursery) -> None:
        await _start(nursery, "control plane", None, plane.run)
        await _start(nursery, "config stream server", control_listen, control.run)
        listening("control", (control_listen[0], control.port))
        await _start(nursery, "admin server", admin_listen, admin.run)
        listening("admin", (admin_listen[0], admin.port))
        listening.ready("control")

    _run(main)


def check_config_file(path: Path, kind: type[ComponentConfig]) -> None:
    """A config file that is bad at start stops the command (exit 1, one sentence), as a bad
    flag does; a bad edit later is logged and the last good config keeps serving."""
    from mesh.feed import ConfigFileError, parse_config

    try:
        parse_config(path.read_text(encoding="utf-8"), path, kind)
    except ConfigFileError as exc:
        raise StartupError(f"invalid config file {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read config file {path}: {exc}") from None


def run_component(
    component: Component[Any],
    control_url: str | None,
    config_file: Path | None,
    admin_listen: Address,
    announce: Announce,
    listen: tuple[str, Address] | None,
) -> None:
    """Run one data-plane component fed by a control plane URL or a config file."""
    from mesh.admin import AdminServer
    from mesh.feed import config_type_for, feed_from_control, feed_from_file

    admin = AdminServer(admin_listen, [component])
    listening = _Listening(announce)

    async def main(nursery: trio.Nursery) -> None:
        if config_file is not None:
            check_config_file(config_file, config_type_for(component))
        await _start_component(nursery, component)
        if listen is not None:
            what, address = listen
            listening(what, (address[0], getattr(component, "port", address[1])))
        await _start(nursery, "admin server", admin_listen, admin.run)
        listening("admin", (admin_listen[0], admin.port))
        listening.ready(component.name, configured=False)
        # The feed starts last and is not awaited for its first config: a component fed by a
        # control plane that is down serves (SERVFAIL for DNS, nothing for the proxy) until
        # the plane is back, and /ready tells the difference.
        if control_url is not None:
            reporter = await _start_reporter(nursery, control_url, component)
            if reporter is None:
                nursery.start_soon(feed_from_control, control_url, component)
            else:
                nursery.start_soon(_feed_reporting, control_url, component, reporter)
        elif config_file is not None:
            nursery.start_soon(feed_from_file, config_file, component)

    _run(main)


async def _start_reporter(nursery: trio.Nursery, url: str, component: Component[Any]) -> Any:
    """For a component with run-time reports (the gateway's ``on_failures``), the task that
    posts them to the control plane at ``url`` (mesh/report_client.py), or None. The
    instance is this host and the component's port: two gateways never share it, and a
    gateway restarted on its port takes over its predecessor's report at once."""
    if not hasattr(component, "on_failures"):
        return None
    import socket

    from mesh.report_client import Reporter, instance_name

    instance = instance_name(socket.gethostname(), getattr(component, "port", 0))
    reporter = Reporter(url, component.name, instance)
    component.on_failures = reporter.update
    component.report_state = reporter.describe  # type: ignore[attr-defined]
    await nursery.start(reporter.run)
    return reporter


async def _feed_reporting(url: str, component: Component[Any], reporter: Any) -> None:
    """:func:`mesh.feed.feed_from_control`, telling the reporter of each (re)connection."""
    from mesh.feed import config_type_for, feed
    from mesh.stream_client import stream_configs

    configs = stream_configs(
        url, component.name, config_type_for(component), on_connect=reporter.reconnected
    )
    await feed(configs, component)
