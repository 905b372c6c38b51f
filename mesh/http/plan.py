"""The whole routing decision for one request: ``plan(routes, head, now, rand) -> Forward | Respond``.

Pure: no I/O; the clock (``now``, seconds) and randomness (``rand()``, floats in [0, 1)) are
passed in, and the only state is the optional ``PlanState`` (rate-limit buckets) the caller
owns. ``routes`` is ``compile_routes(GatewayConfig)``, built once per config.

Input, ``Head``: the listener that accepted the request, method, request target (origin form
``/path?query``; absolute form is reduced to it), Host, the headers as a mapping of lower-case
names to values, the scheme the client used, the client address and the Content-Length.

Output, one of two small immutable values (NamedTuples: a frozen dataclass spends about a
third of a microsecond per field in ``__init__``, and these are built on every request):

- ``Respond(status, reason, headers, body)``: the gateway answers itself. ``reason`` goes into
  the ``x-mesh-reason`` header and the metrics: ``no-route`` (404), ``denied`` (403 source
  range, 401 basic auth), ``rate-limited`` (503, ingress-nginx's limit-req status),
  ``body-too-large`` (413, when Content-Length already says so), ``redirect`` (3xx with
  Location), ``cors-preflight`` (204), ``invalid-backend`` (500, a backend reference that did
  not resolve, as the Gateway API asks), ``no-healthy-upstream`` (503, no endpoints).
- ``Forward``: send it upstream. ``backend`` (name) with its ``endpoints`` as (ip, port)
  tuples and ``protocol`` (http/https); ``pinned``: the endpoint a session-affinity cookie
  names; ``target`` and ``host`` as rewritten (host None: keep the client's); ``mirrors``:
  (backend, endpoints) to copy the request to, already sampled; ``cors``: response headers to
  add. The route's settings are read through properties: ``request_headers`` and
  ``response_headers`` (edits as set/add/remove tuples), ``timeouts`` (seconds, floats),
  ``retry`` (for ``retry.decide``), ``affinity`` (set this cookie for the endpoint picked,
  when nothing was pinned), ``body_limit`` (bytes, enforce while streaming),
  ``external_auth`` (URL to ask first), ``connection_limit`` (per client address).

Order of the checks, as ingress-nginx runs its phases: route lookup, source ranges, HTTPS
redirect, CORS preflight, basic auth, rate limit, body size, redirects (app-root, redirect
filters), backend choice (canary, weight), rewrite, headers, mirrors.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from mesh.config.gateway import Affinity, HeaderEdits, Redirect, Retry, Route, Timeouts
from mesh.http.filters import (
    TokenBuckets,
    basic_challenge,
    check_basic,
    cors_headers,
    redirect_location,
    rewrite_path,
)
from mesh.http.normpath import normalize_path
from mesh.http.routes import PREFIX, CompiledRoutes, Entry, find, normalize_host
from mesh.http.split import choose, parse_cookies, pinned_endpoint

Endpoint = tuple[str, int]
EMPTY: Mapping[str, str] = MappingProxyType({})


class Head(NamedTuple):
    listener: str
    method: str
    target: str
    host: str
    headers: Mapping[str, str] = EMPTY
    scheme: str = "http"
    client: str = ""
    content_length: int | None = None


class WireHeaders(Mapping[str, str]):
    """The header fields as a codec hands them over (lower-case bytes names, bytes values),
    read as the Mapping the planner wants without converting them: most routes look at no
    header at all, so a lookup scans the fields only when it happens. The first field of a
    name wins; values decode as latin-1 (RFC 9110 section 5.5)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        self._fields = fields

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        name = key.encode("latin-1")
        for k, v in self._fields:
            if k == name:
                return v.decode("latin-1")
        return default

    def __getitem__(self, key: str) -> str:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1") for k, _ in self._fields))

    def __len__(self) -> int:
        return len({k for k, _ in self._fields})


def head_from_wire(
    listener: str,
    method: bytes,
    target: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
    *,
    scheme: str = "http",
    client: str = "",
    content_length: int | None = None,
) -> Head:
    """A Head from what an HTTP/1.1 codec hands over, without copying the header fields."""
    fields = WireHeaders(headers)
    return Head(
        listener,
        method.decode("latin-1"),
        target.decode("latin-1"),
        fields.get("host") or "",
        fields,
        scheme,
        client,
        content_length,
    )


class Respond(NamedTuple):
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    route: str = ""


class Forward(NamedTuple):
    """Send the request upstream. Per-route settings stay on ``route`` (built once per config);
    the properties below read them."""

    route: Route
    backend: str
    protocol: str
    endpoints: tuple[Endpoint, ...]
    target: str
    host: str | None = None
    pinned: Endpoint | None = None
    mirrors: tuple[tuple[str, tuple[Endpoint, ...]], ...] = ()
    cors: tuple[tuple[str, str], ...] = ()  # response headers for this request's Origin

    @property
    def request_headers(self) -> HeaderEdits:
        return self.route.policy.request_headers

    @property
    def response_headers(self) -> HeaderEdits:
        return self.route.policy.response_headers

    @property
    def timeouts(self) -> Timeouts:
        return self.route.timeouts

    @property
    def retry(self) -> Retry | None:
        return self.route.retry

    @property
    def affinity(self) -> Affinity | None:
        """Set this cookie for the endpoint picked (only when nothing was pinned)."""
        return self.route.affinity if self.pinned is None else None

    @property
    def body_limit(self) -> int | None:
        return self.route.policy.body_limit

    @property
    def external_auth(self) -> str | None:
        return self.route.policy.external_auth

    @property
    def connection_limit(self) -> int | None:
        return self.route.policy.connection_limit


NO_ROUTE = Respond(404, "no-route", (), b"404 no-route\n")


@dataclass
class PlanState:
    """What the planner remembers between requests: rate-limit buckets (per route, client)."""

    buckets: TokenBuckets = field(default_factory=TokenBuckets)


def _respond(
    status: int, reason: str, route: str = "", headers: tuple[tuple[str, str], ...] = ()
) -> Respond:
    return Respond(status, reason, headers, f"{status} {reason}\n".encode(), route)


def plan(
    routes: CompiledRoutes,
    head: Head,
    now: float,
    rand: Callable[[], float],
    state: PlanState | None = None,
) -> Forward | Respond:
    table = routes.tables.get(head.listener)
    if table is None:
        return NO_ROUTE
    target = head.target
    if not target.startswith("/"):
        target = _origin_form(target)
    path, _, query = target.partition("?")
    normal = normalize_path(path)
    if target == "*":
        # ``OPTIONS *`` (asterisk form, RFC 9112 section 3.2.4): routed as the host's root,
        # forwarded as asked (the server as a whole, not its root resource).
        path = "/"
    elif normal is not path:
        # Decide on, and forward, the normalised path (mesh/http/normpath.py says why).
        path = normal
        target = f"{path}?{query}" if query else path
    host = normalize_host(head.host)
    entry = find(table, host, path, head.method, head.headers, query)
    if entry is None:
        return NO_ROUTE
    route = entry.route
    fast = routes.fast[entry.route_index]
    if fast.gates:
        answer = _gates(routes, entry, head, now, state, host, path, query)
        if answer is not None:
            return answer
    cors: tuple[tuple[str, str], ...] = ()
    if route.policy.cors is not None:
        cors = cors_headers(route.policy.cors, head.headers.get("origin"))
    if not fast.tail:
        if fast.single is not None:
            backend, protocol, endpoints = fast.single
            return Forward(route, backend, protocol, endpoints, target, cors=cors)
        if fast.split is not None:
            cumulative, picks = fast.split
            i = bisect_right(cumulative, rand() * cumulative[-1])
            backend, protocol, endpoints = picks[min(i, len(picks) - 1)]
            return Forward(route, backend, protocol, endpoints, target, cors=cors)
    return _choose(routes, entry, head, rand, path, query, target, cors)


def _gates(
    routes: CompiledRoutes,
    entry: Entry,
    head: Head,
    now: float,
    state: PlanState | None,
    host: str,
    path: str,
    query: str,
) -> Respond | None:
    """The checks that may answer before a backend is chosen, in ingress-nginx's order."""
    route = entry.route
    compiled = routes.policies[entry.route_index]
    policy = route.policy
    name = route.name
    if not compiled.source_permitted(head.client):
        return _respond(403, "denied", name)
    if policy.https_redirect is not None and head.scheme == "http":
        to = Redirect(scheme="https", status=policy.https_redirect)
        return _redirect(to, head, host, path, query, "", routes, name)
    if (
        policy.cors is not None
        and head.method == "OPTIONS"
        and "access-control-request-method" in head.headers
    ):
        cors = cors_headers(policy.cors, head.headers.get("origin"))
        return Respond(204, "cors-preflight", cors, route=name)
    if policy.basic_auth is not None and not check_basic(
        compiled.users, head.headers.get("authorization")
    ):
        return _respond(401, "denied", name, headers=basic_challenge(policy.basic_auth))
    limit = policy.rate_limit
    if (
        limit is not None
        and state is not None
        and not state.buckets.take((entry.route_index, head.client), now, limit.rps, limit.burst)
    ):
        return _respond(503, "rate-limited", name)
    if (
        policy.body_limit is not None
        and head.content_length is not None
        and head.content_length > policy.body_limit
    ):
        return _respond(413, "body-too-large", name)
    if policy.app_root is not None and path == "/":
        to = Redirect(location=policy.app_root, status=302)
        return _redirect(to, head, host, path, query, "", routes, name)
    if policy.redirect is not None:
        prefix = entry.path if entry.path_kind == PREFIX else ""
        regex = compiled.rewrite_regex
        return _redirect(policy.redirect, head, host, path, query, prefix, routes, name, regex)
    return None


def _choose(
    routes: CompiledRoutes,
    entry: Entry,
    head: Head,
    rand: Callable[[], float],
    path: str,
    query: str,
    target: str,
    cors: tuple[tuple[str, str], ...],
) -> Forward | Respond:
    route = entry.route
    policy = route.policy
    name = route.name
    cookies = (
        parse_cookies(head.headers.get("cookie")) if (route.canaries or route.affinity) else {}
    )
    r = rand() if (route.canaries or len(route.backends) > 1) else 0.0
    chosen = choose(route.backends, route.canaries, head.headers, cookies, r)
    if chosen is None or chosen.backend is None:
        return _respond(500, "invalid-backend", name)
    found = routes.backends.get(chosen.backend)
    if found is None:
        return _respond(500, "invalid-backend", name)
    protocol, endpoints = found
    if not endpoints:
        return _respond(503, "no-healthy-upstream", name)
    new_host = None
    rewrite = policy.rewrite
    if rewrite is not None:
        new_host = rewrite.hostname
        if rewrite.path is not None:
            prefix = entry.path if entry.path_kind == PREFIX else ""
            regex = routes.policies[entry.route_index].rewrite_regex
            new_path = rewrite_path(rewrite.path, path, prefix, regex)
            target = f"{new_path}?{query}" if query else new_path
    pinned = None
    if route.affinity is not None:
        pinned = pinned_endpoint(route.affinity, cookies, endpoints)
    mirrors = []
    for m in policy.mirrors:
        eps = routes.backends.get(m.backend)
        if eps and eps[1] and (m.share >= 1.0 or rand() < m.share):
            mirrors.append((m.backend, eps[1]))
    return Forward(
        route, chosen.backend, protocol, endpoints, target, new_host, pinned, tuple(mirrors), cors
    )


def _origin_form(target: str) -> str:
    # absolute-form "http://host/path?q" (RFC 9112 section 3.2.2): keep "/path?q"
    if target == "*":
        return target
    scheme_end = target.find("://")
    if scheme_end < 0:
        return "/"
    slash = target.find("/", scheme_end + 3)
    return target[slash:] if slash >= 0 else "/"


def _redirect(
    redirect: Redirect,
    head: Head,
    host: str,
    path: str,
    query: str,
    prefix: str,
    routes: CompiledRoutes,
    name: str,
    regex: re.Pattern[str] | None = None,
) -> Respond:
    listener = routes.listeners.get(head.listener)
    port = listener.port if listener is not None else None
    location = redirect_location(
        redirect,
        scheme=head.scheme,
        host=host,
        listener_port=port,
        path=path,
        query=query,
        prefix=prefix,
        regex=regex,
        https_port=routes.https_ports.get(head.listener),
    )
    return Respond(redirect.status, "redirect", (("location", location),), route=name)
