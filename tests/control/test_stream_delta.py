"""Deltas on the config stream, over real loopback sockets: the server sends each new version
as a delta to a subscriber that has the version before, a full snapshot otherwise; the
client applies deltas and resyncs when one does not fit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from mesh.config import delta
from mesh.config.dns import DnsConfig
from mesh.config.proxy import ProxyConfig
from mesh.control.plane import ControlPlane
from mesh.control.stream import ConfigServer
from mesh.httpserve import HttpServer, Request, Response, StreamingResponse
from mesh.objects import Service
from mesh.stream_client import stream_configs
from tests.control.plane_fixtures import FAST, NamesConfig, names, svc


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlPlane, ConfigServer]]:
    plane = ControlPlane(None, translators={"names": names}, debounce=0)
    server = ConfigServer(plane, ("127.0.0.1", 0), heartbeat=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(server.run)
        yield plane, server
        nursery.cancel_scope.cancel()


def url(server: ConfigServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def sent(plane: ControlPlane, kind: str, form: str, what: str = "total") -> float:
    name = "mesh_control_stream_sent_" + what
    value = plane.registry.get_sample_value(name, {"kind": kind, "form": form})
    return value or 0.0


async def edit(plane: ControlPlane, *names_: str) -> None:
    for name in names_:
        plane.apply(svc(name))
    await plane.synced()


async def test_edits_arrive_as_deltas_and_a_late_subscriber_gets_a_full_snapshot(
    served: tuple[ControlPlane, ConfigServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    plane, server = served
    diffs: list[int] = []
    real_diff = delta.diff

    def counting_diff(old: Any, new: Any) -> Any:
        diffs.append(new.version)
        return real_diff(old, new)

    monkeypatch.setattr(delta, "diff", counting_diff)
    first: list[NamesConfig] = []
    second: list[NamesConfig] = []
    got_first = [trio.Event() for _ in range(3)]
    got_second = [trio.Event() for _ in range(2)]

    async def follow(out: list[NamesConfig], arrived: list[trio.Event]) -> None:
        async for config in stream_configs(url(server), "names", NamesConfig, backoff=FAST):
            out.append(config)
            arrived[len(out) - 1].set()
            if len(out) == len(arrived):
                return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, first, got_first)
            await got_first[0].wait()
            await edit(plane, "a")
            await got_first[1].wait()
            nursery.start_soon(follow, second, got_second)
            await got_second[0].wait()
            await edit(plane, "b")
    assert [c.services for c in first] == [(), ("a",), ("a", "b")]
    assert [c.services for c in second] == [("a",), ("a", "b")]
    # Each subscriber's first line is whole; the two edits travel as deltas, the second one
    # to both subscribers, made once.
    assert sent(plane, "names", "full") == 2
    assert sent(plane, "names", "delta") == 3
    assert diffs == [first[1].version, first[2].version]


async def test_a_subscriber_that_fell_behind_gets_a_full_snapshot(
    served: tuple[ControlPlane, ConfigServer],
) -> None:
    plane, server = served
    lines = server.watch("names", deltas=True)
    with trio.fail_after(5):
        assert not delta.is_delta(await lines.__anext__())  # the first: whole
        await edit(plane, "a")
        assert delta.is_delta(await lines.__anext__())
        await edit(plane, "b")
        await edit(plane, "c")  # two versions while the subscriber was busy
        line = await lines.__anext__()
        assert not delta.is_delta(line)
        assert NamesConfig.model_validate_json(line).services == ("a", "b", "c")
        await edit(plane, "d")
        assert delta.is_delta(await lines.__anext__())
    await lines.aclose()


@pytest.mark.parametrize("query", ["", "?deltas=0", "?deltas=2"])
async def test_clients_that_do_not_read_this_delta_format_get_full_snapshots(
    served: tuple[ControlPlane, ConfigServer], query: str
) -> None:
    plane, server = served
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(f"GET /v1/watch/names{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while b'"services":[]' not in data:
                data += await stream.receive_some(65536)
            await edit(plane, "a")
            while b'"services":["a"]' not in data:
                data += await stream.receive_some(65536)
    assert b"_delta" not in data
    assert sent(plane, "names", "delta") == 0 and sent(plane, "names", "full") == 2


def clusterip(name: str, port: int = 80) -> Service:
    return Service.model_validate(
        {"metadata": {"name": name, "namespace": "bench"}, "spec": {"ports": [{"port": port}]}}
    )


async def one_edit_delta(n: int, kind: str) -> tuple[int, int]:
    """(delta bytes, full snapshot bytes) of editing one Service's port among ``n``."""
    plane = ControlPlane(None, debounce=0)
    server = ConfigServer(plane, ("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        for i in range(n):
            plane.apply(clusterip(f"svc-{i:05d}"))
        await plane.synced()
        base = plane.current(kind)
        plane.apply(clusterip(f"svc-{n // 2:05d}", port=8080))
        await plane.synced()
        new = plane.current(kind)
        assert base is not None and new is not None and plane.previous(kind) is base
        line = server.deltas.line(kind, base, new)
        assert line is not None
        assert delta.decode_delta(base, line) == new
        nursery.cancel_scope.cancel()
    return len(line), len(plane.encoded(new))


@pytest.mark.parametrize("kind", ["dns", "proxy"])
async def test_one_service_edit_sends_a_delta_that_does_not_grow_with_the_services(
    kind: str,
) -> None:
    small_delta, small_full = await one_edit_delta(20, kind)
    big_delta, big_full = await one_edit_delta(1000, kind)
    assert big_full > 40 * small_full  # the snapshot grows with the Services...
    # ... the delta does not: only its numbers (position, length) take a digit or two more.
    assert small_delta <= big_delta <= small_delta + 8
    assert big_delta < big_full / 200


async def test_a_delta_onto_another_base_is_never_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that sends a delta made against a version the client does not hold: the
    client drops the connection and starts again from a full snapshot."""
    v1 = NamesConfig(version=1, services=("a",))
    v2 = NamesConfig(version=2, services=("a", "b"))
    v3 = NamesConfig(version=3, services=("a", "b", "c"))
    v4 = NamesConfig(version=4, services=("a", "b", "c", "wrong"))
    v5 = NamesConfig(version=5, services=("a", "b", "c", "d"))
    script = [
        [v1.model_dump_json().encode() + b"\n", encode(v1, v2), encode(v3, v4)],
        [v5.model_dump_json().encode() + b"\n"],
    ]
    connections: list[str] = []

    async def handle(request: Request) -> Response | StreamingResponse:
        connections.append(f"{request.path}?deltas={request.query.get('deltas')}")
        lines = script[len(connections) - 1]

        async def body() -> AsyncIterator[bytes]:
            for line in lines:
                yield line
            await trio.sleep_forever()

        return StreamingResponse(body())

    server = HttpServer(("127.0.0.1", 0), handle)
    got: list[NamesConfig] = []
    with trio.fail_after(5), caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            stream = stream_configs(
                f"http://127.0.0.1:{server.port}", "names", NamesConfig, backoff=FAST
            )
            async for config in stream:
                got.append(config)
                if len(got) == 3:
                    break
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert [c.version for c in got] == [1, 2, 5]
    assert connections == ["/v1/watch/names?deltas=1"] * 2
    [lost] = [r for r in caplog.records if r.getMessage() == "config stream lost"]
    assert lost.error == (  # type: ignore[attr-defined]
        "a config delta from version 3 does not apply to version 2; resyncing"
    )


def encode(base: Any, new: Any) -> bytes:
    doc = delta.diff(base, new)
    assert doc is not None
    return delta.encode(doc)


async def test_a_delta_of_another_format_is_one_clear_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v1 = NamesConfig(version=1, services=("a",))
    future = encode(v1, NamesConfig(version=2, services=("b",))).replace(
        b'{"_delta":1,', b'{"_delta":2,'
    )

    async def handle(request: Request) -> Response | StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield v1.model_dump_json().encode() + b"\n" + future
            await trio.sleep_forever()

        return StreamingResponse(body())

    server = HttpServer(("127.0.0.1", 0), handle)
    with trio.fail_after(5), caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            stream = stream_configs(
                f"http://127.0.0.1:{server.port}", "names", NamesConfig, backoff=FAST
            )
            assert (await stream.__anext__()).version == 1
            with trio.move_on_after(0.3):
                await stream.__anext__()  # the delta is refused: nothing more comes
            await stream.aclose()
            nursery.cancel_scope.cancel()
    errors = {
        getattr(r, "error", "") for r in caplog.records if r.getMessage() == "config stream lost"
    }
    assert errors == {
        "the control plane sent a config delta of format 2 and this process reads format 1 "
        "only: run the same mesh version on both sides"
    }


def test_the_built_in_configs_travel_as_deltas() -> None:
    from mesh.config.gateway import ServedGatewayConfig

    assert all(delta.supports_deltas(t) for t in (DnsConfig, ProxyConfig, ServedGatewayConfig))
