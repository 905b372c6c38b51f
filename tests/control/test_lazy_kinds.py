"""A config kind is translated only once something wants it (control/plane.py ``want``).

Counts translator runs through the plane's ``builds`` seam; never timings.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from mesh.config.base import ComponentConfig
from mesh.control.plane import ControlPlane
from mesh.control.stream import ConfigServer
from mesh.objects import Ingress, Pod
from mesh.stream_client import fetch_json
from tests.control.test_endpoints import pod, service
from tests.routing.world import ingress, ingress_class, path

KINDS = ("dns", "ingress", "proxy")


def load(plane: ControlPlane, n: int = 6) -> None:
    """Services with Pods, and Ingresses (one ours, one another controller's)."""
    plane.apply(ingress_class())
    for i in range(n):
        plane.apply(service(f"svc-{i}"))
        for j in range(2):
            plane.apply(pod(f"pod-{i}-{j}", f"10.0.{i}.{j + 1}", app=f"svc-{i}"))
    plane.apply(ingress("mine", "foo.example", path("/", "svc-0")))
    plane.apply(ingress("theirs", "foo.example", path("/", "svc-1"), class_name="nginx"))
    plane.reconcile_endpoints()


def built_plane(wanted: Iterable[str]) -> ControlPlane:
    plane = ControlPlane(None, node_name="node-1", wanted=wanted)
    load(plane)
    plane.translate(plane.store.snapshot())
    return plane


def content(config: ComponentConfig | None) -> dict[str, object]:
    assert config is not None
    return config.model_dump(exclude={"version"})


def edit(plane: ControlPlane) -> None:
    """One Pod moves to another Service, the controller follows, the plane translates."""
    before = plane.store.revision
    moved = plane.store.get("Pod", "default", "pod-2-0")
    assert isinstance(moved, Pod)
    meta = moved.metadata.model_copy(update={"labels": {"app": "svc-3"}})
    plane.apply(moved.model_copy(update={"metadata": meta}))
    plane.reconcile_endpoints(plane._affected_since(before))
    plane.translate(plane.store.snapshot(), plane._events_since(before))


def test_a_kind_nobody_wants_is_never_translated() -> None:
    plane = built_plane(wanted=["dns"])
    assert plane.builds == {"dns": 1}
    edit(plane)
    plane.translate(plane.store.snapshot(), None)  # a from-scratch run too
    assert set(plane.builds) == {"dns"}
    assert plane.wanted == {"dns"}
    assert plane.status()["configs"].keys() == {"dns"}


def test_the_first_reader_gets_the_full_config_an_eager_plane_built() -> None:
    eager = built_plane(wanted=KINDS)
    lazy = built_plane(wanted=[])
    assert lazy.builds == {}
    for kind in KINDS:
        late = lazy.current(kind)  # the first read builds it, at the current revision
        assert late is not None and late.version == lazy.store.revision
        assert content(late) == content(eager.current(kind))
    assert lazy.builds == dict.fromkeys(KINDS, 1)
    # From then on it follows changes as the eager one does, incrementally.
    edit(eager)
    edit(lazy)
    for kind in KINDS:
        assert content(lazy.current(kind)) == content(eager.current(kind))
    assert lazy.current("proxy") is not lazy.previous("proxy")  # the edit republished it


def test_a_broken_kind_wanted_late_publishes_nothing_and_the_others_go_on() -> None:
    def broken(snap: object) -> ComponentConfig:
        raise RuntimeError("boom")

    plane = ControlPlane(None, translators={"broken": broken})
    load(plane)
    plane.translate(plane.store.snapshot())
    assert plane.current("broken") is None
    assert plane.builds == {"broken": 1}
    assert not plane.ready  # wanted and never published


def test_status_is_written_whether_or_not_the_gateway_kind_is_wanted() -> None:
    # The status writer computes from the snapshot, not from the gateway's translation.
    eager = built_plane(wanted=KINDS)
    lazy = built_plane(wanted=[])
    assert "ingress" not in lazy.builds
    for name in ("mine", "theirs"):
        a, b = (
            eager.store.get("Ingress", "default", name),
            lazy.store.get("Ingress", "default", name),
        )
        assert isinstance(a, Ingress) and isinstance(b, Ingress)
        assert a.status == b.status
    mine = lazy.store.get("Ingress", "default", "mine")
    assert isinstance(mine, Ingress)
    assert [lb.ip for lb in mine.status.load_balancer.ingress] == ["127.0.0.1"]


async def test_a_late_stream_subscriber_and_a_get_want_their_kind() -> None:
    plane = ControlPlane(None, node_name="node-1", wanted=["dns"], debounce=0)
    load(plane)
    eager = built_plane(wanted=KINDS)
    server = ConfigServer(plane, ("127.0.0.1", 0), heartbeat=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(server.run)
        with trio.fail_after(10):
            await plane.synced()
            assert set(plane.builds) == {"dns"} and plane.ready
            # A subscriber (as the config stream's watch is) gets a full config at once.
            proxy = await plane.next_config("proxy", None)
            assert content(proxy) == content(eager.current("proxy"))
            # A GET of a kind nobody wanted builds it for that request.
            status, body = await fetch_json(f"http://127.0.0.1:{server.port}", "/v1/config/ingress")
            assert status == 200 and body["version"] == plane.store.revision
            assert content(plane.current("ingress")) == content(eager.current("ingress"))
            assert plane.builds == dict.fromkeys(KINDS, 1)
        nursery.cancel_scope.cancel()
