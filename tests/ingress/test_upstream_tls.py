"""Re-encryption to upstreams on the running gateway: a real HTTPS upstream on loopback with a
certificate from a test CA, configured by Ingress annotations (ingress-nginx semantics) and by
a BackendTLSPolicy, both through the control plane's translator."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from mesh.objects import KubeObject
from tests.http.tls_upstream import TlsUpstream
from tests.ingress.harness import backend, ingress, obj, path, served, start_gateway
from tests.tls.pki import CA

HOST = "shop.example.com"


def ca_secret(name: str, ca_pem: bytes) -> KubeObject:
    return obj("Secret", name, "default", data={"ca.crt": base64.b64encode(ca_pem).decode()})


async def get(port: int, target: str = "/", **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return await client.get(target, headers={"host": HOST}, **kw)


async def start_upstream(nursery: trio.Nursery, *names: str, ca: CA | None = None) -> TlsUpstream:
    ca = ca or CA()
    upstream = TlsUpstream(ca.issue(names[0], list(names)))
    await nursery.start(upstream.serve)
    return upstream


async def test_backend_protocol_https_without_verification_and_keep_alive(
    nursery: trio.Nursery,
) -> None:
    """ingress-nginx's default: TLS, the certificate not verified (here from a CA the gateway
    has never seen), no SNI; the pooled TLS connection is reused."""
    upstream = await start_upstream(nursery, "internal.example")
    config = served(
        backend("secure", upstream.address),
        ingress("shop", HOST, path("/", "secure"), annotations={"backend-protocol": "HTTPS"}),
    )
    (tls_backend,) = [b for b in config.backends if b.protocol == "https"]
    assert tls_backend.name == "default/secure:80/https"
    gw = await start_gateway(nursery, config)
    first = await get(gw.port, "/a")
    second = await get(gw.port, "/b")
    assert first.status_code == second.status_code == 200
    assert first.json()["target"] == "/a" and first.json()["host"] == HOST
    assert first.json()["sni"] is None  # proxy-ssl-server-name is off by default
    assert first.json()["connection"] == second.json()["connection"] == 1
    assert upstream.connections == 1
    assert gw.pool.idle(next(iter(gw.holder.routing.endpoints()))) == 1


async def test_large_bodies_both_ways_over_tls(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery, "internal.example")
    gw = await start_gateway(
        nursery,
        served(
            backend("secure", upstream.address),
            ingress("shop", HOST, path("/", "secure"), annotations={"backend-protocol": "HTTPS"}),
        ),
    )
    body = b"x" * (3 * 1024 * 1024 + 17)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 70000

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}", timeout=20) as client:
        r = await client.post("/upload", headers={"host": HOST}, content=body)
        chunked = await client.post("/chunks", headers={"host": HOST}, content=pieces())
    assert (r.status_code, r.json()["body"]) == (200, len(body))
    assert (chunked.status_code, chunked.json()["body"]) == (200, 70000 * 20)


async def test_verification_on_with_sni_and_the_name_verified(nursery: trio.Nursery) -> None:
    ca = CA()
    upstream = await start_upstream(nursery, "api.internal", ca=ca)
    verify = {
        "backend-protocol": "HTTPS",
        "proxy-ssl-verify": "on",
        "proxy-ssl-secret": "default/upstream-ca",
        "proxy-ssl-server-name": "on",
    }
    good = served(
        backend("secure", upstream.address),
        ca_secret("upstream-ca", ca.pem),
        ingress("shop", HOST, path("/", "secure"),
                annotations={**verify, "proxy-ssl-name": "api.internal"}),
    )  # fmt: skip
    gw = await start_gateway(nursery, good)
    r = await get(gw.port)
    assert r.status_code == 200
    assert r.json()["sni"] == "api.internal"

    # The wrong name: refused when verifying, whatever the chain.
    wrong_name = served(
        backend("secure", upstream.address),
        ca_secret("upstream-ca", ca.pem),
        ingress("shop", HOST, path("/", "secure"),
                annotations={**verify, "proxy-ssl-name": "other.internal"}),
        version=2,
    )  # fmt: skip
    gw.apply(wrong_name)
    r = await get(gw.port)
    assert (r.status_code, r.headers["x-mesh-reason"]) == (502, "upstream-tls-failure")
    assert upstream.sni[-1] == "other.internal"

    # A CA that did not sign the upstream's certificate: refused too.
    wrong_ca = served(
        backend("secure", upstream.address),
        ca_secret("upstream-ca", CA().pem),
        ingress("shop", HOST, path("/", "secure"),
                annotations={**verify, "proxy-ssl-name": "api.internal"}),
        version=3,
    )  # fmt: skip
    gw.apply(wrong_ca)
    r = await get(gw.port)
    assert (r.status_code, r.headers["x-mesh-reason"]) == (502, "upstream-tls-failure")

    # Verification off again: the same upstream serves (a new config, new pool key).
    gw.apply(
        served(
            backend("secure", upstream.address),
            ingress("shop", HOST, path("/", "secure"), annotations={"backend-protocol": "HTTPS"}),
            version=4,
        )
    )
    r = await get(gw.port)
    assert r.status_code == 200 and r.json()["sni"] is None


async def test_a_plain_upstream_behind_backend_protocol_https_is_a_tls_failure(
    nursery: trio.Nursery,
) -> None:
    from tests.http.upstreams import RecordingUpstream

    plain = RecordingUpstream()
    address = await nursery.start(plain.serve)
    gw = await start_gateway(
        nursery,
        served(
            backend("plain", address),
            ingress("shop", HOST, path("/", "plain"), annotations={"backend-protocol": "HTTPS"}),
        ),
    )
    r = await get(gw.port)
    assert (r.status_code, r.headers["x-mesh-reason"]) == (502, "upstream-tls-failure")
    assert plain.complete == []  # no request ever went out in clear text


def tls_policy(name: str, service: str, hostname: str, **validation: Any) -> KubeObject:
    return obj(
        "BackendTLSPolicy",
        name,
        "default",
        apiVersion="gateway.networking.k8s.io/v1",
        spec={
            "targetRefs": [{"group": "", "kind": "Service", "name": service}],
            "validation": {"hostname": hostname, **validation},
        },
    )


def gateway_objects(port: int) -> list[KubeObject]:
    return [
        obj("GatewayClass", "mesh", "", spec={"controllerName": "mesh.dev/gateway"}),
        obj(
            "Gateway",
            "web",
            "default",
            spec={
                "gatewayClassName": "mesh",
                "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
            },
        ),
        obj(
            "HTTPRoute",
            "shop",
            "default",
            spec={
                "parentRefs": [{"name": "web"}],
                "hostnames": [HOST],
                "rules": [{"backendRefs": [{"name": "secure", "port": 80}]}],
            },
        ),
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_backend_tls_policy_end_to_end(nursery: trio.Nursery) -> None:
    ca = CA()
    upstream = await start_upstream(nursery, "secure.default.svc", ca=ca)
    port = free_port()
    ca_map = obj("ConfigMap", "upstream-ca", "default", data={"ca.crt": ca.pem.decode()})
    policy = tls_policy(
        "secure-tls", "secure", "secure.default.svc",
        caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "upstream-ca"}],
    )  # fmt: skip
    config = served(backend("secure", upstream.address), ca_map, policy, *gateway_objects(port))
    (tls_backend,) = [b for b in config.backends if b.protocol == "https"]
    assert tls_backend.tls is not None and tls_backend.tls.verify
    gw = await start_gateway(nursery, config)

    async def routed() -> httpx.Response:
        with trio.fail_after(10):
            while True:  # the Gateway's listener opens after the config is applied
                try:
                    return await get(port)
                except httpx.ConnectError:
                    await trio.sleep(0.05)

    r = await routed()
    assert r.status_code == 200
    assert r.json()["sni"] == "secure.default.svc"

    # The policy's hostname is not in the certificate: 502, nothing in clear text.
    wrong = tls_policy(
        "secure-tls", "secure", "elsewhere.default.svc",
        caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "upstream-ca"}],
    )  # fmt: skip
    objects: list[KubeObject | list[KubeObject]] = [
        backend("secure", upstream.address),
        ca_map,
        wrong,
        *gateway_objects(port),
    ]
    gw.apply(served(*objects, version=2))
    r = await get(port)
    assert (r.status_code, r.headers["x-mesh-reason"]) == (502, "upstream-tls-failure")

    # A policy whose CA reference does not resolve: the backend answers 5xx.
    missing = tls_policy(
        "secure-tls", "secure", "secure.default.svc",
        caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "nowhere"}],
    )  # fmt: skip
    gw.apply(
        served(backend("secure", upstream.address), missing, *gateway_objects(port), version=3)
    )
    requests_before = len(upstream.requests)
    r = await get(port)
    assert r.status_code == 500
    assert len(upstream.requests) == requests_before  # nothing reached the backend


async def test_a_mirror_copy_to_a_backend_with_a_policy_is_re_encrypted(
    nursery: trio.Nursery,
) -> None:
    from tests.ingress.harness import echo_servers

    ca = CA()
    upstream = await start_upstream(nursery, "secure.default.svc", ca=ca)
    port = free_port()
    route = obj(
        "HTTPRoute",
        "shop",
        "default",
        spec={
            "parentRefs": [{"name": "web"}],
            "hostnames": [HOST],
            "rules": [
                {
                    "backendRefs": [{"name": "web", "port": 80}],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "secure", "port": 80}},
                        }
                    ],
                }
            ],
        },
    )
    with echo_servers("web") as up:
        config = served(
            backend("web", up["web"]),
            backend("secure", upstream.address),
            obj("ConfigMap", "upstream-ca", "default", data={"ca.crt": ca.pem.decode()}),
            tls_policy(
                "secure-tls",
                "secure",
                "secure.default.svc",
                caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "upstream-ca"}],
            ),
            *gateway_objects(port)[:2],
            route,
        )
        await start_gateway(nursery, config)
        with trio.fail_after(10):
            while True:
                try:
                    r = await get(port, "/copied")
                    break
                except httpx.ConnectError:
                    await trio.sleep(0.05)
            assert r.status_code == 200 and r.json()["name"] == "web"
            await upstream.arrived.wait()  # the copy goes out in the background
    assert upstream.requests[0].target == b"/copied"
    assert upstream.sni == ["secure.default.svc"]
