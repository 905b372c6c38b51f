"""Feeding components (plane, control stream, file) and the admin endpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, Counter

from mesh.admin import AdminServer
from mesh.component import Component, ConfigRejected
from mesh.control.plane import ControlPlane
from mesh.control.stream import ConfigServer
from mesh.feed import feed_from_control, feed_from_file, feed_from_plane, load_config_file
from mesh.stream_client import fetch_json
from tests.control.plane_fixtures import FAST, NamesConfig, names, svc


class FakeComponent:
    """A component that records what it is given and rejects configs naming "bad"."""

    def __init__(self, name: str = "names") -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.applies = Counter("mesh_fake_applies", "configs applied", registry=self.registry)
        self.config: NamesConfig | None = None

    @property
    def ready(self) -> bool:
        return self.config is not None

    def apply(self, config: NamesConfig) -> None:
        if "bad" in config.services:
            raise ConfigRejected("bad service")
        self.config = config
        self.applies.inc()

    def config_json(self) -> Any:
        return self.config.model_dump(mode="json") if self.config else None

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()


def services_of(comp: FakeComponent) -> tuple[str, ...] | None:
    return comp.config.services if comp.config else None


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds, for at most two seconds."""
    for _ in range(200):
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


def test_fake_is_a_component() -> None:
    assert isinstance(FakeComponent(), Component)


async def test_feed_from_plane_keeps_previous_on_rejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = ControlPlane(None, translators={"names": names})
    comp = FakeComponent()
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(feed_from_plane, plane, comp)
        plane.apply(svc("a"))
        await eventually(lambda: services_of(comp) == ("a",))
        with caplog.at_level(logging.ERROR):
            plane.apply(svc("bad"))
            await eventually(lambda: any("rejected" in r.getMessage() for r in caplog.records))
        assert services_of(comp) == ("a",)
        plane.delete("Service", "default", "bad")
        plane.apply(svc("c"))
        await eventually(lambda: services_of(comp) == ("a", "c"))
        nursery.cancel_scope.cancel()


async def serve_plane(
    plane: ControlPlane,
    port: int,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            server = ConfigServer(plane, ("127.0.0.1", port), heartbeat=0.1)
            await nursery.start(server.run)
            task_status.started(server.port)


async def test_component_keeps_last_config_across_plane_restart() -> None:
    comp = FakeComponent()
    first = ControlPlane(None, translators={"names": names})
    first.apply(svc("a"))
    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()
        port = await nursery.start(serve_plane, first, 0, first_scope)
        url = f"http://127.0.0.1:{port}"
        await nursery.start(
            partial(
                feed_from_control, url, comp, config_type=NamesConfig, backoff=FAST, idle_timeout=1
            )
        )
        await eventually(lambda: services_of(comp) == ("a",))
        first_scope.cancel()  # the control plane goes away
        await trio.sleep(0.5)  # several failed reconnects
        assert services_of(comp) == ("a",) and comp.ready
        second = ControlPlane(None, translators={"names": names})
        second.apply(svc("a"))
        second.apply(svc("b"))
        await nursery.start(serve_plane, second, port, trio.CancelScope())
        await eventually(lambda: services_of(comp) == ("a", "b"))
        nursery.cancel_scope.cancel()


async def test_feed_from_file_json_yaml_and_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "names.yaml"
    path.write_text(json.dumps({"version": 1, "services": ["a"]}))
    comp = FakeComponent()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(feed_from_file, path, comp, config_type=NamesConfig, poll_interval=0.02)
        )
        await eventually(lambda: services_of(comp) == ("a",))
        with caplog.at_level(logging.ERROR):
            path.write_text('{"version": 2, "services": ["a"], "typo": 1}')
            await eventually(
                lambda: any("invalid config" in r.getMessage() for r in caplog.records)
            )
        assert services_of(comp) == ("a",)
        path.write_text("version: 3\nservices: [a, b]\n")
        await eventually(lambda: services_of(comp) == ("a", "b"))
        nursery.cancel_scope.cancel()


def test_load_config_file_errors(tmp_path: Path) -> None:
    from mesh.feed import ConfigFileError

    bad = tmp_path / "x.yaml"
    bad.write_text("services: {not: [closed\n")
    with pytest.raises(ConfigFileError, match="not valid JSON or YAML"):
        load_config_file(bad, NamesConfig)
    bad.write_text("services: 5\n")
    with pytest.raises(ConfigFileError, match="services"):
        load_config_file(bad, NamesConfig)
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml", NamesConfig)


async def test_admin_routes() -> None:
    plane = ControlPlane(None, translators={"names": names})
    comp = FakeComponent()
    admin = AdminServer(("127.0.0.1", 0), [comp], plane)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        url = f"http://127.0.0.1:{admin.port}"
        status, body = await fetch_json(url, "/ready")
        assert status == 503 and "names" in body and "control-plane" in body
        await nursery.start(plane.run)
        await nursery.start(feed_from_plane, plane, comp)
        await eventually(lambda: comp.ready)
        assert await fetch_json(url, "/ready") == (200, "ready\n")
        status, metrics = await fetch_json(url, "/metrics")
        assert status == 200
        assert "mesh_fake_applies_total 1.0" in metrics
        assert "mesh_control_store_revision" in metrics
        status, configs = await fetch_json(url, "/config")
        assert configs["names"] == {"version": 0, "services": []}
        assert configs["control-plane"]["configs"] == {"names": 0}
        assert await fetch_json(url, "/config/names") == (200, {"version": 0, "services": []})
        assert (await fetch_json(url, "/config/nope"))[0] == 404
        assert (await fetch_json(url, "/nope"))[0] == 404
        nursery.cancel_scope.cancel()
