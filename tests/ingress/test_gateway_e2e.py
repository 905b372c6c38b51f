"""The gateway on loopback with real clients: curl, httpx, a WebSocket client.

Each test builds cluster objects (Ingress, Services, EndpointSlices), lets the control plane's
translator turn them into the gateway's config, and talks to the running gateway.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

from mesh.http.tracing import Tracer
from mesh.ingress.server import Telemetry
from tests.conftest import require_tool
from tests.ingress.harness import (
    backend,
    echo_servers,
    ingress,
    loopback_ip,
    path,
    served,
    start_gateway,
)


async def curl(*args: str) -> tuple[int, str]:
    """curl's exit status and its stdout (``-w`` output included)."""
    require_tool("curl")
    done = await trio.run_process(
        ["curl", "-s", "--max-time", "10", *args], capture_stdout=True, check=False
    )
    return done.returncode, done.stdout.decode()


async def test_curl_routes_by_host_and_path_and_says_why_when_not(nursery: trio.Nursery) -> None:
    with echo_servers("web", "api") as up:
        config = served(
            backend("web", up["web"]),
            backend("api", up["api"]),
            ingress("shop", "shop.example.com", path("/", "web"), path("/api", "api")),
        )
        gw = await start_gateway(nursery, config)
        base = f"http://127.0.0.1:{gw.port}"
        _, out = await curl("-H", "Host: shop.example.com", f"{base}/cart")
        assert json.loads(out)["name"] == "web"
        _, out = await curl("-H", "Host: shop.example.com", f"{base}/api/items?x=1")
        echoed = json.loads(out)
        assert (echoed["name"], echoed["path"]) == ("api", "/api/items?x=1")
        assert echoed["headers"]["x-forwarded-host"] == "shop.example.com"
        assert echoed["headers"]["x-forwarded-proto"] == "http"
        assert echoed["headers"]["x-request-id"]
        _, out = await curl("-i", "-H", "Host: other.example.com", f"{base}/")
        assert out.startswith("HTTP/1.1 404")
        assert "x-mesh-reason: no-route" in out


async def test_httpx_keep_alive_bodies_and_missing_endpoints(nursery: trio.Nursery) -> None:
    with echo_servers("web") as up:
        gone = (loopback_ip(), 9)  # nothing listens there
        config = served(
            backend("web", up["web"]),
            backend("dead", gone),
            backend("empty"),
            ingress(
                "shop",
                "shop.example.com",
                path("/", "web"),
                path("/dead", "dead"),
                path("/empty", "empty"),
            ),
        )
        gw = await start_gateway(nursery, config)
        headers = {"host": "shop.example.com"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
            for i in range(20):  # one connection, reused
                r = await client.post("/upload", content=b"x" * (1000 * i), headers=headers)
                assert r.status_code == 200
                assert r.json()["body_bytes"] == 1000 * i
            r = await client.get("/dead", headers=headers)
            assert (r.status_code, r.headers["x-mesh-reason"]) == (502, "upstream-connect-failure")
            r = await client.get("/empty", headers=headers)
            assert r.status_code == 503
            assert r.headers["x-mesh-reason"] == "no-healthy-upstream"
        assert gw.telemetry.metrics is not None
        counted = gw.telemetry.metrics.requests
        assert counted[("ingress/default/shop", "default/web:80", 200, "")] == 20
        errors = gw.telemetry.metrics.connect_errors
        assert errors[("default/dead:80", "upstream-connect-failure")] == 1


async def test_canary_weight_share_is_binomial_and_a_header_forces_it(
    nursery: trio.Nursery,
) -> None:
    """90/10 by canary-weight over 1,000 requests: the canary's count lies within five
    standard deviations of 100 (a false failure has odds below one in a million)."""
    with echo_servers("v1", "v2") as up:
        config = served(
            backend("echo-v1", up["v1"]),
            backend("echo-v2", up["v2"]),
            ingress("echo", "echo.example.com", path("/", "echo-v1")),
            ingress(
                "echo-canary",
                "echo.example.com",
                path("/", "echo-v2"),
                annotations={
                    "canary": "true",
                    "canary-weight": "10",
                    "canary-by-header": "x-canary",
                },
                created="2026-02-01T00:00:00Z",
            ),
        )
        gw = await start_gateway(nursery, config)
        n, share = 1000, 0.1
        counts = {"v1": 0, "v2": 0}
        headers = {"host": "echo.example.com"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
            for _ in range(n):
                r = await client.get("/", headers=headers)
                counts[r.headers["x-echo"]] += 1
            forced = {
                (await client.get("/", headers={**headers, "x-canary": "always"})).headers["x-echo"]
                for _ in range(50)
            }
            never = {
                (await client.get("/", headers={**headers, "x-canary": "never"})).headers["x-echo"]
                for _ in range(50)
            }
        sd = math.sqrt(n * share * (1 - share))
        assert abs(counts["v2"] - n * share) <= 5 * sd, counts
        assert counts["v1"] + counts["v2"] == n
        assert forced == {"v2"}
        assert never == {"v1"}


async def test_trace_context_goes_upstream_and_spans_are_recorded(nursery: trio.Nursery) -> None:
    class Sink:
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def record(self, hop: Any, end: Any) -> None:
            self.spans.append((hop, end))

    sink = Sink()
    with echo_servers("web") as up:
        config = served(backend("web", up["web"]), ingress("shop", None, path("/", "web")))
        gw = await start_gateway(nursery, config, telemetry=Telemetry(tracer=Tracer(sink)))
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = "00f067aa0ba902b7"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
            r = await client.get("/t", headers={"traceparent": f"00-{trace}-{parent}-01"})
            sent = r.json()["headers"]
            r2 = await client.get("/t", headers={"b3": f"{trace}-{parent}-1"})
            sent_b3 = r2.json()["headers"]
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01")
    assert span_id != parent  # the gateway's own span is the upstream's parent
    assert sent["x-b3-traceid"] == trace and sent["x-b3-spanid"] == span_id
    assert sent_b3["traceparent"].split("-")[1] == trace
    assert len(sink.spans) == 2
    hop, end = sink.spans[0]
    assert (hop.context.trace_id, hop.context.parent_id) == (trace, parent)
    assert (end.status, end.route, end.backend) == (200, "ingress/default/shop", "default/web:80")


@pytest.fixture
def ws_upstream() -> Iterator[tuple[str, int]]:
    """A WebSocket echo server (the websockets package) on its own loopback address."""

    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    server: Server = ws_serve(echo, loopback_ip(), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()
    finally:
        server.shutdown()
        thread.join(5)


async def test_websocket_through_the_gateway_survives_a_config_swap(
    nursery: trio.Nursery, ws_upstream: tuple[str, int]
) -> None:
    """An open WebSocket keeps its tunnel when the route that opened it goes away; a new
    handshake on the new config finds no route."""
    with_route = served(backend("ws", ws_upstream), ingress("chat", None, path("/ws", "ws")))
    gw = await start_gateway(nursery, with_route)
    url = f"ws://127.0.0.1:{gw.port}/ws"

    def talk() -> list[str]:
        got = []
        with ws_connect(url, open_timeout=5) as ws:
            ws.send("one")
            got.append(str(ws.recv(timeout=5)))
            trio.from_thread.run_sync(gw.apply, served(backend("ws", ws_upstream), version=2))
            for word in ("two", "three"):
                ws.send(word)
                got.append(str(ws.recv(timeout=5)))
        return got

    assert await trio.to_thread.run_sync(talk) == ["one", "two", "three"]

    def refused() -> int:
        try:
            with ws_connect(url, open_timeout=5):
                return 101
        except Exception as exc:  # InvalidStatus carries the response
            return int(exc.response.status_code)  # type: ignore[attr-defined]

    assert await trio.to_thread.run_sync(refused) == 404


async def test_auth_url_lets_through_passes_back_and_fails_closed(nursery: trio.Nursery) -> None:
    """auth-url: a 2xx from the auth service forwards the request; its 401 comes back with
    WWW-Authenticate; an auth service that cannot be reached refuses (500), never forwards."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict[str, str]] = []

    class Auth(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            ok = self.headers.get("authorization") == "Bearer good"
            self.send_response(200 if ok else 401)
            if not ok:
                self.send_header("www-authenticate", 'Bearer realm="shop"')
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    auth = ThreadingHTTPServer((loopback_ip(), 0), Auth)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    ip, port = auth.socket.getsockname()[:2]
    try:
        with echo_servers("web") as up:
            config = served(
                backend("web", up["web"]),
                ingress(
                    "shop",
                    "shop.example.com",
                    path("/", "web"),
                    annotations={"auth-url": f"http://{ip}:{port}/check"},
                ),
                ingress(
                    "down",
                    "down.example.com",
                    path("/", "web"),
                    annotations={"auth-url": f"http://{loopback_ip()}:9/check"},
                ),
            )
            gw = await start_gateway(nursery, config)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
                host = {"host": "shop.example.com"}
                r = await client.get("/cart?id=1", headers={**host, "authorization": "Bearer good"})
                assert (r.status_code, r.headers["x-echo"]) == (200, "web")
                r = await client.get("/cart", headers={**host, "authorization": "Bearer bad"})
                assert r.status_code == 401
                assert r.headers["www-authenticate"] == 'Bearer realm="shop"'
                assert r.headers["x-mesh-reason"] == "denied"
                r = await client.get("/", headers={"host": "down.example.com"})
                assert r.status_code == 500
                assert "x-echo" not in r.headers
        assert seen[0]["x-original-url"] == "http://shop.example.com/cart?id=1"
        assert seen[0]["x-original-method"] == "GET"
    finally:
        auth.shutdown()
        auth.server_close()


async def test_websocket_over_tls_by_sni(
    nursery: trio.Nursery, ws_upstream: tuple[str, int]
) -> None:
    """wss:// through the TLS listener: the handshake picks the Secret's certificate by SNI,
    then the Upgrade becomes a byte tunnel inside TLS."""
    import ssl

    from tests.ingress.harness import tls_secret
    from tests.tls.pki import CA

    ca = CA()
    cert = ca.issue("chat.example.com")
    config = served(
        backend("ws", ws_upstream),
        tls_secret("chat-tls", cert.cert_pem, cert.key_pem),
        ingress(
            "chat",
            "chat.example.com",
            path("/ws", "ws"),
            tls=[{"hosts": ["chat.example.com"], "secretName": "chat-tls"}],
        ),
    )
    gw = await start_gateway(nursery, config)
    context = ssl.create_default_context(cadata=ca.pem.decode())

    def talk() -> list[str]:
        # Connect to 127.0.0.1 while naming chat.example.com (SNI, Host, verification).
        sock = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5)
        with ws_connect(
            "wss://chat.example.com/ws",
            sock=sock,
            ssl=context,
            server_hostname="chat.example.com",
            open_timeout=5,
            close_timeout=10,
        ) as ws:
            out = []
            for word in ("hello", "x" * 100_000):
                ws.send(word)
                out.append(str(ws.recv(timeout=5)))
            return out

    # The closing handshake ends with the gateway closing the connection (close_notify and a
    # half-close once the upstream is done), not with the client giving up after 10 s.
    with trio.fail_after(6):
        got = await trio.to_thread.run_sync(talk, abandon_on_cancel=True)
    assert got == ["hello", "x" * 100_000]


async def test_redirects_carry_their_own_reason_phrase(nursery: trio.Nursery) -> None:
    with echo_servers("web") as up:
        config = served(
            backend("web", up["web"]),
            ingress(
                "moved",
                "old.example.com",
                path("/", "web"),
                annotations={"permanent-redirect": "https://new.example.com/"},
            ),
            ingress(
                "later",
                "tmp.example.com",
                path("/", "web"),
                annotations={
                    "temporal-redirect": "https://new.example.com/",
                    "temporal-redirect-code": "307",
                },
            ),
        )
        gw = await start_gateway(nursery, config)
        base = f"http://127.0.0.1:{gw.port}/"
        _, out = await curl("-i", "-H", "Host: old.example.com", base)
        assert out.startswith("HTTP/1.1 301 Moved Permanently\r\n")
        _, out = await curl("-i", "-H", "Host: tmp.example.com", base)
        assert out.startswith("HTTP/1.1 307 Temporary Redirect\r\n")


async def test_curl_cannot_dodge_a_guarded_path_by_spelling_it_differently(
    nursery: trio.Nursery,
) -> None:
    """The allow list of ``/admin`` holds for ``//admin``, ``/x/../admin`` and ``/%61dmin``
    sent as is (curl --path-as-is), and the open route's backend gets the normalised path."""
    with echo_servers("web", "admin") as up:
        guarded = {"whitelist-source-range": "10.0.0.0/8"}
        config = served(
            backend("web", up["web"]),
            backend("admin", up["admin"]),
            ingress("open", "sec.example.com", path("/", "web")),
            ingress("adm", "sec.example.com", path("/admin", "admin"), annotations=guarded),
        )
        gw = await start_gateway(nursery, config)
        base = f"http://127.0.0.1:{gw.port}"
        for spelled in ("/admin", "//admin", "/x/../admin", "/%61dmin", "/%2e%2e/admin/"):
            _, out = await curl(
                "--path-as-is", "-i", "-H", "Host: sec.example.com", f"{base}{spelled}"
            )
            assert out.startswith("HTTP/1.1 403"), (spelled, out[:200])
            assert "x-mesh-reason: denied" in out
        _, out = await curl("--path-as-is", "-H", "Host: sec.example.com", f"{base}/a//b/../c")
        echoed = json.loads(out)
        assert (echoed["name"], echoed["path"]) == ("web", "/a/c")
        _, out = await curl(
            "-X", "OPTIONS", "--request-target", "*", "-H", "Host: sec.example.com", base
        )
        echoed = json.loads(out)
        assert (echoed["name"], echoed["method"], echoed["path"]) == ("web", "OPTIONS", "*")
