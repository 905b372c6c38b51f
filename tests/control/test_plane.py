"""The control plane: controllers and translators wired to the store, publishing configs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mesh.config.base import ComponentConfig
from mesh.control.plane import ControlPlane, default_translators
from mesh.control.store import Snapshot
from mesh.log import TextFormatter
from mesh.objects import EndpointSlice, Pod, Service


class NamesConfig(ComponentConfig):
    services: tuple[str, ...] = ()


def names(snap: Snapshot) -> NamesConfig:
    return NamesConfig(services=tuple(f"{o.namespace}/{o.name}" for o in snap.list("Service")))


def svc(name: str, **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    spec.setdefault("selector", {"app": name})
    return Service.model_validate({"metadata": {"name": name}, "spec": spec})


def pod(name: str, ip: str, app: str) -> Pod:
    return Pod.model_validate(
        {
            "metadata": {"name": name, "labels": {"app": app}},
            "status": {"phase": "Running", "podIP": ip},
        }
    )


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    p = ControlPlane(None, translators={"names": names}, wanted=["names"])
    async with trio.open_nursery() as nursery:
        await nursery.start(p.run)
        yield p
        nursery.cancel_scope.cancel()


async def test_first_config_published_at_start(plane: ControlPlane) -> None:
    config = plane.current("names")
    assert isinstance(config, NamesConfig)
    assert config.services == ()
    assert config.version == 0
    assert plane.kinds == ["names"]


async def test_burst_of_changes_is_one_publish(
    plane: ControlPlane, autojump_clock: trio.testing.MockClock
) -> None:
    for i in range(10):
        plane.apply(svc(f"s{i}"))
    await plane.synced()
    config = plane.current("names")
    assert isinstance(config, NamesConfig)
    assert len(config.services) == 10
    assert config.version == plane.store.revision
    publishes = plane.registry.get_sample_value(
        "mesh_control_config_publishes_total", {"kind": "names"}
    )
    assert publishes == 2


async def test_unchanged_content_is_not_republished(
    plane: ControlPlane, autojump_clock: trio.testing.MockClock
) -> None:
    plane.apply(svc("web"))
    await plane.synced()
    first = plane.current("names")
    plane.apply(pod("p", "127.0.0.2", app="nothing"))  # the names translator ignores Pods
    await plane.synced()
    assert plane.current("names") is first


async def test_configs_yields_current_then_latest(
    plane: ControlPlane, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[ComponentConfig] = []
    stream = plane.configs("names")
    seen.append(await stream.__anext__())
    # Two publishes while the subscriber is away: it only sees the latest.
    plane.apply(svc("a"))
    await plane.synced()
    plane.apply(svc("b"))
    await plane.synced()
    seen.append(await stream.__anext__())
    await stream.aclose()
    assert [c.version for c in seen] == [0, plane.store.revision]
    last = seen[-1]
    assert isinstance(last, NamesConfig) and last.services == ("default/a", "default/b")


async def test_unknown_kind(plane: ControlPlane) -> None:
    with pytest.raises(KeyError):
        await plane.configs("nope").__anext__()


async def test_failing_translator_keeps_last_config_and_others_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def flaky(snap: Snapshot) -> NamesConfig:
        if snap.list("Pod"):
            raise RuntimeError("boom")
        return names(snap)

    p = ControlPlane(None, translators={"flaky": flaky, "names": names}, wanted=["flaky", "names"])
    async with trio.open_nursery() as nursery:
        await nursery.start(p.run)
        before = p.current("flaky")
        p.apply(pod("x", "127.0.0.3", app="x"))
        p.apply(svc("web"))
        await p.synced()
        assert p.current("flaky") is before
        config = p.current("names")
        assert isinstance(config, NamesConfig) and config.services == ("default/web",)
        nursery.cancel_scope.cancel()


async def test_endpoints_controller_follows_pods(
    plane: ControlPlane, autojump_clock: trio.testing.MockClock
) -> None:
    plane.apply(svc("web"))
    plane.apply(pod("web-1", "127.0.0.11", app="web"))
    for _ in range(10):
        await trio.sleep(0.1)
        slices = plane.store.list("EndpointSlice")[0]
        if slices:
            break
    [es] = slices
    assert isinstance(es, EndpointSlice)
    assert [ep.addresses for ep in es.endpoints] == [("127.0.0.11",)]
    plane.delete("Pod", "default", "web-1")
    for _ in range(10):
        await trio.sleep(0.1)
        if not plane.store.list("EndpointSlice")[0]:
            break
    assert plane.store.list("EndpointSlice")[0] == []


async def test_manifest_dir_services_get_ips_and_slices(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec: {selector: {app: web}, ports: [{port: 80}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, labels: {app: web}}\n"
        "status: {phase: Running, podIP: 127.0.0.21}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {}\n"
    )
    p = ControlPlane(
        tmp_path,
        service_cidr="127.10.0.0/16",
        translators={"names": names},
        wanted=["names"],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(p.run)
        web = p.store.get("Service", "default", "web")
        assert isinstance(web, Service) and web.spec.cluster_ip is not None
        assert web.spec.cluster_ip.startswith("127.10.")
        assert len(p.store.list("EndpointSlice")[0]) == 1
        config = p.current("names")
        assert isinstance(config, NamesConfig) and config.services == ("default/web",)
        assert [e.object for e in p.errors] == ["Service/default/bad"]
        assert p.status()["errors"] and p.status()["configs"] == {"names": config.version}
        nursery.cancel_scope.cancel()


def test_default_translators_are_the_builtin_kinds() -> None:
    assert set(default_translators()) <= {"dns", "ingress", "proxy"}


@pytest.mark.parametrize(
    ("wanted", "fields"),
    [
        # mesh control alone: nothing is translated until a component asks
        ((), {"built_on_first_request": "dns,ingress,proxy"}),
        (
            ("dns", "proxy"),
            {"translating": "dns,proxy", "built_on_first_request": "ingress"},
        ),
        (("dns", "ingress", "proxy"), {"translating": "dns,ingress,proxy"}),
    ],
)
async def test_the_start_line_says_which_kinds_are_built_and_when(
    caplog: pytest.LogCaptureFixture, wanted: tuple[str, ...], fields: dict[str, str]
) -> None:
    plane = ControlPlane(wanted=wanted)
    with caplog.at_level(logging.INFO, logger="mesh.control"):
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            nursery.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if r.getMessage() == "control plane started"]
    said = {k: getattr(record, k) for k in ("translating", "built_on_first_request", "kinds")
            if hasattr(record, k)}  # fmt: skip
    assert said == fields
    assert "[]" not in TextFormatter().format(record)
