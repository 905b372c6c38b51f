"""The control plane's object watch (``/v1/objects/KIND?watch=1``), as the API server's."""

from __future__ import annotations

import json
from typing import Any

import trio

from mesh.control.plane import ControlPlane
from mesh.control.store import Store
from mesh.control.stream import ConfigServer
from mesh.httpserve import Request, Response, StreamingResponse
from mesh.objects import Service
from tests.control.plane_fixtures import names


def svc(name: str, ns: str = "default", port: int = 80) -> Service:
    return Service.model_validate(
        {"metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"port": port}]}}
    )


def request(query: dict[str, str]) -> Request:
    return Request("GET", "/v1/objects/svc", "/v1/objects/svc", {"watch": "1", **query})


async def next_line(resp: StreamingResponse) -> Any:
    with trio.fail_after(5):
        line = await resp.chunks.__anext__()
    return json.loads(line) if line.strip() else None


async def test_events_in_order_from_a_version() -> None:
    plane = ControlPlane(None, translators={"names": names})
    server = ConfigServer(plane, ("127.0.0.1", 0), heartbeat=0.05)
    plane.apply(svc("before"))
    since = plane.store.revision
    plane.apply(svc("web", "shop"))
    plane.apply(svc("other", "elsewhere"))
    resp = await server.handle(request({"resourceVersion": str(since), "namespace": "shop"}))
    assert isinstance(resp, StreamingResponse)
    added = await next_line(resp)
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "web")
    assert added["object"]["metadata"]["creationTimestamp"].endswith("Z")
    assert await next_line(resp) is None  # a heartbeat: nothing else in "shop"
    plane.apply(svc("web", "shop", port=81))
    plane.delete("Service", "shop", "web")
    modified, deleted = await next_line(resp), await next_line(resp)
    assert modified["type"] == "MODIFIED"
    assert modified["object"]["spec"]["ports"][0]["port"] == 81
    assert deleted["type"] == "DELETED"
    await resp.chunks.aclose()  # type: ignore[attr-defined]


async def test_too_old_or_bad_versions() -> None:
    plane = ControlPlane(None, translators={"names": names}, history=2)
    server = ConfigServer(plane, ("127.0.0.1", 0))
    for i in range(5):
        plane.apply(svc(f"s{i}"))
    gone = await server.handle(request({"resourceVersion": "1"}))
    assert isinstance(gone, Response) and gone.status == 410
    bad = await server.handle(request({"resourceVersion": "latest"}))
    assert isinstance(bad, Response)
    assert (bad.status, bad.body) == (400, b"resourceVersion 'latest' is not a number\n")


def test_store_records_creation_time_once() -> None:
    now = [1000.0]
    store = Store(clock=lambda: now[0])
    store.apply(svc("web"))
    now[0] = 2000.0
    store.apply(svc("web", port=81))  # a change keeps the creation time
    assert store.created(("Service", "default", "web")) == 1000.0
    store.delete("Service", "default", "web")
    assert store.created(("Service", "default", "web")) is None
