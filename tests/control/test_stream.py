"""The config stream over real loopback sockets: server routes, watch, client reconnects."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import pytest
import trio

from mesh.control.plane import ControlPlane
from mesh.control.stream import ConfigServer, resolve_kind
from mesh.httpserve import HttpServer, Request, Response, StreamingResponse
from mesh.stream_client import (
    Backoff,
    LineSplitter,
    StreamError,
    fetch_json,
    parse_url,
    stream_configs,
)
from tests.control.plane_fixtures import FAST, NamesConfig, names, svc


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes (bounded)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    with trio.fail_after(5):
        async with stream:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlPlane, ConfigServer]]:
    plane = ControlPlane(None, translators={"names": names})
    server = ConfigServer(plane, ("127.0.0.1", 0), heartbeat=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(server.run)
        yield plane, server
        nursery.cancel_scope.cancel()


def url(server: ConfigServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_routes(served: tuple[ControlPlane, ConfigServer]) -> None:
    plane, server = served
    plane.apply(svc("web"))
    await plane.synced()
    assert await fetch_json(url(server), "/healthz") == (200, "ok\n")
    status, body = await fetch_json(url(server), "/v1/config/names")
    assert status == 200 and body["services"] == ["web"] and body["version"] == 1
    status, listing = await fetch_json(url(server), "/v1/objects/svc?namespace=default")
    assert status == 200 and listing["kind"] == "List"
    [item] = listing["items"]
    assert item["kind"] == "Service" and item["spec"]["clusterIP"].startswith("127.10.")
    assert (await fetch_json(url(server), "/v1/objects/Service?namespace=other"))[1]["items"] == []
    assert (await fetch_json(url(server), "/v1/errors")) == (200, {"errors": [], "warnings": []})
    assert (await fetch_json(url(server), "/v1/config/nope"))[0] == 404
    assert (await fetch_json(url(server), "/v1/watch/nope"))[0] == 404
    assert (await fetch_json(url(server), "/v1/objects/widgets"))[0] == 404
    assert (await fetch_json(url(server), "/no/such/path"))[0] == 404


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    ],
)
async def test_malformed_request_is_400_and_closed(
    served: tuple[ControlPlane, ConfigServer], request_bytes: bytes
) -> None:
    _, server = served
    reply = await raw_exchange(server.port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in reply.lower()


async def test_method_not_allowed_and_keep_alive(served: tuple[ControlPlane, ConfigServer]) -> None:
    _, server = served
    two = (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    reply = await raw_exchange(server.port, two)
    assert reply.startswith(b"HTTP/1.1 405 ")
    assert reply.count(b"HTTP/1.1 ") == 2 and reply.endswith(b"ok\n")


async def test_watch_stream_has_snapshots_and_heartbeats(
    served: tuple[ControlPlane, ConfigServer],
) -> None:
    _, server = served
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /v1/watch/names HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while b"1\r\n\n\r\n" not in data:  # a chunk holding one empty line
                data += await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in data.lower()
    assert b'{"version":0,"services":[]}\n' in data


async def test_client_follows_new_versions(served: tuple[ControlPlane, ConfigServer]) -> None:
    plane, server = served
    seen: list[NamesConfig] = []
    with trio.fail_after(5):
        async for config in stream_configs(url(server), "names", NamesConfig, backoff=FAST):
            seen.append(config)
            if len(seen) == 1:
                plane.apply(svc("a"))
            elif len(seen) == 2:
                plane.apply(svc("b"))
            else:
                break
    assert [c.services for c in seen] == [(), ("a",), ("a", "b")]


async def test_client_waits_for_server_then_catches_up() -> None:
    with trio.socket.socket() as sock:  # find a free port, then let it go
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plane = ControlPlane(None, translators={"names": names})
    plane.apply(svc("early"))
    got: list[NamesConfig] = []
    arrived = trio.Event()

    async def consume() -> None:
        async for config in stream_configs(
            f"http://127.0.0.1:{port}", "names", NamesConfig, backoff=FAST
        ):
            got.append(config)
            arrived.set()
            return

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(0.2)  # a few refused connections
            assert got == []
            await nursery.start(plane.run)
            await nursery.start(ConfigServer(plane, ("127.0.0.1", port)).run)
            await arrived.wait()
            nursery.cancel_scope.cancel()
    assert got[0].services == ("early",)


async def test_invalid_json_drops_the_connection_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connections = 0

    async def bad_then_good(request: Request) -> Response | StreamingResponse:
        nonlocal connections
        connections += 1

        async def body() -> AsyncIterator[bytes]:
            if connections == 1:
                yield b"{not json\n"
            else:
                yield b'{"version": 7, "services": ["x"]}\n'
            await trio.sleep_forever()

        return StreamingResponse(body())

    server = HttpServer(("127.0.0.1", 0), bad_then_good)
    with trio.fail_after(5), caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            stream = stream_configs(
                f"http://127.0.0.1:{server.port}", "names", NamesConfig, backoff=FAST
            )
            first = await stream.__anext__()
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert first.version == 7 and connections == 2
    assert any("config stream lost" in r.getMessage() for r in caplog.records)


def test_backoff_grows_bounded_with_jitter() -> None:
    rng = random.Random(1)
    b = Backoff(initial=0.1, maximum=2.0)
    delays = [b.delay(i, rng) for i in range(100)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.1 and max(delays[10:]) > 1.0
    assert len(set(delays[20:])) > 1  # jittered


def test_line_splitter_byte_at_a_time() -> None:
    data = b'{"a":1}\n\n{"b":2}\n{"c"'
    whole = LineSplitter().feed(data)
    split = LineSplitter()
    pieces = [line for i in range(len(data)) for line in split.feed(data[i : i + 1])]
    assert whole == pieces == [b'{"a":1}', b"", b'{"b":2}']
    with pytest.raises(StreamError):
        LineSplitter(max_line=4).feed(b"123456")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:7700", ("127.0.0.1", 7700, "")),
        ("127.0.0.1:7700", ("127.0.0.1", 7700, "")),
        ("http://localhost:80/mesh/", ("localhost", 80, "/mesh")),
    ],
)
def test_parse_url(given: str, expected: tuple[str, int, str]) -> None:
    assert parse_url(given) == expected


def test_parse_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="http://"):
        parse_url("https://x:1")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("svc", "Service"),
        ("services", "Service"),
        ("Service", "Service"),
        ("pods", "Pod"),
        ("endpointslices", "EndpointSlice"),
        ("ep", "Endpoints"),
        ("widgets", None),
    ],
)
def test_resolve_kind(name: str, kind: str | None) -> None:
    assert resolve_kind(name) == kind
