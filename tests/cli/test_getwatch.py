"""``mesh get -w`` resuming: the pure re-list diff, the follow loop over fakes (virtual
sleeps), and the loop against a real control plane that answers 410 Gone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from mesh.getwatch import Obj, follow, key_of, relisted
from mesh.inspect import WrongServer


def obj(name: str, port: int = 80, rv: str = "1", ns: str = "shop", **meta: Any) -> Obj:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, **meta},
        "spec": {"ports": [{"port": port}]},
    }


def shown(*objs: Obj) -> dict[tuple[str, str], Obj]:
    return {key_of(o): o for o in objs}


RELISTED = [
    # (name, shown before, listed now, printed names)
    ("nothing changed", [obj("a"), obj("b")], [obj("a"), obj("b")], []),
    (
        "new versions and times of the same content (a restarted plane)",
        [obj("a", rv="5", creationTimestamp="2026-01-01T00:00:00Z")],
        [obj("a", rv="2", creationTimestamp="2026-01-02T00:00:00Z", uid="x")],
        [],
    ),
    ("added", [obj("a")], [obj("a"), obj("c")], ["c"]),
    ("changed", [obj("a"), obj("b")], [obj("a", 81), obj("b")], ["a"]),
    ("deleted, after the changes", [obj("z"), obj("b")], [obj("b", 81)], ["b", "z"]),
    ("same name, other namespace", [obj("a")], [obj("a"), obj("a", ns="other")], ["a"]),
    ("first listing empty", [], [obj("a")], ["a"]),
]


@pytest.mark.parametrize(("name", "before", "now", "want"), RELISTED, ids=[c[0] for c in RELISTED])
def test_relisted(name: str, before: list[Obj], now: list[Obj], want: list[str]) -> None:
    printed, fresh = relisted(shown(*before), now)
    assert [o["metadata"]["name"] for o in printed] == want
    assert fresh == shown(*now)


class Fake:
    """A control plane as the follow loop sees it: scripted watches and lists."""

    def __init__(self, watches: list[Any], lists: list[Any]) -> None:
        self.watches, self.lists = watches, lists
        self.versions: list[str] = []
        self.slept: list[float] = []
        self.said: list[str] = []
        self.now = 0.0

    def watch(self, version: str) -> Iterator[tuple[str, Obj]]:
        self.versions.append(version)
        step = self.watches.pop(0)
        for item in step:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, float):
                self.now += item  # time passes on the stream
                continue
            yield item

    def relist(self) -> tuple[list[Obj], str]:
        step = self.lists.pop(0)
        if isinstance(step, BaseException):
            raise step
        listed: tuple[list[Obj], str] = step
        return listed

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def run(self, known: dict[tuple[str, str], Obj], n: int, **kw: Any) -> list[str]:
        it = follow(
            known,
            "7",
            self.watch,
            self.relist,
            broken=self.said.append,
            resumed=lambda: self.said.append("resumed"),
            sleep=self.sleep,
            clock=lambda: self.now,
            **kw,
        )
        return [next(it)["metadata"]["name"] for _ in range(n)]


def test_a_broken_watch_is_listed_again_and_resumed_from_the_list() -> None:
    fake = Fake(
        watches=[
            [("ADDED", obj("c")), 30.0, ConnectionResetError("reset")],
            [("DELETED", obj("a")), 30.0, OSError("the watch fell too far behind (410 Gone)")],
            [("MODIFIED", obj("e", 81))],
        ],
        lists=[
            ([obj("a"), obj("c"), obj("d")], "12"),  # d came while the watch was broken
            ([obj("c", 82), obj("e")], "20"),  # c changed, e came, d went
        ],
    )
    known = shown(obj("a"))
    # c (watch), d (list), a (watch: deleted), c e d (list: changed, new, gone), e (watch)
    assert fake.run(known, 7) == ["c", "d", "a", "c", "e", "d", "e"]
    assert fake.versions == ["7", "12", "20"]  # each watch from the list before it
    assert fake.slept == []  # long-lived watches: no pause before listing again
    assert set(known) == {("shop", "c"), ("shop", "e")}


def test_an_unreachable_plane_is_said_once_and_retried_with_growing_pauses() -> None:
    down = OSError("Connection refused")
    fake = Fake(
        watches=[[60.0, OSError("closed")], [("ADDED", obj("b"))]],
        lists=[down, down, down, down, down, ([obj("a")], "9")],
    )
    assert fake.run(shown(obj("a")), 1) == ["b"]
    assert fake.said == ["Connection refused", "resumed"]
    assert fake.slept == [0.5, 1.0, 2.0, 5.0, 5.0]


def test_watches_that_end_at_once_are_not_listed_in_a_tight_loop() -> None:
    fake = Fake(
        watches=[[], [], [], [("ADDED", obj("b"))]],
        lists=[([], "1"), ([], "2"), ([], "3")],
    )
    assert fake.run({}, 1) == ["b"]
    assert fake.slept == [0.5, 1.0, 2.0]


def test_selection_applies_to_the_watch_and_the_list() -> None:
    fake = Fake(
        watches=[[("ADDED", obj("x-skip")), ("ADDED", obj("a")), 5.0, OSError("x")], []],
        lists=[([obj("a"), obj("b"), obj("x-new")], "3")],
    )
    keep: Callable[[Obj], bool] = lambda o: not o["metadata"]["name"].startswith("x")  # noqa: E731
    assert fake.run({}, 2, keep=keep) == ["a", "b"]


def test_a_wrong_server_ends_the_follow() -> None:
    fake = Fake(watches=[[OSError("closed")]], lists=[WrongServer("http://x")])
    with pytest.raises(WrongServer):
        fake.run({}, 1)


# --- against a real control plane ----------------------------------------------------------


def test_410_from_a_real_control_plane_is_listed_again_and_resumed() -> None:
    from mesh.control.plane import ControlPlane
    from mesh.control.stream import ConfigServer
    from mesh.getcmd import _changes, _list
    from mesh.inspect import fetch_objects, watch_objects
    from mesh.objects import Service
    from tests.control.plane_fixtures import names

    def svc(name: str, port: int = 80) -> Service:
        return Service.model_validate(
            {"metadata": {"name": name, "namespace": "shop"}, "spec": {"ports": [{"port": port}]}}
        )

    plane = ControlPlane(None, translators={"names": names}, history=2)
    server = ConfigServer(plane, ("127.0.0.1", 0), heartbeat=0.2)
    started = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    stop = trio.CancelScope()

    async def serve() -> None:
        token.append(trio.lowlevel.current_trio_token())
        with stop:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                started.set()

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        assert started.wait(10)

        def on_plane(fn: Callable[[], object]) -> None:
            trio.from_thread.run_sync(fn, trio_token=token[0])

        url = f"http://127.0.0.1:{server.port}"
        on_plane(lambda: [plane.apply(svc(name)) for name in ("a", "b", "c")])
        first, version = fetch_objects(url, "Service", "shop")
        # More writes than the plane keeps while "mesh get" was not watching: 410 Gone.
        on_plane(lambda: plane.apply(svc("b", 81)))
        on_plane(lambda: plane.delete("Service", "shop", "a"))
        on_plane(lambda: plane.apply(svc("d")))
        with pytest.raises(OSError, match="410 Gone"):
            next(watch_objects(url, "Service", "shop", version))

        it = follow(
            {key_of(o): o for o in first},
            version,
            lambda since: _changes(watch_objects, url, "Service", "shop", since),
            lambda: _list(url, "Service", "shop"),
        )
        got = [next(it) for _ in range(3)]
        assert [(o["metadata"]["name"], o["spec"]["ports"][0]["port"]) for o in got] == [
            ("b", 81),
            ("d", 80),
            ("a", 80),  # deleted: its last state
        ]
        on_plane(lambda: plane.apply(svc("e")))  # resumed: the watch brings the next write
        assert next(it)["metadata"]["name"] == "e"
        it.close()
    finally:
        if token:
            trio.from_thread.run_sync(stop.cancel, trio_token=token[0])
        thread.join(10)
