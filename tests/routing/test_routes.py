"""Route matching and precedence, from the Ingress and Gateway API specifications."""

from __future__ import annotations

import pytest

from mesh.config.gateway import Match, PathMatch, ValueMatch
from tests.routing.tables import compiled, head, outcome, route, run

# The examples table of the Kubernetes Ingress documentation ("Examples", under "Path
# types"): (paths as (pathType, path), request path, the path that serves it or None).
# ImplementationSpecific is Prefix here.
INGRESS_PATHS = [
    ([("Prefix", "/")], "/anything/at/all", "Prefix /"),
    ([("Exact", "/foo")], "/foo", "Exact /foo"),
    ([("Exact", "/foo")], "/bar", None),
    ([("Exact", "/foo")], "/foo/", None),
    ([("Exact", "/foo/")], "/foo", None),
    ([("Prefix", "/foo")], "/foo", "Prefix /foo"),
    ([("Prefix", "/foo")], "/foo/", "Prefix /foo"),
    ([("Prefix", "/foo/")], "/foo", "Prefix /foo/"),
    ([("Prefix", "/foo/")], "/foo/", "Prefix /foo/"),
    ([("Prefix", "/aaa/bb")], "/aaa/bbb", None),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb", "Prefix /aaa/bbb"),
    ([("Prefix", "/aaa/bbb/")], "/aaa/bbb", "Prefix /aaa/bbb/"),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb/", "Prefix /aaa/bbb"),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", "Prefix /aaa/bbb"),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", None),
    ([("Prefix", "/"), ("Prefix", "/aaa")], "/aaa/ccc", "Prefix /aaa"),
    ([("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], "/aaa/bbb", "Prefix /aaa/bbb"),
    ([("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], "/ccc", "Prefix /"),
    ([("Prefix", "/aaa")], "/ccc", None),
    ([("Prefix", "/foo"), ("Exact", "/foo")], "/foo", "Exact /foo"),
    ([("Exact", "/foo"), ("Prefix", "/foo")], "/foo/x", "Prefix /foo"),
    # the query string takes no part in path matching
    ([("Exact", "/foo")], "/foo?x=/bar", "Exact /foo"),
]


@pytest.mark.parametrize(("paths", "request_path", "want"), INGRESS_PATHS)
def test_ingress_path_types(
    paths: list[tuple[str, str]], request_path: str, want: str | None
) -> None:
    routes = compiled(route(f"{k} {p}", p, k, to="svc") for k, p in paths)
    got = outcome(run(routes, head(request_path)))
    assert got == (want or "404 no-route")


def m(path: str = "/", kind: str = "Prefix", *, method: str | None = None, headers: int = 0,
      query: int = 0) -> Match:  # fmt: skip
    return Match(
        path=PathMatch.model_validate({"kind": kind, "value": path}),
        method=method,
        headers=tuple(ValueMatch(name=f"h{i}", value="1") for i in range(headers)),
        query=tuple(ValueMatch(name=f"q{i}", value="1") for i in range(query)),
    )


ALL = {"h0": "1", "h1": "1", "h2": "1"}
QUERY = "?q0=1&q1=1&q2=1"

# Gateway API HTTPRouteRule precedence: Exact path, longest prefix, method, most headers,
# most query params, then the oldest route, then namespace/name, then rule order. The
# translator folds age/name/rule into ``order``.
PRECEDENCE = [
    ("exact before prefix", [("a", m("/foo"), 0), ("b", m("/foo", "Exact"), 1)], "/foo", "GET", "b"),
    ("longest prefix", [("a", m("/foo"), 0), ("b", m("/foo/bar"), 1)], "/foo/bar/x", "GET", "b"),
    ("prefix by element", [("a", m("/"), 0), ("b", m("/v2"), 1)], "/v2example", "GET", "a"),
    ("prefix by element 2", [("a", m("/"), 0), ("b", m("/v2"), 1)], "/v2/", "GET", "b"),
    ("method", [("a", m("/"), 0), ("b", m("/", method="GET"), 1)], "/", "GET", "b"),
    ("method other", [("a", m("/"), 0), ("b", m("/", method="GET"), 1)], "/", "POST", "a"),
    ("path before method", [("a", m("/x"), 0), ("b", m("/", method="GET"), 1)], "/x", "GET", "a"),
    ("more headers", [("a", m(headers=1), 0), ("b", m(headers=2), 1)], "/", "GET", "b"),
    ("method before headers", [("a", m(headers=3), 0), ("b", m(method="GET"), 1)], "/", "GET", "b"),
    ("headers before query", [("a", m(query=3), 0), ("b", m(headers=1), 1)], "/" + QUERY, "GET", "b"),
    ("more query", [("a", m(query=1), 0), ("b", m(query=2), 1)], "/" + QUERY, "GET", "b"),
    ("tie: order", [("a", m("/x"), 5), ("b", m("/x"), 2)], "/x", "GET", "b"),
    ("regex after equal prefix", [("a", m("/abc", "RegularExpression"), 0), ("b", m("/abc"), 1)], "/abc", "GET", "b"),
    ("exact before a longer regex", [("a", m("/f.*o+$", "RegularExpression"), 0), ("b", m("/foo", "Exact"), 1)], "/foo", "GET", "b"),
    ("longer regex first", [("a", m("/"), 0), ("b", m("/ab.*", "RegularExpression"), 1)], "/abz", "GET", "b"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("routes_", "target", "method", "want"),
    [pytest.param(r, t, mm, w, id=i) for i, r, t, mm, w in PRECEDENCE],
)
def test_gateway_precedence(
    routes_: list[tuple[str, Match, int]], target: str, method: str, want: str
) -> None:
    routes = compiled(route(n, match=mt, order=o, to="svc") for n, mt, o in routes_)
    assert outcome(run(routes, head(target, method=method, headers=ALL))) == want


def test_header_and_query_matches() -> None:
    routes = compiled(
        [
            route("exact", match=Match(headers=(ValueMatch(name="Version", value="two"),))),
            route(
                "regex",
                match=Match(
                    headers=(ValueMatch(name="x-env", kind="RegularExpression", value="dev|qa"),)
                ),
            ),
            route("query", match=Match(query=(ValueMatch(name="Tier", value="gold"),))),
            route("fallback", "/"),
        ]
    )
    cases = [
        ({"version": "two"}, "/", "exact"),
        ({"version": "Two"}, "/", "fallback"),  # values are case-sensitive
        ({"x-env": "qa"}, "/", "regex"),
        ({"x-env": "qa2"}, "/", "fallback"),  # a regex matches the whole value
        ({}, "/?Tier=gold", "query"),
        ({}, "/?tier=gold", "fallback"),  # parameter names are case-sensitive
        ({}, "/?Tier=gold&Tier=silver", "query"),  # the first value counts
        ({}, "/?Tier=silver&Tier=gold", "fallback"),
    ]
    for headers, target, want in cases:
        assert outcome(run(routes, head(target, headers=headers))) == want, (headers, target)


HOSTS = [
    # (route hosts, request host, wildcard semantics, expected route)
    (["foo.com"], "foo.com", "any-labels", "r0"),
    (["foo.com"], "FOO.com:8080", "any-labels", "r0"),
    (["foo.com"], "foo.com.", "any-labels", "r0"),
    (["foo.com"], "bar.com", "any-labels", None),
    (["*.foo.com"], "bar.foo.com", "one-label", "r0"),
    (["*.foo.com"], "baz.bar.foo.com", "one-label", None),  # Ingress: exactly one label
    (["*.foo.com"], "baz.bar.foo.com", "any-labels", "r0"),  # Gateway API: one or more
    (["*.foo.com"], "foo.com", "any-labels", None),
    (["*.foo.com", "bar.foo.com"], "bar.foo.com", "one-label", "r1"),  # exact first
    (["*.foo.com", "*.bar.foo.com"], "a.bar.foo.com", "any-labels", "r1"),  # longest wildcard
    ([""], "anything.example", "one-label", "r0"),
    (["foo.com", ""], "foo.com", "one-label", "r0"),
    (["foo.com", ""], "other.com", "one-label", "r1"),
    (["foo.com"], "[::1]:8080", "one-label", None),
]


@pytest.mark.parametrize(("hosts", "host", "wildcard", "want"), HOSTS)
def test_hosts(hosts: list[str], host: str, wildcard: str, want: str | None) -> None:
    routes = compiled(
        [route(f"r{i}", hosts=(h,) if h else (), to="svc") for i, h in enumerate(hosts)],
        wildcard=wildcard,
    )
    assert outcome(run(routes, head("/", host))) == (want or "404 no-route")


def test_a_host_with_routes_never_falls_through_to_the_catch_all() -> None:
    # nginx picks one server block, Envoy one virtual host: a request for foo.com that no
    # foo.com path matches is a 404, even though a catch-all route would match its path.
    routes = compiled([route("foo", "/api", hosts=("foo.com",)), route("any", "/")])
    assert outcome(run(routes, head("/other", "foo.com"))) == "404 no-route"
    assert outcome(run(routes, head("/other", "bar.com"))) == "any"


def test_unknown_listener_and_absolute_form() -> None:
    routes = compiled([route("r", "/api")])
    assert outcome(run(routes, head("/api", listener="nope"))) == "404 no-route"
    decision = run(routes, head("http://example.com/api/x?y=1"))
    assert outcome(decision) == "r"
    assert decision.target == "/api/x?y=1"  # type: ignore[union-attr]
