"""The planner's checks and transformations, one table per concern."""

from __future__ import annotations

import base64

import pytest

from mesh.config.gateway import (
    Affinity,
    BasicAuth,
    Canary,
    Cors,
    HeaderEdits,
    Mirror,
    PathRewrite,
    Policy,
    RateLimit,
    Redirect,
    Rewrite,
    WeightedBackend,
)
from mesh.http.filters import apr1
from mesh.http.plan import Forward, PlanState, Respond
from mesh.http.split import affinity_token
from tests.routing.tables import compiled, head, outcome, route, run, sequence


def forward(decision: Forward | Respond) -> Forward:
    assert isinstance(decision, Forward), decision
    return decision


def respond(decision: Forward | Respond) -> Respond:
    assert isinstance(decision, Respond), decision
    return decision


def test_source_ranges() -> None:
    routes = compiled(
        [
            route(
                "r",
                policy=Policy(
                    allow_sources=("127.0.0.0/24", "::1/128"), deny_sources=("127.0.0.9/32",)
                ),
            )
        ]
    )
    cases = [
        ("127.0.0.5", "r"),
        ("127.0.0.9", "403 denied"),  # deny wins over allow
        ("127.0.1.1", "403 denied"),
        ("::1", "r"),
        ("::ffff:127.0.0.5", "r"),  # an IPv4-mapped client is its IPv4 address
        ("", "403 denied"),
    ]
    for client, want in cases:
        assert outcome(run(routes, head(client=client))) == want, client


def test_https_redirect_only_for_plain_http() -> None:
    routes = compiled([route("r", policy=Policy(https_redirect=308))])
    r = respond(run(routes, head("/a?b=1", "Foo.com:8080", scheme="http")))
    assert (r.status, r.reason, r.headers) == (
        308,
        "redirect",
        (("location", "https://foo.com/a?b=1"),),
    )
    assert outcome(run(routes, head("/a", scheme="https"))) == "r"


def test_cors() -> None:
    cors = Cors(allow_origins=("https://a.example",), allow_credentials=True, max_age=60)
    routes = compiled([route("r", policy=Policy(cors=cors))])
    pre = respond(
        run(
            routes,
            head(
                method="OPTIONS",
                headers={"origin": "https://a.example", "access-control-request-method": "PUT"},
            ),
        )
    )
    assert (pre.status, pre.reason) == (204, "cors-preflight")
    got = dict(pre.headers)
    assert got["access-control-allow-origin"] == "https://a.example"
    assert got["access-control-allow-credentials"] == "true"
    assert got["access-control-max-age"] == "60"
    # A plain OPTIONS (no preflight header) goes upstream; a foreign origin gets no CORS headers.
    assert outcome(run(routes, head(method="OPTIONS"))) == "r"
    fwd = forward(run(routes, head(headers={"origin": "https://evil.example"})))
    assert fwd.cors == ()
    fwd = forward(run(routes, head(headers={"origin": "https://a.example"})))
    assert ("access-control-allow-origin", "https://a.example") in fwd.cors


def test_cors_wildcard_with_credentials_echoes_the_origin() -> None:
    routes = compiled([route("r", policy=Policy(cors=Cors()))])
    fwd = forward(run(routes, head(headers={"origin": "https://b.example"})))
    assert dict(fwd.cors)["access-control-allow-origin"] == "https://b.example"
    routes = compiled([route("r", policy=Policy(cors=Cors(allow_credentials=False)))])
    fwd = forward(run(routes, head(headers={"origin": "https://b.example"})))
    assert dict(fwd.cors)["access-control-allow-origin"] == "*"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth() -> None:
    users = (
        ("alice", apr1("s3cret", "saltsalt")),
        ("bob", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
        ("carol", "{PLAIN}pw"),
    )
    routes = compiled(
        [route("r", policy=Policy(basic_auth=BasicAuth(realm='the "zone"', users=users)))]
    )
    cases = [
        (None, "401 denied"),
        (basic("alice", "s3cret"), "r"),
        (basic("alice", "wrong"), "401 denied"),
        (basic("bob", "password"), "r"),  # {SHA} of "password"
        (basic("carol", "pw"), "r"),
        (basic("dave", "pw"), "401 denied"),
        ("Basic !!!", "401 denied"),
        ("Bearer x", "401 denied"),
    ]
    for auth, want in cases:
        headers = {"authorization": auth} if auth else {}
        decision = run(routes, head(headers=headers))
        assert outcome(decision) == want, auth
        if isinstance(decision, Respond):
            assert decision.headers == (("www-authenticate", 'Basic realm="the \\"zone\\""'),)


def test_rate_limit_per_client_with_burst() -> None:
    routes = compiled([route("r", policy=Policy(rate_limit=RateLimit(rps=2, burst=3)))])
    state = PlanState()
    got = [outcome(run(routes, head(client="127.0.0.1"), now=10.0, state=state)) for _ in range(4)]
    assert got == ["r", "r", "r", "503 rate-limited"]
    # another client has its own bucket; half a second later one token is back
    assert outcome(run(routes, head(client="127.0.0.2"), now=10.0, state=state)) == "r"
    assert outcome(run(routes, head(client="127.0.0.1"), now=10.5, state=state)) == "r"
    assert (
        outcome(run(routes, head(client="127.0.0.1"), now=10.5, state=state)) == "503 rate-limited"
    )


def test_body_limit() -> None:
    routes = compiled([route("r", policy=Policy(body_limit=1024))])
    assert outcome(run(routes, head(content_length=1024))) == "r"
    assert outcome(run(routes, head(content_length=1025))) == "413 body-too-large"
    # chunked: no length known yet, the data path enforces the limit while streaming
    assert forward(run(routes, head())).body_limit == 1024


def test_app_root() -> None:
    routes = compiled([route("r", policy=Policy(app_root="/app1"))])
    r = respond(run(routes, head("/")))
    assert (r.status, r.headers) == (302, (("location", "/app1"),))
    assert outcome(run(routes, head("/other"))) == "r"


# Gateway API conformance (HTTPRouteRedirectPath, -HostAndStatus, -Port, -Scheme,
# -PortAndScheme): (redirect, path matched, request target, scheme, listener port, Location).
REDIRECTS = [
    (Redirect(hostname="example.org"), "/", "/", "http", 80, "http://example.org/"),
    (Redirect(hostname="example.org", status=301), "/", "/x", "http", 8080, "http://example.org:8080/x"),
    (Redirect(port=8083), "/", "/p", "http", 80, "http://example.com:8083/p"),
    (Redirect(scheme="https"), "/", "/s?q=1", "http", 8080, "https://example.com/s?q=1"),
    (Redirect(scheme="https", port=443), "/", "/s", "http", 80, "https://example.com/s"),
    (Redirect(scheme="http", port=8080), "/", "/s", "https", 443, "http://example.com:8080/s"),
    (Redirect(path=PathRewrite(kind="Prefix", value="/replacement-prefix")), "/original-prefix", "/original-prefix/lemon", "http", 80, "http://example.com/replacement-prefix/lemon"),
    (Redirect(path=PathRewrite(kind="Full", value="/full-path-replacement")), "/full", "/full/path/original", "http", 80, "http://example.com/full-path-replacement"),
    (Redirect(path=PathRewrite(kind="Prefix", value="/")), "/strip", "/strip/x", "http", 80, "http://example.com/x"),
    (Redirect(location="https://elsewhere.example/x", status=301), "/", "/y", "http", 80, "https://elsewhere.example/x"),
    (Redirect(port=8081), "/", "/", "http", 80, "http://[::1]:8081/"),
    (Redirect(scheme="https"), "/", "/", "http", 80, "https://[::1]/"),
]  # fmt: skip


@pytest.mark.parametrize(("redirect", "prefix", "target", "scheme", "port", "location"), REDIRECTS)
def test_redirects(
    redirect: Redirect, prefix: str, target: str, scheme: str, port: int, location: str
) -> None:
    routes = compiled([route("r", prefix, policy=Policy(redirect=redirect))], port=port)
    host = "[::1]:8080" if "[::1]" in location else "example.com"
    r = respond(run(routes, head(target, host, scheme=scheme)))
    assert (r.status, r.reason, r.headers) == (
        redirect.status,
        "redirect",
        (("location", location),),
    )


# Gateway API conformance HTTPRouteRewritePath / -Host, and ingress-nginx's rewrite-target
# examples: (match kind, match path, rewrite, request target, upstream target).
REWRITES = [
    ("Prefix", "/prefix/one", PathRewrite(kind="Prefix", value="/one"), "/prefix/one/two", "/one/two"),
    ("Prefix", "/strip-prefix", PathRewrite(kind="Prefix", value="/"), "/strip-prefix/three", "/three"),
    ("Prefix", "/strip-prefix", PathRewrite(kind="Prefix", value="/"), "/strip-prefix", "/"),
    ("Prefix", "/prefix/one", PathRewrite(kind="Prefix", value="/one"), "/prefix/one", "/one"),
    ("Prefix", "/full/one", PathRewrite(kind="Full", value="/one"), "/full/one/two?q=1", "/one?q=1"),
    ("RegularExpression", "^/something(/|$)(.*)", PathRewrite(kind="Regex", pattern="/something(/|$)(.*)", value="/$2"), "/something", "/"),
    ("RegularExpression", "^/something(/|$)(.*)", PathRewrite(kind="Regex", pattern="/something(/|$)(.*)", value="/$2"), "/something/", "/"),
    ("RegularExpression", "^/something(/|$)(.*)", PathRewrite(kind="Regex", pattern="/something(/|$)(.*)", value="/$2"), "/something/new?x=1", "/new?x=1"),
    ("RegularExpression", "^/Something(/|$)(.*)", PathRewrite(kind="Regex", pattern="/Something(/|$)(.*)", value="/$2"), "/SOMETHING/new", "/new"),
    # nginx replaces the whole URI, not the matched part
    ("RegularExpression", "^/api", PathRewrite(kind="Regex", pattern="/api", value="/"), "/api/v1/users", "/"),
    ("RegularExpression", "^/a(.*)", PathRewrite(kind="Regex", pattern="/a(.*)", value="/b$1$3"), "/ax", "/bx"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "rewrite", "target", "upstream"), REWRITES)
def test_rewrites(kind: str, path: str, rewrite: PathRewrite, target: str, upstream: str) -> None:
    from mesh.config.gateway import Match, PathMatch

    match = Match(path=PathMatch.model_validate({"kind": kind, "value": path, "ignore_case": True}))
    policy = Policy(rewrite=Rewrite(hostname="internal.example", path=rewrite))
    routes = compiled([route("r", match=match, policy=policy)])
    fwd = forward(run(routes, head(target)))
    assert (fwd.target, fwd.host) == (upstream, "internal.example")


def test_backends_weights_and_failures() -> None:
    two = (WeightedBackend(backend="a", weight=1), WeightedBackend(backend="b", weight=3))
    routes = compiled([route("r", backends=two)])
    assert forward(run(routes, head(), sequence(0.2))).backend == "a"
    assert forward(run(routes, head(), sequence(0.3))).backend == "b"
    zero = (WeightedBackend(backend="a", weight=0), WeightedBackend(backend="b", weight=1))
    routes = compiled([route("r", backends=zero)])
    assert {forward(run(routes, head(), sequence(x))).backend for x in (0.0, 0.5, 0.99)} == {"b"}
    cases = [
        ((WeightedBackend(backend="a", weight=0),), "500 invalid-backend"),  # all weights 0
        ((WeightedBackend(backend=None),), "500 invalid-backend"),  # unresolved reference
        ((WeightedBackend(backend="empty"),), "503 no-healthy-upstream"),
        ((), "500 invalid-backend"),
    ]
    for backends, want in cases:
        assert outcome(run(compiled([route("r", backends=backends)]), head())) == want
    # An unresolved reference keeps its share: half the requests get 500, as the spec asks.
    half = (WeightedBackend(backend=None), WeightedBackend(backend="b"))
    routes = compiled([route("r", backends=half)])
    assert outcome(run(routes, head(), sequence(0.25))) == "500 invalid-backend"
    assert outcome(run(routes, head(), sequence(0.75))) == "r"


def test_headers_timeouts_mirrors_pass_through() -> None:
    edits = HeaderEdits(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",))
    policy = Policy(
        request_headers=edits,
        response_headers=HeaderEdits(set=(("x-r", "1"),)),
        mirrors=(Mirror(backend="m1", share=0.5), Mirror(backend="m2")),
    )
    routes = compiled([route("r", policy=policy)])
    fwd = forward(run(routes, head(), sequence(0.4)))
    assert fwd.request_headers == edits and fwd.response_headers.set == (("x-r", "1"),)
    assert [name for name, _ in fwd.mirrors] == ["m1", "m2"]
    fwd = forward(run(routes, head(), sequence(0.6)))
    assert [name for name, _ in fwd.mirrors] == ["m2"]


def test_canary_and_affinity_through_the_planner() -> None:
    canary = Canary(backend="canary", header="x-canary", weight=10)
    routes = compiled([route("r", to="main", canaries=(canary,), affinity=Affinity(cookie="S"))])
    assert (
        forward(run(routes, head(headers={"x-canary": "always"}), sequence(0.99))).backend
        == "canary"
    )
    assert forward(run(routes, head(), sequence(0.05))).backend == "canary"
    fwd = forward(run(routes, head(), sequence(0.5)))
    assert (fwd.backend, fwd.pinned, fwd.affinity) == ("main", None, Affinity(cookie="S"))
    token = affinity_token("127.0.9.1", 8000)
    fwd = forward(run(routes, head(headers={"cookie": f"a=b; S={token}"}), sequence(0.5)))
    assert (fwd.pinned, fwd.affinity) == (("127.0.9.1", 8000), None)


def test_head_from_wire() -> None:
    from mesh.http.plan import head_from_wire

    h = head_from_wire(
        "l",
        b"GET",
        b"/caf\xe9?x=1",
        ((b"host", b"Example.com:80"), (b"x-a", b"1"), (b"x-a", b"2"), (b"user-agent", b"c")),
        scheme="https",
        client="127.0.0.1",
        content_length=3,
    )
    assert (h.method, h.target, h.host, h.scheme, h.client, h.content_length) == (
        "GET", "/caf\xe9?x=1", "Example.com:80", "https", "127.0.0.1", 3,
    )  # fmt: skip
    assert dict(h.headers) == {"host": "Example.com:80", "x-a": "1", "user-agent": "c"}
    assert "x-a" in h.headers and "x-b" not in h.headers and len(h.headers) == 3
    routes = compiled([route("r", hosts=("example.com",))])
    assert outcome(run(routes, h)) == "r"


def test_routes_and_forwards_the_normalised_path() -> None:
    """``//admin``, ``/x/../admin`` and ``/%61dmin`` are ``/admin``: its allow list applies,
    and the backend gets the path the decision was made on."""
    routes = compiled(
        [
            route("admin", "/admin", policy=Policy(allow_sources=("10.0.0.0/8",))),
            route("open", "/"),
        ]
    )
    for target in ("/admin", "//admin", "/x/../admin", "/%61dmin", "/./admin/", "/%2e%2e/admin"):
        assert outcome(run(routes, head(target, client="127.0.0.5"))) == "403 denied", target
    assert forward(run(routes, head("//admin/a", client="10.1.2.3"))).target == "/admin/a"
    fwd = forward(run(routes, head("/a//b/../c?q=/../x", client="127.0.0.5")))
    assert (fwd.route.name, fwd.target) == ("open", "/a/c?q=/../x")  # the query is not a path
    fwd = forward(run(routes, head("/plain?x=1", client="127.0.0.5")))
    assert fwd.target == "/plain?x=1"


def test_options_asterisk_is_routed_as_the_root_and_forwarded_as_asked() -> None:
    routes = compiled([route("root", "/", "Exact"), route("api", "/api")])
    fwd = forward(run(routes, head("*", method="OPTIONS")))
    assert (fwd.route.name, fwd.target) == ("root", "*")
