"""The ingress gateway component: listeners, certificates and the routing they share.

Theory of operation. ``apply(config)`` builds everything a config needs before anything
serves it — the compiled routes and balancers (:class:`~mesh.ingress.router.Routing`), one
certificate store per TLS listener — and then swaps them in: one assignment for the routing
(``holder.routing``), one per TLS terminator. A request reads the routing once, when its head
has arrived, so a request in flight and an open WebSocket finish on the config they started
with; new TLS handshakes see the new certificates. The pool then closes its idle connections
to endpoints the new config no longer has (busy ones close when their request ends).

Listeners: the two Ingress listeners (``--gateway-listen``, ``--gateway-tls-listen``) open at
start and stay; a Gateway's listeners (its address and port, from the config) are opened and
closed as configs come and go by a reconcile task. A listener that cannot be opened (the
address is not local, the port is taken or needs privileges) is logged, kept in ``problems``
(``/config``), reported through ``on_failures`` (the control plane writes it into the
Gateway's status: in process under ``mesh up``, over ``POST /v1/reports/ingress`` from
``mesh ingress --control``, mesh/report_client.py) and tried again every few seconds and at
each config; once it binds, the report says so and the status is cleared.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Callable, Mapping
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from mesh.addresses import Address, format_address
from mesh.config.gateway import (
    GatewayConfig,
    GatewayListener,
    ListenerFailure,
    ServedGatewayConfig,
)
from mesh.http.metrics import HttpMetrics
from mesh.http.pool import Pool
from mesh.http.server import Limits
from mesh.ingress.mirror import Mirrors
from mesh.ingress.router import Routing
from mesh.ingress.server import GatewayServer, Holder, Telemetry
from mesh.tls import CertEntry, CertStore, TlsTerminator, self_signed
from mesh.tls.certs import REDACTED

log = logging.getLogger("mesh.ingress")

INGRESS_HTTP, INGRESS_HTTPS = "ingress-http", "ingress-https"
RETRY_LISTEN = 5.0  # seconds between tries of a listener that could not be opened
Key = tuple[str, str, int, bool]  # (listener name, address, port, TLS)


class _Running:
    __slots__ = ("port", "scope", "server")

    def __init__(self, server: GatewayServer, scope: trio.CancelScope, port: int) -> None:
        self.server, self.scope, self.port = server, scope, port


class IngressGateway:
    name = "ingress"

    def __init__(
        self,
        listen: Address = ("127.0.0.1", 8080),
        tls_listen: Address = ("127.0.0.1", 8443),
        *,
        telemetry: Telemetry | None = None,
        limits: Limits | None = None,
        default_certificate: CertEntry | None = None,
        policy: str = "round-robin",
        netns: str | None = None,
    ) -> None:
        self.listen = listen
        # The cluster in a box: every listener is opened in the box's node namespace (its
        # upstream sockets are made there too: mesh.http.pool.new_socket).
        self.netns = netns
        self.tls_listen = tls_listen
        self.registry = CollectorRegistry()
        self.telemetry = telemetry or Telemetry()
        if self.telemetry.metrics is None:
            self.telemetry.metrics = HttpMetrics("mesh_gateway", self.registry)
        self.limits = limits or Limits()
        self.policy = policy
        self.pool = Pool()
        self.mirrors = Mirrors()
        self.config: GatewayConfig | None = None
        self.holder = Holder(Routing(GatewayConfig(), policy=policy))
        # One generated certificate for every TLS listener without its own default.
        self.default_certificate = default_certificate or self_signed()
        self.terminators: dict[str, TlsTerminator] = {}
        self.problems: dict[str, str] = {}  # listener -> why it is not served
        self.failures: dict[str, ListenerFailure] = {}  # the same, as reported for status
        # Told the listener failures whenever they change (the control plane writes them into
        # the Gateway's status): set by whoever runs the gateway beside a control plane.
        self.on_failures: Callable[[Mapping[str, ListenerFailure]], None] | None = None
        # How that report is getting to a control plane in another process (``/config``).
        self.report_state: Callable[[], Any] | None = None
        self._reported = False  # told on_failures since start (a config was taken)
        self.certificate_problems: list[str] = []
        self.config_problems: frozenset[tuple[str, str, str]] = frozenset()  # already logged
        self._running: dict[Key, _Running] = {}
        self._changed = trio.Event()
        self.port = listen[1]
        self.tls_port = tls_listen[1]
        metrics = self.telemetry.metrics
        metrics.watch("config_version", "Version of the config served", self._version)
        metrics.watch("tls_handshakes", "TLS ClientHellos seen", self._handshakes, kind="counter")
        mirrors = self.mirrors
        metrics.watch("mirrored", "Request copies sent", lambda: mirrors.sent, "counter")
        metrics.watch(
            "mirror_skipped", "Request copies not sent", lambda: mirrors.skipped, "counter"
        )
        metrics.watch(
            "mirror_dropped",
            "Request copies with a body dropped: the mirror fell too far behind",
            lambda: mirrors.dropped,
            "counter",
        )
        if self.telemetry.access_log is not None:
            log_ = self.telemetry.access_log
            metrics.watch(
                "access_log_dropped", "Access log lines dropped", lambda: log_.dropped, "counter"
            )

    # --- Component ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.config is not None

    @property
    def not_ready_reason(self) -> str:
        return "no config yet" if self.config is None else ""

    def apply(self, config: GatewayConfig) -> None:
        routing = self._routing(config)
        stores = self._certificates(config)
        self.holder.routing = routing  # the swap: new requests from here on
        for name, store in stores.items():
            self._terminator(name).update(store)
        self.pool.drain(routing.endpoints())
        self.config = config
        self._changed.set()
        self._log_problems(config)
        log.info(
            "gateway config applied",
            extra={"version": config.version, "routes": len(config.routes)},
        )

    def _routing(self, config: GatewayConfig) -> Routing:
        # The bound ports of the Ingress listeners: an https redirect goes to the TLS one.
        own = {INGRESS_HTTP: self.port, INGRESS_HTTPS: self.tls_port}
        return Routing(config, self.holder.routing, policy=self.policy, own_ports=own)

    def _log_problems(self, config: GatewayConfig) -> None:
        """What the config refused or ignored (a bad annotation value, a missing Secret), each
        logged once as a warning where the user reads the gateway's output; not again while
        it stays in the config."""
        now = frozenset((p.kind, p.object, p.message) for p in config.problems)
        for kind, obj, message in sorted(now - self.config_problems):
            log.warning(
                "object not served as written",
                extra={"object": f"{kind} {obj}", "problem": message},
            )
        self.config_problems = now

    def config_json(self) -> Any:
        if self.config is None:
            return None
        data = self.config.model_dump(mode="json")
        for secret in data.get("secrets", ()):
            secret["key_pem"] = REDACTED.decode()  # never serve private keys on the admin port
        return {
            "config": data,
            "listeners": {
                name: format_address((address, r.port))
                for (name, address, _, _), r in sorted(self._running.items())
            },
            "problems": {**self.problems},
            "certificates": {
                name: t.store.describe() for name, t in sorted(self.terminators.items())
            },
            "certificateProblems": self.certificate_problems,
            "routing": self.holder.routing.describe(),
            **({"report": self.report_state()} if self.report_state is not None else {}),
        }

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._serve(task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.telemetry.aclose()

    async def _serve(self, task_status: trio.TaskStatus[Any]) -> None:
        async with trio.open_nursery() as nursery:
            self._terminator(INGRESS_HTTPS)
            # The Ingress listeners are the component's own: failing to open them fails start.
            self.port = await self._open(nursery, INGRESS_HTTP, self.listen, tls=False)
            self.tls_port = await self._open(nursery, INGRESS_HTTPS, self.tls_listen, tls=True)
            if self.config is not None:  # taken before the ports were known (port 0)
                self.holder.routing = self._routing(self.config)
            task_status.started()
            while True:
                await self._reconcile(nursery)
                # A listener that could not be opened is tried again every few seconds.
                with trio.move_on_after(RETRY_LISTEN if self.problems else math.inf):
                    await self._changed.wait()
                self._changed = trio.Event()

    # --- listeners -----------------------------------------------------------------------

    async def _open(self, nursery: trio.Nursery, name: str, address: Address, tls: bool) -> int:
        server = GatewayServer(
            name,
            self.holder,
            telemetry=self.telemetry,
            limits=self.limits,
            pool=self.pool,
            tls=self._terminator(name) if tls else None,
            mirrors=self.mirrors,
        )
        scope = trio.CancelScope()
        sock = _bind_in(self.netns, address) if self.netns is not None else None

        async def serve(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                if sock is not None:
                    await server.serve(sock, task_status=task_status)
                else:
                    await server.listen(address[0], address[1], task_status=task_status)

        bound = await nursery.start(serve)
        port = int(bound[1])
        self._running[(name, address[0], address[1], tls)] = _Running(server, scope, port)
        return port

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        config = self.config
        wanted: dict[Key, GatewayListener] = {}
        closed = False
        if config is not None:
            for lis in config.listeners:
                if lis.address is not None and lis.port is not None:
                    wanted[(lis.name, lis.address, lis.port, lis.protocol == "HTTPS")] = lis
        for key, running in list(self._running.items()):
            if key[0] in (INGRESS_HTTP, INGRESS_HTTPS):
                continue
            if key not in wanted:
                running.scope.cancel()  # its open connections end with it
                del self._running[key]
                closed = True
        if closed:  # let cancelled listeners close their sockets before others bind
            await trio.sleep(0.05)
        names = {w[0] for w in wanted}
        self.problems = {k: v for k, v in self.problems.items() if k in names}
        failures = {k: v for k, v in self.failures.items() if k in names}
        for key, lis in wanted.items():
            if key in self._running:
                continue
            try:
                await self._open(nursery, lis.name, (key[1], key[2]), tls=key[3])
            except OSError as exc:
                why = f"cannot listen on {format_address((key[1], key[2]))}: {exc.strerror or exc}"
                if exc.errno == errno.EACCES:
                    why += " (a port below 1024 needs privileges)"
                if self.problems.get(lis.name) != why:
                    log.warning("listener not served", extra={"listener": lis.name, "error": why})
                self.problems[lis.name] = why
                failures[lis.name] = ListenerFailure(
                    message=why, address_unusable=exc.errno == errno.EADDRNOTAVAIL
                )
            else:
                self.problems.pop(lis.name, None)
                failures.pop(lis.name, None)
        # The first report says the gateway has taken a config (its Gateways may be
        # Programmed from then on); later ones, what changed.
        if failures != self.failures or (config is not None and not self._reported):
            self.failures = failures
            self._report(failures)

    def _report(self, failures: Mapping[str, ListenerFailure]) -> None:
        if self.on_failures is None:
            return
        self._reported = True
        try:
            self.on_failures(failures)
        except Exception:  # a broken report never stops the listeners
            log.exception("listener report failed")

    # --- certificates --------------------------------------------------------------------

    def _terminator(self, name: str) -> TlsTerminator:
        term = self.terminators.get(name)
        if term is None:
            store = CertStore.build((), default=self.default_certificate)
            term = self.terminators[name] = TlsTerminator(store)
        return term

    def _certificates(self, config: GatewayConfig) -> dict[str, CertStore]:
        secrets = {}
        if isinstance(config, ServedGatewayConfig):
            secrets = {s.name: s for s in config.secrets}
        stores: dict[str, CertStore] = {}
        problems: list[str] = []
        for lis in config.listeners:
            if lis.protocol != "HTTPS":
                continue
            entries = []
            for ref in lis.certificates:
                secret = secrets.get(ref.secret)
                if secret is None:
                    problems.append(f"{lis.name}: Secret {ref.secret} is missing or not TLS")
                    continue
                entries.append(
                    CertEntry(
                        f"Secret {ref.secret}",
                        secret.cert_pem.encode("latin-1"),
                        secret.key_pem.encode("latin-1"),
                        ref.hosts,
                    )
                )
            previous = self.terminators[lis.name].store if lis.name in self.terminators else None
            store = CertStore.build(entries, default=self.default_certificate, previous=previous)
            problems.extend(f"{lis.name}: {p}" for p in store.problems)
            stores[lis.name] = store
        if problems != self.certificate_problems:
            for problem in problems:
                log.warning("certificate not served", extra={"problem": problem})
        self.certificate_problems = problems
        return stores

    def _version(self) -> float:
        return float(self.config.version) if self.config is not None else -1.0

    def _handshakes(self) -> float:
        return float(sum(t.handshakes for t in self.terminators.values()))


def _bind_in(netns: str, address: Address) -> socket.socket:
    """A listening socket made in namespace ``netns`` (where it stays, whatever the thread)."""
    from mesh.netns import inside  # pyroute2: only the cluster in a box needs it

    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with inside(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock
