"""The adapter from the planner's output to the engine's decision (ingress/router.py), and the
status the control plane writes back for the gateway — pure, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.config.gateway import Route, Timeouts
from mesh.control.translate.gateway_served import status_updates, translate_served
from mesh.http import decision as engine
from mesh.http.events import Request
from mesh.http.split import affinity_token
from mesh.http.tracing import TRACE_HEADERS, Tracer
from mesh.ingress.router import Pinned, Routing, route_parts
from mesh.objects import Ingress
from tests.ingress.harness import backend, ingress, path, served, tls_secret
from tests.routing.world import ingress_class, snapshot

PEER = engine.Peer("127.0.0.9", 4000, b"http", 8080)


def req(target: bytes = b"/", host: bytes = b"shop.example.com", *fields: Any) -> Request:
    return Request(b"GET", target, ((b"host", host), *fields))


def decide(routing: Routing, r: Request, hop: Any = None, peer: engine.Peer = PEER) -> Any:
    return routing.decide("ingress-http", r, peer, 0.0, hop)[0]


EP = ("127.0.5.1", 8080)


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        (Timeouts(), engine.Timeouts(connect=5.0, read=60.0, send=60.0, request=None)),
        (Timeouts(request=10), engine.Timeouts(request=10.0)),
        # one try is bounded by backendRequest, the whole request by request
        (Timeouts(request=10, backend_request=2), engine.Timeouts(request=2.0)),
        (
            Timeouts(connect=1, read=2, send=3),
            engine.Timeouts(connect=1.0, read=2.0, send=3.0, request=None),
        ),
    ],
)
def test_route_timeouts(timeouts: Timeouts, expected: engine.Timeouts) -> None:
    route = Route(name="r", listeners=("ingress-http",), timeouts=timeouts)
    assert route_parts(route).timeouts == expected


def test_plain_routes_reuse_one_decision_and_keep_the_target() -> None:
    routing = Routing(
        served(backend("web", EP), ingress("shop", "shop.example.com", path("/", "web")))
    )
    first = decide(routing, req(b"/a?x=1"))
    second = decide(routing, req(b"/b"))
    assert isinstance(first, engine.Forward)
    assert first is second  # built once per route and backend
    assert first.target is None  # the client's target goes as it came
    assert (first.route, first.backend) == ("ingress/default/shop", "default/web:80")
    assert first.upstream.endpoints == (EP,)


def test_rewrites_headers_and_answers_become_engine_values() -> None:
    routing = Routing(
        served(
            backend("web", EP),
            ingress(
                "shop",
                "shop.example.com",
                path("/api(/|$)(.*)", "web", "ImplementationSpecific"),
                annotations={
                    "rewrite-target": "/$2",
                    "upstream-vhost": "internal.local",
                    "enable-cors": "true",
                    "cors-allow-origin": "https://a.example",
                },
            ),
        )
    )
    fwd = decide(
        routing, req(b"/api/items?id=3", b"shop.example.com", (b"origin", b"https://a.example"))
    )
    assert isinstance(fwd, engine.Forward)
    assert (fwd.target, fwd.host) == (b"/items?id=3", b"internal.local")
    assert (b"access-control-allow-origin", b"https://a.example") in fwd.response_headers.add
    missing = decide(routing, req(b"/", b"other.example.com"))
    assert isinstance(missing, engine.Respond)
    assert (missing.status, missing.reason) == (404, "no-route")


def test_redirect_headers_are_bytes() -> None:
    routing = Routing(
        served(
            backend("web", EP),
            ingress(
                "shop",
                "shop.example.com",
                path("/", "web"),
                annotations={"permanent-redirect": "https://new.example/x"},
            ),
        )
    )
    answer = decide(routing, req())
    assert isinstance(answer, engine.Respond)
    assert (answer.status, answer.reason) == (301, "redirect")
    assert (b"location", b"https://new.example/x") in answer.headers


def test_affinity_pins_the_endpoint_its_cookie_names_and_sets_one_otherwise() -> None:
    eps = [("127.0.5.1", 8080), ("127.0.5.2", 8080), ("127.0.5.3", 8080)]
    routing = Routing(
        served(
            backend("web", *eps),
            ingress(
                "shop",
                "shop.example.com",
                path("/", "web"),
                annotations={"affinity": "cookie", "session-cookie-name": "route"},
            ),
        )
    )
    fresh = decide(routing, req())
    picked = fresh.upstream.pick(())
    cookie = dict(fresh.response_headers.add)[b"set-cookie"].decode()
    assert cookie.startswith(f"route={affinity_token(*picked)};")
    token = affinity_token(*eps[2])
    pinned = decide(routing, req(b"/", b"shop.example.com", (b"cookie", f"route={token}".encode())))
    assert isinstance(pinned.upstream, Pinned)
    assert [pinned.upstream.pick(()) for _ in range(3)] == [eps[2]] * 3
    assert pinned.upstream.pick((eps[2],)) in eps[:2]  # failed over when that one refuses
    assert b"set-cookie" not in dict(pinned.response_headers.add)


def test_trace_headers_replace_the_clients() -> None:
    routing = Routing(served(backend("web", EP), ingress("shop", None, path("/", "web"))))
    r = req(b"/", b"x", (b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"))
    hop = Tracer(lambda *a: None).start(r.headers)  # type: ignore[arg-type]
    fwd = decide(routing, r, hop)
    assert set(fwd.request_headers.remove) >= TRACE_HEADERS
    assert dict(fwd.request_headers.add)[b"traceparent"].split(b"-")[1] == b"a" * 32


def test_balancers_survive_a_swap_while_their_endpoints_do() -> None:
    one = served(backend("web", EP), ingress("shop", None, path("/", "web")))
    first = Routing(one)
    same = Routing(served(backend("web", EP), ingress("shop", None, path("/x", "web"))), first)
    moved = Routing(
        served(backend("web", ("127.0.5.9", 8080)), ingress("shop", None, path("/", "web"))), same
    )
    assert same.balancers["default/web:80"] is first.balancers["default/web:80"]
    assert moved.balancers["default/web:80"] is not first.balancers["default/web:80"]
    assert moved.endpoints() == {("127.0.5.9", 8080)}
    assert moved.state is first.state  # rate-limit buckets carry over


def test_served_config_carries_the_named_tls_secrets_only() -> None:
    config = served(
        backend("web", EP),
        tls_secret("used", b"CERT", b"KEY"),
        tls_secret("unused", b"C2", b"K2"),
        ingress(
            "shop",
            "shop.example.com",
            path("/", "web"),
            tls=[{"hosts": ["shop.example.com"], "secretName": "used"}],
        ),
    )
    assert [(s.name, s.cert_pem, s.key_pem) for s in config.secrets] == [
        ("default/used", "CERT", "KEY")
    ]


def test_status_updates_converge_and_release_what_is_no_longer_served() -> None:
    objects = [
        ingress_class(),
        *backend("web", EP),
        ingress("shop", "shop.example.com", path("/", "web")),
        ingress("theirs", "x.example.com", path("/", "web"), class_name="other"),
    ]
    snap = snapshot(*objects)
    first = status_updates(snap, ingress_addresses=("127.0.0.1",), gateway_cidr="127.11.0.0/16")
    assert [(o.kind, o.name) for o in first] == [("Ingress", "shop")]
    (shop,) = first
    assert isinstance(shop, Ingress)
    assert [lb.ip for lb in shop.status.load_balancer.ingress] == ["127.0.0.1"]
    again = snapshot(*objects[:-2], shop, objects[-1])
    assert (
        status_updates(again, ingress_addresses=("127.0.0.1",), gateway_cidr="127.11.0.0/16") == []
    )
    # Moved to another class: the address the gateway gave it is taken back.
    moved = shop.model_copy(
        update={"spec": shop.spec.model_copy(update={"ingress_class_name": "other"})}
    )
    gone = snapshot(*objects[:-2], moved, objects[-1])
    (cleared,) = status_updates(
        gone, ingress_addresses=("127.0.0.1",), gateway_cidr="127.11.0.0/16"
    )
    assert isinstance(cleared, Ingress)
    assert cleared.status.load_balancer.ingress == ()
    # translate_served on a snapshot without gateway objects still has both Ingress listeners
    listeners = [lis.name for lis in translate_served(snap, gateway_cidr="127.11.0.0/16").listeners]
    assert listeners == ["ingress-http", "ingress-https"]


def test_plain_decisions_are_remembered_and_header_dependent_ones_are_not() -> None:
    web, blue = ("127.0.5.1", 8080), ("127.0.5.2", 8080)
    canary = ingress(
        "shop-canary",
        "shop.example.com",
        path("/app", "blue"),
        annotations={
            "nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-by-header": "x-v",
            "nginx.ingress.kubernetes.io/canary-by-header-value": "blue",
        },
        created="2026-03-01T00:00:00Z",
    )
    routing = Routing(
        served(
            backend("web", web),
            backend("blue", blue),
            ingress("shop", "shop.example.com", path("/", "web"), path("/app", "web")),
            ingress("other", "other.example.com", path("/", "blue")),
            canary,
        )
    )
    first = routing.decide("ingress-http", req(b"/x"), PEER, 0.0, None)
    again = routing.decide("ingress-http", req(b"/x"), PEER, 0.0, None)
    assert again is first  # remembered
    assert isinstance(first[0], engine.Forward) and first[0].backend == "default/web:80"
    other = decide(routing, req(b"/x", b"other.example.com"))
    assert other.backend == "default/blue:80"  # the Host is part of the key
    # The canary route looks at a header: its answers are planned every time.
    for _ in range(2):
        assert decide(routing, req(b"/app", b"shop.example.com", (b"x-v", b"blue"))).backend == (
            "default/blue:80"
        )
        assert decide(routing, req(b"/app")).backend == "default/web:80"
    # A new config (a new Routing) starts with nothing remembered.
    assert (
        Routing(routing.config, routing).decide("ingress-http", req(b"/x"), PEER, 0.0, None)
        is not first
    )


def test_a_host_whose_routes_match_headers_is_planned_every_time() -> None:
    from mesh.config.gateway import (
        GatewayBackend,
        GatewayEndpoint,
        GatewayListener,
        Match,
        PathMatch,
        ServedGatewayConfig,
        ValueMatch,
        WeightedBackend,
    )

    def route(name: str, backend: str, match: Match) -> Route:
        return Route(
            name=name,
            listeners=("ingress-http",),
            matches=(match,),
            backends=(WeightedBackend(backend=backend),),
        )

    config = ServedGatewayConfig(
        version=1,
        listeners=(GatewayListener(name="ingress-http"),),
        routes=(
            route(
                "v2",
                "two",
                Match(path=PathMatch(value="/"), headers=(ValueMatch(name="v", value="2"),)),
            ),
            route("v1", "one", Match(path=PathMatch(value="/"))),
        ),
        backends=(
            GatewayBackend(name="one", endpoints=(GatewayEndpoint(ip="127.0.5.1", port=80),)),
            GatewayBackend(name="two", endpoints=(GatewayEndpoint(ip="127.0.5.2", port=80),)),
        ),
    )
    routing = Routing(config)
    for _ in range(2):
        assert decide(routing, req(b"/a")).backend == "one"
        assert decide(routing, req(b"/a", b"shop.example.com", (b"v", b"2"))).backend == "two"
    assert not routing._decided  # the first route of the slot looks at a header
