"""The object store: Kubernetes semantics in one process.

Every write bumps one global revision, which becomes the object's resourceVersion. Watchers
see ADDED / MODIFIED / DELETED events in revision order and may resume from any revision still
in the (bounded) history; an older one raises :class:`Gone`, as the API server answers 410,
and the watcher re-lists. A write that changes nothing is not an event, as with ``kubectl apply``.

Reads take an immutable :class:`Snapshot`; it is built once per revision and shared.
"""

from __future__ import annotations

import builtins
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import trio

from mesh.objects import KubeObject

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str, str]  # (kind, namespace, name)

# Admission: (new object, stored object or None) -> the object to store. It may fill in
# fields the server owns (a Service's clusterIP) or raise Rejected, as the API server would.
Admit = Callable[[KubeObject, KubeObject | None], KubeObject]


class Rejected(ValueError):
    """A write refused by admission (HTTP 422); the stored object is left as it was."""


class Gone(Exception):
    """The requested revision is older than the store's history (HTTP 410)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"revision {requested} is too old; the oldest kept is {oldest}")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: KubeObject
    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every object at one revision, by kind and then by (namespace, name)."""

    revision: int
    by_kind: Mapping[str, Mapping[tuple[str, str], KubeObject]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def list(self, kind: str, namespace: str | None = None) -> list[KubeObject]:
        objs = self.by_kind.get(kind, {})
        items = [o for (ns, _), o in objs.items() if namespace is None or ns == namespace]
        items.sort(key=lambda o: (o.metadata.namespace, o.metadata.name))
        return items

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self.by_kind.get(kind, {}).get((namespace, name))


def _same(a: KubeObject, b: KubeObject) -> bool:
    return a.with_resource_version("") == b.with_resource_version("")


class Store:
    def __init__(
        self,
        history: int = 10_000,
        *,
        admit: Admit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history < 1:
            raise ValueError("history must keep at least one event")
        self.admit = admit
        self.clock = clock
        # When each object was created (metadata.creationTimestamp, kept beside the objects
        # so that comparing an object with its desired form needs no special case).
        self._created: dict[Key, float] = {}
        self._objects: dict[str, dict[tuple[str, str], KubeObject]] = {}
        self._events: collections.deque[WatchEvent] = collections.deque(maxlen=history)
        self._revision = 0
        self._compacted = 0  # events at or below this revision are no longer kept
        self._changed = trio.Event()
        self._snapshot: Snapshot | None = None

    @property
    def revision(self) -> int:
        return self._revision

    # --- writes ----------------------------------------------------------------------

    def apply(self, obj: KubeObject) -> KubeObject:
        """Create or replace an object; returns the stored copy with its resourceVersion.

        Raises :class:`Rejected` when admission refuses the object."""
        kind, ns, name = obj.key
        objs = self._objects.setdefault(kind, {})
        old = objs.get((ns, name))
        if self.admit is not None:
            obj = self.admit(obj, old)
        if old is not None and _same(old, obj):
            return old
        stored = obj.with_resource_version(str(self._revision + 1))
        objs[(ns, name)] = stored
        self._record("ADDED" if old is None else "MODIFIED", stored)
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        objs = self._objects.get(kind, {})
        old = objs.pop((namespace, name), None)
        if old is None:
            return None
        gone = old.with_resource_version(str(self._revision + 1))
        self._record("DELETED", gone)
        return gone

    def replace_all(self, kind: str, objects: Iterable[KubeObject]) -> None:
        """Make ``kind`` hold exactly ``objects`` (a re-list): applies and deletes as needed."""
        wanted = {(o.metadata.namespace, o.metadata.name): o for o in objects}
        for ns, name in list(self._objects.get(kind, {})):
            if (ns, name) not in wanted:
                self.delete(kind, ns, name)
        for obj in wanted.values():
            self.apply(obj)

    def _record(self, type_: EventType, obj: KubeObject) -> None:
        self._revision += 1
        if type_ == "ADDED":
            self._created[obj.key] = self.clock()
        elif type_ == "DELETED":
            self._created.pop(obj.key, None)
        if len(self._events) == self._events.maxlen:
            self._compacted = self._events[0].revision
        self._events.append(WatchEvent(type_, obj, self._revision))
        self._snapshot = None
        self._changed.set()
        self._changed = trio.Event()

    # --- reads -----------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def created(self, key: Key) -> float | None:
        """When the object at ``key`` was created (wall-clock seconds), if it exists."""
        return self._created.get(key)

    def list(self, kind: str, namespace: str | None = None) -> tuple[list[KubeObject], int]:
        return self.snapshot().list(kind, namespace), self._revision

    def snapshot(self) -> Snapshot:
        if self._snapshot is None or self._snapshot.revision != self._revision:
            frozen = {k: MappingProxyType(dict(v)) for k, v in self._objects.items()}
            self._snapshot = Snapshot(self._revision, MappingProxyType(frozen))
        return self._snapshot

    def events_since(self, revision: int, kind: str | None = None) -> builtins.list[WatchEvent]:
        """Events after ``revision``; raises Gone if some of them are no longer kept."""
        if revision < self._compacted:
            raise Gone(revision, self._compacted)
        out = []
        for ev in reversed(self._events):
            if ev.revision <= revision:
                break
            if kind is None or ev.object.KIND == kind:
                out.append(ev)
        out.reverse()
        return out

    async def wait_for_change(self, revision: int) -> int:
        """Wait until the store's revision is past ``revision``; returns the new revision."""
        while self._revision <= revision:
            await self._changed.wait()
        return self._revision

    async def watch(
        self, kind: str | None = None, since: int | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Events in order from ``since`` (default: now), forever. Raises Gone if too old."""
        revision = self._revision if since is None else since
        while True:
            seen = self._revision
            for ev in self.events_since(revision, kind):
                yield ev
            revision = seen
            await self.wait_for_change(revision)
