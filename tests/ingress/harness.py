"""A gateway on loopback for end-to-end tests: echo upstreams, cluster objects, configs.

The gateway runs in the test's trio run (``start_gateway``), fed configs that the control
plane's own translator makes from cluster objects (``served``), so a test exercises the path
a real deployment takes from an Ingress or an HTTPRoute to the bytes on the wire.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

import trio

from mesh.config.gateway import ServedGatewayConfig
from mesh.control.translate.gateway_served import translate_served
from mesh.ingress import echo
from mesh.ingress.gateway import IngressGateway
from mesh.ingress.server import Telemetry
from mesh.objects import KubeObject
from tests.routing.world import ingress, ingress_class, obj, path, snapshot

__all__ = ["ingress", "ingress_class", "obj", "path"]

_NEXT = itertools.count(1)


def loopback_ip() -> str:
    """A fresh 127.22.x.y address for an upstream (tests never share one)."""
    n = next(_NEXT)
    return f"127.22.{n // 250}.{n % 250 + 1}"


@contextmanager
def echo_servers(*names: str) -> Iterator[dict[str, tuple[str, int]]]:
    """One echo server per name, each on its own loopback address: name -> (ip, port)."""
    servers: list[ThreadingHTTPServer] = []
    out = {}
    try:
        for name in names:
            ip = loopback_ip()
            (server,) = echo.serve(name, [(ip, 0)])
            servers.append(server)
            out[name] = (ip, server.server_address[1])
        yield out
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def backend(name: str, *endpoints: tuple[str, int], namespace: str = "default") -> list[KubeObject]:
    """A Service ``name`` (port 80, named http) whose EndpointSlice holds ``endpoints``."""
    ports = {port for _, port in endpoints} or {8080}
    (port,) = ports  # one target port per Service, as the slices below say
    svc = obj(
        "Service",
        name,
        namespace,
        spec={"ports": [{"name": "http", "port": 80, "targetPort": port}]},
    )
    eps = obj(
        "EndpointSlice",
        f"{name}-1",
        namespace,
        meta={"labels": {"kubernetes.io/service-name": name}},
        addressType="IPv4",
        endpoints=[{"addresses": [ip]} for ip, _ in endpoints],
        ports=[{"name": "http", "port": port}],
    )
    return [svc, eps]


def tls_secret(
    name: str, cert_pem: bytes, key_pem: bytes, namespace: str = "default"
) -> KubeObject:
    return obj(
        "Secret",
        name,
        namespace,
        type="kubernetes.io/tls",
        data={
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    )


def served(*objects: KubeObject | list[KubeObject], version: int = 1) -> ServedGatewayConfig:
    """The gateway's config for these objects, as the control plane translates it."""
    flat: list[KubeObject] = [ingress_class()]
    for o in objects:
        flat.extend(o if isinstance(o, list) else [o])
    config = translate_served(snapshot(*flat), gateway_cidr="127.11.0.0/16")
    return config.model_copy(update={"version": version})


async def start_gateway(
    nursery: trio.Nursery, config: ServedGatewayConfig | None, **kwargs: Any
) -> IngressGateway:
    """A gateway on free ports of 127.0.0.1 (HTTP ``gw.port``, TLS ``gw.tls_port``)."""
    kwargs.setdefault("telemetry", Telemetry())
    gw = IngressGateway(("127.0.0.1", 0), ("127.0.0.1", 0), **kwargs)
    if config is not None:
        gw.apply(config)
    await nursery.start(gw.run)
    return gw
