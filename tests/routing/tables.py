"""Builders for route-model tables: a config from a few routes, a compiled planner, a head."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mesh.config.gateway import (
    GatewayBackend,
    GatewayConfig,
    GatewayEndpoint,
    GatewayListener,
    Match,
    PathMatch,
    Route,
    WeightedBackend,
)
from mesh.http.plan import Forward, Head, PlanState, Respond, plan
from mesh.http.routes import CompiledRoutes, compile_routes

LISTENER = "l"


def backend(name: str, *ports: int) -> GatewayBackend:
    return GatewayBackend(
        name=name, endpoints=tuple(GatewayEndpoint(ip="127.0.9.1", port=p) for p in ports)
    )


def route(
    name: str,
    path: str = "/",
    kind: str = "Prefix",
    *,
    hosts: Iterable[str] = (),
    to: str | None = None,
    **kw: Any,
) -> Route:
    """A route to backend ``to`` (default: its own name) with one path match."""
    match = kw.pop("match", None) or Match(
        path=PathMatch.model_validate({"kind": kind, "value": path})
    )
    kw.setdefault("backends", (WeightedBackend(backend=to or name),))
    return Route(name=name, listeners=(LISTENER,), hosts=tuple(hosts), matches=(match,), **kw)


def compiled(
    routes: Iterable[Route], wildcard: str = "any-labels", port: int | None = 8080
) -> CompiledRoutes:
    routes = tuple(routes)
    names = {b.backend for r in routes for b in r.backends if b.backend}
    names |= {c.backend for r in routes for c in r.canaries}
    names |= {m.backend for r in routes for m in r.policy.mirrors}
    return compile_routes(
        GatewayConfig(
            listeners=(GatewayListener(name=LISTENER, wildcard=wildcard, port=port),),
            routes=routes,
            backends=(
                *tuple(backend(n, 8000) for n in sorted(names) if n != "empty"),
                GatewayBackend(name="empty"),
            ),
        )
    )


def head(target: str = "/", host: str = "example.com", **kw: Any) -> Head:
    return Head(
        listener=kw.pop("listener", LISTENER),
        method=kw.pop("method", "GET"),
        target=target,
        host=host,
        **kw,
    )


def sequence(*values: float) -> Callable[[], float]:
    """An injected random source that yields ``values`` in turn."""
    it = iter(values)
    return lambda: next(it)


def run(
    routes: CompiledRoutes,
    h: Head,
    rand: Callable[[], float] = lambda: 0.0,
    now: float = 0.0,
    state: PlanState | None = None,
) -> Forward | Respond:
    return plan(routes, h, now, rand, state)


def outcome(decision: Forward | Respond) -> str:
    """A route name for a Forward, ``status reason`` for a Respond."""
    if isinstance(decision, Forward):
        return decision.route.name
    return f"{decision.status} {decision.reason}"
