"""The compiled route model: host lookup, then the first matching entry of a sorted list.

Theory of operation. ``compile_routes`` runs once per GatewayConfig. For every listener it
builds a host table: exact names in a dict, ``*.`` wildcards in a dict keyed by their suffix
(".example.com"), and the routes with no hostname. Each slot holds the entries (one per route
match) sorted by precedence, with regular expressions compiled. A request then costs one or
two dict lookups and a walk down a short list.

Host choice is by specificity and final: exact, then the longest matching wildcard, then the
routes without hostname; a request whose host found a slot never falls through to a less
specific one (nginx picks one server block; Envoy one virtual host).

Precedence inside a slot, one key for both front ends (Gateway API HTTPRoute "matches"
precedence; Ingress "longest match wins, Exact over Prefix"):

1. an Exact path before any other;
2. then the longer path value (Prefix and RegularExpression together; at equal length a
   Prefix first: a regex's precedence is implementation-specific in both specifications);
3. a match with a method before one without;
4. more header matches first, then more query parameter matches;
5. then the route's ``order`` (the translator's tie-break: oldest object, then namespace/name,
   then rule index), then the match's position in its rule.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qsl

from mesh.config.gateway import GatewayConfig, GatewayListener, Match, Route, ValueMatch
from mesh.http.filters import CompiledPolicy

EXACT, PREFIX, REGEX = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One match of one route, ready to test."""

    route: Route
    match_index: int
    path_kind: int
    path: str  # Exact: the path; Prefix: without its trailing slash ("" for "/")
    regex: re.Pattern[str] | None
    method: str | None
    headers: tuple[tuple[str, re.Pattern[str] | str], ...]  # lower-case names
    query: tuple[tuple[str, re.Pattern[str] | str], ...]
    # Index of this route in GatewayConfig.routes: the planner's per-route state key.
    route_index: int

    def matches(self, path: str, method: str, headers: Mapping[str, str], query: str) -> bool:
        kind = self.path_kind
        if kind == EXACT:
            if path != self.path:
                return False
        elif kind == PREFIX:
            p = self.path
            if p and not (path == p or (path.startswith(p) and path[len(p)] == "/")):
                return False
        elif self.regex is not None and self.regex.match(path) is None:
            return False
        if self.method is not None and method != self.method:
            return False
        for name, want in self.headers:
            got = headers.get(name)
            if got is None or not _value_ok(want, got):
                return False
        if self.query:
            params = _first_values(query)
            for name, want in self.query:
                got = params.get(name)
                if got is None or not _value_ok(want, got):
                    return False
        return True


def _value_ok(want: re.Pattern[str] | str, got: str) -> bool:
    if isinstance(want, str):
        return got == want
    return want.fullmatch(got) is not None


def _first_values(query: str) -> dict[str, str]:
    # Gateway API: with repeated parameters only the first value counts.
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, v)
    return out


@dataclass(slots=True)
class HostTable:
    wildcard_many: bool
    exact: dict[str, tuple[Entry, ...]] = field(default_factory=dict)
    wild: dict[str, tuple[Entry, ...]] = field(default_factory=dict)  # ".example.com" ->
    any: tuple[Entry, ...] = ()

    def lookup(self, host: str) -> tuple[Entry, ...]:
        """The entries for ``host`` (lower case, no port, no trailing dot)."""
        found = self.exact.get(host)
        if found is not None:
            return found
        if self.wild:
            dot = host.find(".")
            while dot > 0:
                found = self.wild.get(host[dot:])
                if found is not None:
                    return found
                if not self.wildcard_many:
                    break  # Ingress: "*.example.com" covers exactly one label
                dot = host.find(".", dot + 1)
        return self.any


@dataclass(frozen=True, slots=True)
class CompiledRoutes:
    config: GatewayConfig
    listeners: dict[str, GatewayListener]
    tables: dict[str, HostTable]
    backends: dict[str, tuple[str, tuple[tuple[str, int], ...]]]  # name -> (protocol, eps)
    policies: tuple[CompiledPolicy, ...]  # by route index
    fast: tuple[FastPath, ...]  # by route index
    # listener -> the port of the HTTPS listener beside it (same address), where a redirect
    # to https without a port of its own goes; a listener not listed: the well-known 443.
    https_ports: dict[str, int] = field(default_factory=dict)


class FastPath(NamedTuple):
    """What lets the planner skip work for a plain route (most routes are plain)."""

    gates: bool  # any check before the backend choice (ranges, auth, limits, redirects...)
    single: tuple[str, str, tuple[tuple[str, int], ...]] | None  # one backend, no canary
    tail: bool  # a rewrite, mirrors or affinity to apply after the choice
    # A weighted split of resolved backends with endpoints, no canary: (cumulative weights,
    # (name, protocol, endpoints) each), so a pick is one bisect.
    split: tuple[tuple[int, ...], tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...]] | None


def _fast(route: Route, backends: dict[str, tuple[str, tuple[tuple[str, int], ...]]]) -> FastPath:
    p = route.policy
    gates = bool(
        p.allow_sources
        or p.deny_sources
        or p.https_redirect is not None
        or p.cors is not None
        or p.basic_auth is not None
        or p.rate_limit is not None
        or p.body_limit is not None
        or p.app_root is not None
        or p.redirect is not None
    )
    single = None
    if len(route.backends) == 1 and not route.canaries and route.backends[0].weight > 0:
        name = route.backends[0].backend
        found = backends.get(name) if name is not None else None
        if found is not None and found[1]:
            single = (name, found[0], found[1]) if name is not None else None
    tail = p.rewrite is not None or bool(p.mirrors) or route.affinity is not None
    split = None
    if len(route.backends) > 1 and not route.canaries:
        found_all = [
            (b.weight, b.backend, backends.get(b.backend))
            for b in route.backends
            if b.weight > 0 and b.backend is not None
        ]
        if len(found_all) == len([b for b in route.backends if b.weight > 0]) and all(
            f is not None and f[1] for _, _, f in found_all
        ):
            cumulative = tuple(itertools.accumulate(w for w, _, _ in found_all))
            picks = tuple((n, f[0], f[1]) for _, n, f in found_all if n is not None and f)
            split = (cumulative, picks) if cumulative else None
    return FastPath(gates, single, tail, split)


_HOSTS: dict[str, str] = {}


def normalize_host(host: str) -> str:
    """The Host header as route hostnames are written: lower case, no port, no final dot."""
    found = _HOSTS.get(host)
    if found is not None:
        return found
    if len(_HOSTS) >= 4096:  # bounded: a client inventing hosts cannot grow it
        _HOSTS.clear()
    _HOSTS[host] = found = _normalize_host(host)
    return found


def _normalize_host(host: str) -> str:
    if host.startswith("["):  # an IPv6 literal keeps its brackets' content
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    colon = host.rfind(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".").lower()


def https_ports(
    listeners: Iterable[GatewayListener], own_ports: Mapping[str, int] | None = None
) -> dict[str, int]:
    """For each listener, the port of an HTTPS listener on its address (443 if one is there,
    else the lowest), when not 443: an https redirect to the well-known port would be a dead
    end on this gateway (``mesh up`` serves TLS on 8443). ``own_ports``: where the listeners
    without a port in the config (the component's own Ingress ones) are bound."""
    own = own_ports or {}
    tls: dict[str | None, set[int]] = {}
    for lis in listeners:
        port = lis.port if lis.port is not None else own.get(lis.name)
        if lis.protocol == "HTTPS" and port:
            tls.setdefault(lis.address, set()).add(port)
    out = {}
    for lis in listeners:
        ports = tls.get(lis.address)
        if ports and 443 not in ports:
            out[lis.name] = min(ports)
    return out


def compile_routes(
    config: GatewayConfig, own_ports: Mapping[str, int] | None = None
) -> CompiledRoutes:
    tables: dict[str, HostTable] = {
        lis.name: HostTable(wildcard_many=lis.wildcard == "any-labels") for lis in config.listeners
    }
    slots: dict[tuple[str, str], list[tuple[tuple[object, ...], Entry]]] = {}
    for index, route in enumerate(config.routes):
        entries = [
            (_sort_key(route, i, m), _entry(route, index, i, m))
            for i, m in enumerate(route.matches)
        ]
        for lis in route.listeners:
            if lis not in tables:
                continue
            for host in route.hosts or ("",):
                slots.setdefault((lis, host.lower()), []).extend(entries)
    for (lis, host), items in slots.items():
        items.sort(key=lambda item: item[0])
        ordered = tuple(e for _, e in items)
        table = tables[lis]
        if host == "":
            table.any = ordered
        elif host.startswith("*."):
            table.wild[host[1:]] = ordered
        else:
            table.exact[host] = ordered
    backends: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {
        b.name: (b.protocol, tuple((e.ip, e.port) for e in b.endpoints)) for b in config.backends
    }
    return CompiledRoutes(
        config=config,
        listeners={lis.name: lis for lis in config.listeners},
        tables=tables,
        backends=backends,
        policies=tuple(CompiledPolicy.build(r.policy) for r in config.routes),
        fast=tuple(_fast(r, backends) for r in config.routes),
        https_ports=https_ports(config.listeners, own_ports),
    )


def _sort_key(route: Route, match_index: int, m: Match) -> tuple[object, ...]:
    kind = {"Exact": EXACT, "Prefix": PREFIX, "RegularExpression": REGEX}[m.path.kind]
    value = m.path.value
    if kind == PREFIX:
        value = value.rstrip("/") or "/"
    return (
        0 if kind == EXACT else 1,
        -len(value),
        kind,
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query),
        route.order,
        match_index,
    )


def _entry(route: Route, route_index: int, match_index: int, m: Match) -> Entry:
    kind = {"Exact": EXACT, "Prefix": PREFIX, "RegularExpression": REGEX}[m.path.kind]
    regex = None
    path = m.path.value
    if kind == REGEX:
        regex = re.compile(path, re.IGNORECASE if m.path.ignore_case else 0)
    elif kind == PREFIX:
        path = path.rstrip("/")
    return Entry(
        route=route,
        match_index=match_index,
        path_kind=kind,
        path=path,
        regex=regex,
        method=m.method,
        headers=_values(m.headers, lower=True),
        query=_values(m.query, lower=False),
        route_index=route_index,
    )


def _values(
    matches: tuple[ValueMatch, ...], *, lower: bool
) -> tuple[tuple[str, re.Pattern[str] | str], ...]:
    out: list[tuple[str, re.Pattern[str] | str]] = []
    seen: set[str] = set()
    for vm in matches:
        name = vm.name.lower() if lower else vm.name
        if name in seen:
            continue  # Gateway API: only the first match of a name counts
        seen.add(name)
        want: re.Pattern[str] | str = vm.value
        if vm.kind == "RegularExpression":
            want = re.compile(vm.value)
        out.append((name, want))
    return tuple(out)


def find(
    table: HostTable, host: str, path: str, method: str, headers: Mapping[str, str], query: str
) -> Entry | None:
    """The first entry (in precedence order) of the host's slot that matches the request."""
    for entry in table.lookup(host):
        if entry.matches(path, method, headers, query):
            return entry
    return None
