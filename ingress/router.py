"""The one adapter between the planner and the engine: ``plan()`` output -> engine decision.

mesh.http.plan speaks the route model (``plan.Forward`` naming a backend and its endpoints,
``plan.Respond`` with str headers); mesh.http.decision speaks the data path
(``decision.Forward`` holding a balancer, per-request timeouts and byte header edits;
``decision.Respond`` with byte headers). :class:`Routing` is built once per GatewayConfig and
does the translation per request; everything that depends only on a route (its timeouts, its
header edits, its body limit) is converted once, at build time, and looked up by route.

Balancers are kept across config swaps while a backend's endpoint list is unchanged, so the
in-flight counts of least-request and the round-robin cursor survive a route change; the
rate-limit buckets (``PlanState``) are kept across swaps too.

Pure: no trio, no sockets. The clock and randomness come in as arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple

from mesh.config.gateway import BackendTls, GatewayBackend, GatewayConfig, Route
from mesh.config.gateway import HeaderEdits as RouteEdits
from mesh.http import decision as engine
from mesh.http import plan as planner
from mesh.http.balance import Balancer, Endpoint, balancer
from mesh.http.events import Request
from mesh.http.routes import CompiledRoutes, compile_routes, normalize_host
from mesh.http.split import affinity_cookie
from mesh.http.tracing import TRACE_HEADERS, Hop
from mesh.tls.upstream import TlsEndpoint, UpstreamTls

# Seconds when a route says nothing (ingress-nginx's proxy-connect/read/send-timeout defaults).
DEFAULT_CONNECT = 5.0
DEFAULT_READ = 60.0
DEFAULT_SEND = 60.0
_DECIDED_MAX = 4096  # remembered plain decisions per config

_Decided = tuple["engine.Forward | engine.Respond", "planner.Forward | None"]


class RouteParts(NamedTuple):
    """What the engine needs of one route, converted once per config."""

    timeouts: engine.Timeouts
    request_edits: engine.HeaderEdits
    response_edits: engine.HeaderEdits
    max_body: int | None


def _edits(e: RouteEdits) -> engine.HeaderEdits:
    def enc(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in fields)

    return engine.HeaderEdits(
        set=enc(e.set), add=enc(e.add), remove=tuple(n.lower().encode("latin-1") for n in e.remove)
    )


def route_parts(route: Route) -> RouteParts:
    t = route.timeouts
    # One try is bounded by backendRequest and by the whole-request timeout, whichever is
    # shorter (GEP-1742: request covers the whole transaction, retries included; the data
    # path bounds the retries by it, mesh.ingress.server).
    bounds = [b for b in (t.backend_request, t.request) if b is not None]
    per_try = min(bounds) if bounds else None
    timeouts = engine.Timeouts(
        connect=t.connect if t.connect is not None else DEFAULT_CONNECT,
        read=t.read if t.read is not None else DEFAULT_READ,
        send=t.send if t.send is not None else DEFAULT_SEND,
        request=per_try,
    )
    p = route.policy
    return RouteParts(timeouts, _edits(p.request_headers), _edits(p.response_headers), p.body_limit)


def upstream_tls(backend: GatewayBackend) -> UpstreamTls:
    """The data path's TLS settings of an HTTPS backend (one value per distinct setting: the
    pool keeps connections apart by it)."""
    t = backend.tls or BackendTls()
    return UpstreamTls(
        server_name=t.server_name,
        verify=t.verify,
        verify_names=t.verify_names,
        verify_uris=t.verify_uris,
        ca_pem=t.ca_pem.encode("ascii", "replace") if t.ca_pem is not None else None,
    )


class Pinned:
    """A balancer that answers one endpoint first (session affinity), then the backend's own."""

    __slots__ = ("_base", "_first", "endpoints")

    def __init__(self, base: Balancer, first: Endpoint) -> None:
        eps = base.endpoints
        if eps and type(eps[0]) is not tuple and type(first) is tuple:
            # A cookie names an address; the backend's endpoint carries its TLS settings.
            first = next((e for e in eps if e[0] == first[0] and e[1] == first[1]), first)
        self._base, self._first, self.endpoints = base, first, eps

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        return self._first if self._first not in exclude else self._base.pick(exclude)

    def started(self, endpoint: Endpoint) -> None:
        self._base.started(endpoint)

    def finished(self, endpoint: Endpoint) -> None:
        self._base.finished(endpoint)

    def refused(self, endpoint: Endpoint) -> None:
        self._base.refused(endpoint)


def _respond(r: planner.Respond) -> engine.Respond:
    headers = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in r.headers)
    return engine.Respond(r.status, headers, r.body, r.reason, r.route)


class Routing:
    """The routing decision of one GatewayConfig, for every listener of it."""

    def __init__(
        self,
        config: GatewayConfig,
        previous: Routing | None = None,
        *,
        policy: str = "round-robin",
        rand: Callable[[], float] = random.random,
        own_ports: Mapping[str, int] | None = None,
    ) -> None:
        """``own_ports``: where the gateway's own listeners (the Ingress ones, with no port
        in the config) are bound; https redirects go to its TLS port."""
        self.config = config
        self.compiled: CompiledRoutes = compile_routes(config, own_ports)
        self.rand = rand
        self.state: planner.PlanState = (
            previous.state if previous is not None else planner.PlanState()
        )
        self.parts: dict[int, RouteParts] = {id(r): route_parts(r) for r in config.routes}
        self._index: dict[int, int] = {id(r): i for i, r in enumerate(config.routes)}
        # Routes whose requests need more than the engine's exchange (auth-url,
        # limit-connections, mirrors, retries): the gateway takes its slower path for these.
        self.special = frozenset(
            id(r)
            for r in config.routes
            if r.policy.external_auth is not None
            or r.policy.connection_limit is not None
            or r.policy.mirrors
            or r.retry is not None
        )
        self._plain: dict[tuple[int, str], engine.Forward] = {}
        # Decisions that depend on nothing but (listener, method, target, Host): see ``decide``.
        self._decided: dict[tuple[str, bytes, bytes, bytes | None], _Decided] = {}
        old = previous.balancers if previous is not None else {}
        self.balancers: dict[str, Balancer] = {}
        tls = {b.name: upstream_tls(b) for b in config.backends if b.protocol == "https"}
        for name, (_, eps) in self.compiled.backends.items():
            kept = old.get(name)
            settings = tls.get(name)
            if settings is not None:  # re-encryption: the endpoints carry their TLS settings
                eps = tuple(TlsEndpoint(ip, port, settings) for ip, port in eps)
            unique = tuple(dict.fromkeys(eps))
            self.balancers[name] = (
                kept if kept is not None and kept.endpoints == unique else balancer(policy, eps)
            )

    def mirror_targets(
        self, mirrors: tuple[tuple[str, tuple[Endpoint, ...]], ...]
    ) -> list[tuple[str, tuple[Endpoint, ...]]]:
        """The plan's mirror copies with the endpoints as the balancers hold them (which carry
        a backend's TLS settings): a copy to an HTTPS backend is re-encrypted too."""
        out = []
        for name, _ in mirrors:
            b = self.balancers.get(name)
            out.append((name, b.endpoints if b is not None else ()))
        return out

    def endpoints(self) -> set[Endpoint]:
        """Every endpoint of this config (the pool keeps connections only to these)."""
        return {ep for b in self.balancers.values() for ep in b.endpoints}

    def decide(
        self, listener: str, req: Request, peer: engine.Peer, now: float, hop: Hop | None
    ) -> tuple[engine.Forward | engine.Respond, planner.Forward | None]:
        """The engine's decision, and the plan's Forward it came from (None for a Respond).

        Most requests go to a plain route: no check before the backend choice (source ranges,
        auth, limits, redirects...), one backend, nothing applied after it (rewrite, mirrors,
        affinity), no CORS, and no route of their host slot looks at headers or the query.
        Such a decision is a function of the listener, method, target and Host alone, so it
        is remembered per config (this object) and reused; everything else is planned anew."""
        key = (listener, req.method, req.target, req.header(b"host"))
        if hop is None:
            found = self._decided.get(key)
            if found is not None:
                return found
        head = planner.head_from_wire(
            listener,
            req.method,
            req.target,
            req.headers,
            scheme="https" if peer.scheme == b"https" else "http",
            client=peer.address,
            content_length=req.length if req.length >= 0 else None,
        )
        out = planner.plan(self.compiled, head, now, self.rand, self.state)
        if type(out) is planner.Respond:
            return _respond(out), None
        assert isinstance(out, planner.Forward)
        decided = (self.forward(out, hop, head.target), out)
        if hop is None and self._cacheable(listener, out, head.host):
            if len(self._decided) >= _DECIDED_MAX:  # bounded: targets are the client's choice
                self._decided.clear()
            self._decided[key] = decided
        return decided

    def _cacheable(self, listener: str, out: planner.Forward, host: str) -> bool:
        index = self._index.get(id(out.route))
        if index is None or out.cors:
            return False
        fast = self.compiled.fast[index]
        if fast.gates or fast.tail or fast.single is None or out.route.policy.cors is not None:
            return False
        table = self.compiled.tables.get(listener)
        if table is None:
            return False
        return all(not e.headers for e in table.lookup(normalize_host(host)))

    def forward(
        self, fwd: planner.Forward, hop: Hop | None, target: str | None = None
    ) -> engine.Forward:
        """``target``: the request's own target; a plan that kept it (no rewrite) lets the
        engine send the client's bytes as they came."""
        plain = (
            fwd.target == target
            and fwd.pinned is None
            and fwd.host is None
            and hop is None
            and not fwd.cors
            and fwd.route.affinity is None
        )
        if plain:
            # Most requests: one value per route and backend, built once (a frozen dataclass
            # costs microseconds to build, more than the rest of the decision).
            key = (id(fwd.route), fwd.backend)
            found = self._plain.get(key)
            if found is None:
                found = self._plain[key] = self._build(fwd, None, None)
            return found
        return self._build(fwd, hop, fwd.target.encode("latin-1"))

    def _build(self, fwd: planner.Forward, hop: Hop | None, target: bytes | None) -> engine.Forward:
        parts = self.parts[id(fwd.route)]
        upstream: Balancer = self.balancers[fwd.backend]
        request_edits, response_edits = parts.request_edits, parts.response_edits
        extra: list[tuple[bytes, bytes]] = [
            (n.encode("latin-1"), v.encode("latin-1")) for n, v in fwd.cors
        ]
        if fwd.pinned is not None:
            upstream = Pinned(upstream, fwd.pinned)
        elif fwd.affinity is not None:
            # Pick now, so the cookie can name the endpoint the request goes to.
            first = upstream.pick(())
            if first is not None:
                upstream = Pinned(upstream, first)
                extra.append((b"set-cookie", affinity_cookie(fwd.affinity, first).encode()))
        if extra:
            response_edits = engine.HeaderEdits(
                response_edits.set, response_edits.add + tuple(extra), response_edits.remove
            )
        if hop is not None:
            # The trace headers of this hop replace whatever the client sent.
            request_edits = engine.HeaderEdits(
                request_edits.set,
                request_edits.add + hop.headers,
                request_edits.remove + tuple(TRACE_HEADERS),
            )
        return engine.Forward(
            upstream,
            fwd.route.name,
            fwd.backend,
            parts.timeouts,
            request_edits,
            response_edits,
            target,
            fwd.host.encode("latin-1") if fwd.host is not None else None,
            parts.max_body,
        )

    def describe(self) -> Mapping[str, object]:
        return {
            "routes": len(self.config.routes),
            "backends": {
                name: [f"{ip}:{port}" for ip, port in b.endpoints]
                for name, b in sorted(self.balancers.items())
            },
        }
