"""Gateway API (GatewayClass, Gateway, HTTPRoute, ReferenceGrant) -> the gateway's route model,
with the status each object gets.

- A GatewayClass is ours when ``spec.controllerName`` is ``mesh.dev/gateway``; a Gateway when
  its class is. Objects of other controllers are left alone (no status either).
- A Gateway's address is its first ``IPAddress`` in ``spec.addresses``, else one allocated
  from the gateway range (``--gateway-cidr``). Listeners sharing a port share one socket: in
  the route model they are one listener named ``gateway/<ns>/<name>/<port>``, and each route
  carries its hostnames already intersected with the hostname of the listener it attached to.
- A listener is served when its protocol is HTTP or HTTPS, its port may be bound, it does not
  conflict with another listener on its port, and (HTTPS) its certificates resolve; otherwise
  its status says why (the specification's reasons) and it is left out.
- HTTPRoute parentRefs pick listeners by ``sectionName`` and ``port``; ``allowedRoutes``
  (namespaces From Same/All/Selector, kinds) and hostname intersection decide attachment.
- ``retry`` never repeats a request that is not idempotent once it may have reached the
  backend, unless the route is annotated ``mesh.dev/retry-non-idempotent: "true"``.
- A backendRef is a Service in the route's namespace, or in another one when a ReferenceGrant
  there allows it; one that does not resolve keeps its weight and answers 500 (the spec).
- A BackendTLSPolicy on the Service (port) makes the gateway speak TLS to it
  (control/translate/backendtls.py); the policy's status names the Gateways using it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.config.gateway import (
    GatewayBackend,
    GatewayListener,
    HeaderEdits,
    ListenerFailure,
    Match,
    Mirror,
    PathMatch,
    PathRewrite,
    Policy,
    Redirect,
    Retry,
    Rewrite,
    Route,
    Timeouts,
    ValueMatch,
    WeightedBackend,
)
from mesh.control.translate.backends import resolve_service
from mesh.control.translate.backendtls import PolicyIndex, PolicyResult, policy_backend
from mesh.control.translate.conditions import (
    ACCEPTED,
    RESOLVED_REFS,
    allocate,
    condition,
    granted,
    route_hosts,
)
from mesh.control.translate.gateway_listeners import (
    HTTPROUTE_KIND,
    GatewayListenerState,
    config_listeners,
    evaluate_listeners,
    gateway_conditions,
    pinned_address,
)
from mesh.objects import (
    GATEWAY_GROUP,
    BackendObjectReference,
    Gateway,
    GatewayClass,
    GatewayClassStatus,
    GatewayStatus,
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRoute,
    HTTPRouteRule,
    Namespace,
    ReferenceGrant,
    RouteParentStatus,
    RouteStatus,
)

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

CONTROLLER = "mesh.dev/gateway"
# GEP-1731 has no field for it: a route opts in to retrying POST and the like by annotation.
RETRY_NON_IDEMPOTENT = "mesh.dev/retry-non-idempotent"


@dataclass
class GatewayApiResult:
    listeners: list[GatewayListener] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    backends: dict[str, GatewayBackend] = field(default_factory=dict)
    classes: dict[str, GatewayClassStatus] = field(default_factory=dict)
    gateways: dict[tuple[str, str], GatewayStatus] = field(default_factory=dict)
    routes_status: dict[tuple[str, str], RouteStatus] = field(default_factory=dict)
    policies: PolicyIndex | None = None  # BackendTLSPolicies, with the Gateways that use them
    using: list[PolicyResult] = field(default_factory=list)  # of the route being translated


def _age(obj: Gateway | HTTPRoute) -> tuple[str, str, str]:
    return (obj.metadata.creation_timestamp or "~", obj.namespace, obj.name)


def translate_gateway_api(
    snapshot: Snapshot,
    *,
    gateway_cidr: str = "127.11.0.0/16",
    privileged: bool = False,
    runtime: Mapping[str, ListenerFailure] | None = None,
) -> GatewayApiResult:
    """``runtime``: listeners the gateway reported it could not open (status only: the
    config keeps them, so the gateway keeps trying)."""
    out = GatewayApiResult(policies=PolicyIndex(snapshot))
    grants = [g for g in snapshot.list(ReferenceGrant.KIND) if isinstance(g, ReferenceGrant)]
    mine = set()
    for gc in snapshot.list(GatewayClass.KIND):
        if isinstance(gc, GatewayClass) and gc.spec.controller_name == CONTROLLER:
            mine.add(gc.name)
            gen = gc.metadata.generation
            out.classes[gc.name] = GatewayClassStatus(
                conditions=(condition(ACCEPTED, True, "Accepted", generation=gen),)
            )
    gateways = sorted(
        (
            g
            for g in snapshot.list(Gateway.KIND)
            if isinstance(g, Gateway) and g.spec.gateway_class_name in mine
        ),
        key=_age,
    )
    pinned = {g.key: pinned_address(g) for g in gateways}
    taken = {a for a in pinned.values() if isinstance(a, str)}
    auto = allocate(
        [f"{g.namespace}/{g.name}" for g in gateways if pinned[g.key] is None], gateway_cidr, taken
    )
    listeners: dict[tuple[str, str], list[GatewayListenerState]] = {}
    for gw in gateways:
        address = pinned[gw.key]
        if address is None:
            address = auto.get(f"{gw.namespace}/{gw.name}")
        lis = evaluate_listeners(snapshot, gw, grants, privileged)
        listeners[(gw.namespace, gw.name)] = lis
        if isinstance(address, str):
            out.listeners.extend(config_listeners(gw, address, lis))
    namespaces = {n.name: n for n in snapshot.list(Namespace.KIND) if isinstance(n, Namespace)}
    routes = sorted(
        (r for r in snapshot.list(HTTPRoute.KIND) if isinstance(r, HTTPRoute)), key=_age
    )
    for rank, route in enumerate(routes):
        _attach(snapshot, route, rank, listeners, namespaces, grants, out)
    for gw in gateways:
        address = pinned[gw.key] or auto.get(f"{gw.namespace}/{gw.name}")
        out.gateways[(gw.namespace, gw.name)] = gateway_conditions(
            gw, address, listeners[(gw.namespace, gw.name)], runtime
        )
    return out


def _allowed(lis: GatewayListenerState, route: HTTPRoute, namespaces: dict[str, Namespace]) -> bool:
    ns = lis.spec.allowed_routes.namespaces
    if ns.from_ == "All":
        return True
    if ns.from_ == "Same":
        return route.namespace == lis.gateway.namespace
    labels = namespaces[route.namespace].metadata.labels if route.namespace in namespaces else {}
    return ns.selector.matches(labels) if ns.selector else True


def _attach(
    snapshot: Snapshot,
    route: HTTPRoute,
    rank: int,
    listeners: dict[tuple[str, str], list[GatewayListenerState]],
    namespaces: dict[str, Namespace],
    grants: list[ReferenceGrant],
    out: GatewayApiResult,
) -> None:
    gen = route.metadata.generation
    parents: list[RouteParentStatus] = []
    rules = None
    out.using = []
    for ref in route.spec.parent_refs:
        if ref.group != GATEWAY_GROUP or ref.kind != "Gateway":
            continue
        candidates = listeners.get((ref.namespace or route.namespace, ref.name))
        if candidates is None:
            continue  # not a Gateway of ours: its controller writes the status
        picked = [
            lis
            for lis in candidates
            if (ref.section_name is None or lis.spec.name == ref.section_name)
            and (ref.port is None or lis.spec.port == ref.port)
        ]
        hosts: dict[str, tuple[str, ...]] = {}
        reason = "NoMatchingParent" if not picked else "NotAllowedByListeners"
        for lis in picked:
            if (
                not lis.valid
                or not _allowed(lis, route, namespaces)
                or HTTPROUTE_KIND not in lis.kinds
            ):
                continue
            reason = "NoMatchingListenerHostname"
            found = route_hosts(lis.spec.hostname, route.spec.hostnames)
            if found is None:
                continue
            lis.attached += 1
            # Listeners sharing a port: "any host" on one of them covers every host.
            prev = hosts.get(lis.config_name)
            hosts[lis.config_name] = () if (prev == () or found == ()) else (*(prev or ()), *found)
        if rules is None:
            rules = _rules(snapshot, route, rank, grants, out)
        if hosts:
            accepted = condition(ACCEPTED, True, "Accepted", "", gen)
            assert out.policies is not None
            for used in out.using:  # the policy's ancestor: this Gateway
                out.policies.used_by(used, (ref.namespace or route.namespace, ref.name))
            for config_name, names in hosts.items():
                out.routes.extend(
                    r.model_copy(update={"listeners": (config_name,), "hosts": names})
                    for r in rules[0]
                )
        else:
            accepted = condition(ACCEPTED, False, reason, "", gen)
        refs_ok, refs_reason, refs_message = rules[1]
        parents.append(
            RouteParentStatus(
                parent_ref=ref,
                controller_name=CONTROLLER,
                conditions=(
                    accepted,
                    condition(RESOLVED_REFS, refs_ok, refs_reason, refs_message, gen),
                ),
            )
        )
    if parents:
        out.routes_status[(route.namespace, route.name)] = RouteStatus(parents=tuple(parents))


def _rules(
    snapshot: Snapshot,
    route: HTTPRoute,
    rank: int,
    grants: list[ReferenceGrant],
    out: GatewayApiResult,
) -> tuple[list[Route], tuple[bool, str, str]]:
    problems: list[tuple[str, str]] = []
    built = []
    for index, rule in enumerate(route.spec.rules):
        backends = tuple(
            WeightedBackend(
                backend=_backend(snapshot, route, ref, grants, problems, out), weight=ref.weight
            )
            for ref in rule.backend_refs
        )
        policy = _policy(snapshot, route, rule, grants, problems, out)
        if any(f.type == "ExtensionRef" for f in rule.filters):
            problems.append(("UnsupportedValue", "ExtensionRef filters are not supported"))
            backends = (WeightedBackend(backend=None),)
        built.append(
            Route(
                name=f"httproute/{route.namespace}/{route.name}/{rule.name or index}",
                listeners=(),
                matches=tuple(_match(m) for m in rule.matches),
                order=rank * 4096 + index,
                policy=policy,
                backends=backends,
                timeouts=Timeouts(
                    request=(rule.timeouts.request or None) if rule.timeouts else None,
                    backend_request=(rule.timeouts.backend_request or None)
                    if rule.timeouts
                    else None,
                ),
                retry=Retry(
                    codes=rule.retry.codes,
                    attempts=rule.retry.attempts if rule.retry.attempts is not None else 1,
                    backoff=rule.retry.backoff or 0.0,
                    non_idempotent=route.metadata.annotations.get(RETRY_NON_IDEMPOTENT) == "true",
                )
                if rule.retry
                else None,
            )
        )
    if problems:
        reason, message = problems[0]
        return built, (False, reason, message)
    return built, (True, "ResolvedRefs", "")


def _match(m: object) -> Match:
    from mesh.objects import HTTPRouteMatch

    assert isinstance(m, HTTPRouteMatch)
    kind = {"Exact": "Exact", "PathPrefix": "Prefix", "RegularExpression": "RegularExpression"}
    return Match(
        path=PathMatch.model_validate({"kind": kind[m.path.type], "value": m.path.value}),
        headers=tuple(ValueMatch(name=h.name, kind=h.type, value=h.value) for h in m.headers),
        query=tuple(ValueMatch(name=q.name, kind=q.type, value=q.value) for q in m.query_params),
        method=m.method,
    )


def _backend(
    snapshot: Snapshot,
    route: HTTPRoute,
    ref: BackendObjectReference,
    grants: list[ReferenceGrant],
    problems: list[tuple[str, str]],
    out: GatewayApiResult,
) -> str | None:
    ns = ref.namespace or route.namespace
    if ref.group != "" or ref.kind != "Service":
        problems.append(("InvalidKind", f"{ref.group}/{ref.kind} is not a Service"))
        return None
    if ns != route.namespace and not granted(
        grants, from_kind="HTTPRoute", from_namespace=route.namespace, to_group="",
        to_kind="Service", to_namespace=ns, to_name=ref.name,
    ):  # fmt: skip
        problems.append(("RefNotPermitted", f"no ReferenceGrant in {ns} allows Service {ref.name}"))
        return None
    if ref.port is None:
        problems.append(("BackendNotFound", f"Service {ns}/{ref.name}: port is required"))
        return None
    resolved = resolve_service(snapshot, ns, ref.name, ref.port)
    if resolved.backend is None:
        problems.append(("BackendNotFound", resolved.error or ""))
        return None
    backend: GatewayBackend | None = resolved.backend
    policy = out.policies.lookup(ns, ref.name, resolved.port_name) if out.policies else None
    if policy is not None:
        out.using.append(policy)
        backend = policy_backend(policy, resolved.backend)
        if backend is None:  # the policy is not accepted: 500, never plain text instead
            return None
    assert backend is not None
    out.backends[backend.name] = backend
    return backend.name


def _edits(f: HTTPHeaderFilter | None) -> HeaderEdits:
    if f is None:
        return HeaderEdits()
    return HeaderEdits(
        set=tuple((h.name, h.value) for h in f.set),
        add=tuple((h.name, h.value) for h in f.add),
        remove=f.remove,
    )


def _path(p: HTTPPathModifier | None) -> PathRewrite | None:
    if p is None:
        return None
    if p.type == "ReplaceFullPath":
        return PathRewrite(kind="Full", value=p.replace_full_path or "/")
    return PathRewrite(kind="Prefix", value=p.replace_prefix_match or "/")


def _policy(
    snapshot: Snapshot,
    route: HTTPRoute,
    rule: HTTPRouteRule,
    grants: list[ReferenceGrant],
    problems: list[tuple[str, str]],
    out: GatewayApiResult,
) -> Policy:
    fields: dict[str, object] = {}
    mirrors = []
    for f in rule.filters:
        if f.type == "RequestHeaderModifier":
            fields["request_headers"] = _edits(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            fields["response_headers"] = _edits(f.response_header_modifier)
        elif f.type == "RequestRedirect" and f.request_redirect is not None:
            r = f.request_redirect
            fields["redirect"] = Redirect(
                scheme=r.scheme, hostname=r.hostname, port=r.port, path=_path(r.path),
                status=r.status_code,
            )  # fmt: skip
        elif f.type == "URLRewrite" and f.url_rewrite is not None:
            fields["rewrite"] = Rewrite(
                hostname=f.url_rewrite.hostname, path=_path(f.url_rewrite.path)
            )
        elif f.type == "RequestMirror" and f.request_mirror is not None:
            name = _backend(snapshot, route, f.request_mirror.backend_ref, grants, problems, out)
            if name is not None:
                mirrors.append(Mirror(backend=name, share=f.request_mirror.share))
    return Policy.model_validate({**fields, "mirrors": tuple(mirrors)})
