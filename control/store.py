"""The object store: Kubernetes semantics in one process.

Every write bumps one global revision, which becomes the object's resourceVersion. Watchers
see ADDED / MODIFIED / DELETED events in revision order and may resume from any revision still
in the (bounded) history; an older one raises :class:`Gone`, as the API server answers 410,
and the watcher re-lists. A write that changes nothing is not an event, as with ``kubectl apply``.

Reads take an immutable :class:`Snapshot`; it is built once per revision and shared.

Indexes, as client-go's ``cache.Indexer`` keeps them: each named index function maps an
object to the values it is found under, and every write updates the index entries of the one
object it touches, so a controller asks "which Pods carry app=web in shop" or "which
EndpointSlices belong to shop/web" without scanning the store. :data:`DEFAULT_INDEXES` holds
the ones the controllers and translators use.
"""

from __future__ import annotations

import builtins
import collections
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import trio

from mesh.objects import SERVICE_NAME_LABEL, KubeObject, Pod, Service, share_fields_sets

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str, str]  # (kind, namespace, name)

# Admission: (new object, stored object or None) -> the object to store. It may fill in
# fields the server owns (a Service's clusterIP) or raise Rejected, as the API server would.
Admit = Callable[[KubeObject, KubeObject | None], KubeObject]


# An index function: the values an object is found under in one index (none: not indexed).
IndexFunc = Callable[[KubeObject], Sequence[Hashable]]


def _by_namespace(obj: KubeObject) -> Sequence[Hashable]:
    return ((obj.KIND, obj.metadata.namespace),)


def _by_label(obj: KubeObject) -> Sequence[Hashable]:
    meta = obj.metadata
    labels = meta.labels
    if not labels:
        return ()
    kind, ns = obj.KIND, meta.namespace
    return [(kind, ns, k, v) for k, v in labels.items()]


def _pod_ips(obj: KubeObject) -> Sequence[Hashable]:
    return obj.ips if isinstance(obj, Pod) else ()


def _slices_of_service(obj: KubeObject) -> Sequence[Hashable]:
    if obj.KIND != "EndpointSlice":
        return ()
    service = obj.metadata.labels.get(SERVICE_NAME_LABEL)
    return ((obj.namespace, service),) if service else ()


def _service_selector(obj: KubeObject) -> Sequence[Hashable]:
    if not isinstance(obj, Service) or not obj.spec.selector:
        return ()
    return [(obj.namespace, k, v) for k, v in obj.spec.selector.items()]


# The indexes every store keeps; values are tuples so that one index serves every kind.
DEFAULT_INDEXES: Mapping[str, IndexFunc] = MappingProxyType(
    {
        "namespace": _by_namespace,  # (kind, namespace)
        "label": _by_label,  # (kind, namespace, label key, label value)
        "pod-ip": _pod_ips,  # a Pod's IP address
        "service-slices": _slices_of_service,  # (namespace, service name) of a slice
        "selector": _service_selector,  # (namespace, key, value) of a Service's selector
    }
)


# Index functions that find objects of one kind only: the indexer does not call them for
# the others (a Pod write asks three functions, not five).
_ONE_KIND: Mapping[IndexFunc, str] = MappingProxyType(
    {_pod_ips: "Pod", _slices_of_service: "EndpointSlice", _service_selector: "Service"}
)


class _Indexer:
    """Named indexes: value -> ordered set of object keys, updated one object at a time."""

    def __init__(self, funcs: Mapping[str, IndexFunc]) -> None:
        self.funcs = dict(funcs)
        self.entries: dict[str, dict[Hashable, dict[Key, None]]] = {n: {} for n in funcs}
        self._by_kind: dict[str, list[tuple[str, IndexFunc]]] = {}

    def _funcs(self, kind: str) -> list[tuple[str, IndexFunc]]:
        found = self._by_kind.get(kind)
        if found is None:
            found = self._by_kind[kind] = [
                (name, func)
                for name, func in self.funcs.items()
                if _ONE_KIND.get(func, kind) == kind
            ]
        return found

    def update(self, old: KubeObject | None, new: KubeObject | None, key: Key) -> None:
        if old is None:
            # A create (every object at start): nothing to take out, no set differences.
            entries = self.entries
            for name, func in self._funcs(key[0]):
                after = func(new)  # type: ignore[arg-type]
                if after:
                    index = entries[name]
                    for value in after:
                        keys = index.get(value)
                        if keys is None:
                            index[value] = {key: None}
                        else:
                            keys[key] = None
            return
        for name, func in self._funcs(key[0]):
            before = func(old) if old is not None else ()
            after = func(new) if new is not None else ()
            if not before and not after:
                continue
            index = self.entries[name]
            gone = set(before).difference(after) if before else ()
            added = set(after).difference(before) if before else after
            for value in gone:
                keys = index.get(value)
                if keys is not None:
                    keys.pop(key, None)
                    if not keys:
                        del index[value]
            for value in added:
                index.setdefault(value, {})[key] = None

    def keys(self, name: str, value: Hashable) -> list[Key]:
        return list(self.entries[name].get(value, ()))


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
    # The object as stored before this write (None for ADDED): a controller needs the old
    # labels of a changed Pod to find the Services it left.
    old: KubeObject | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every object at one revision, by kind and then by (namespace, name).

    Index reads (:meth:`by_index`) use the store's live indexes while the store is still at
    this revision; a snapshot read after the store moved on builds its own, once."""

    revision: int
    by_kind: Mapping[str, Mapping[tuple[str, str], KubeObject]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _live: Callable[[int, str, Hashable], list[Key] | None] | None = None
    _lists: dict[str, builtins.list[KubeObject]] = field(default_factory=dict, compare=False)
    _indexes: dict[str, dict[Hashable, builtins.list[Key]]] = field(
        default_factory=dict, compare=False
    )

    def list(self, kind: str, namespace: str | None = None) -> list[KubeObject]:
        if namespace is None:
            # Sorted once per snapshot: every translator lists every Service.
            cached = self._lists.get(kind)
            if cached is None:
                objs = self.by_kind.get(kind, {})
                cached = self._lists[kind] = [objs[k] for k in sorted(objs)]
            return cached.copy()
        objs = self.by_kind.get(kind, {})
        items = [o for (ns, _), o in objs.items() if ns == namespace]
        items.sort(key=lambda o: o.metadata.name)
        return items

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self.by_kind.get(kind, {}).get((namespace, name))

    def by_index(self, index: str, value: Hashable) -> builtins.list[KubeObject]:
        """The objects found under ``value`` in the named index (see DEFAULT_INDEXES)."""
        keys = self._live(self.revision, index, value) if self._live is not None else None
        if keys is None:
            keys = self._own_index(index).get(value, [])
        out = []
        for kind, ns, name in keys:
            obj = self.by_kind.get(kind, {}).get((ns, name))
            if obj is not None:
                out.append(obj)
        return out

    def _own_index(self, index: str) -> dict[Hashable, builtins.list[Key]]:
        cached = self._indexes.get(index)
        if cached is None:
            func = DEFAULT_INDEXES[index]
            built: dict[Hashable, builtins.list[Key]] = {}
            for objs in self.by_kind.values():
                for obj in objs.values():
                    for value in func(obj):
                        built.setdefault(value, []).append(obj.key)
            self._indexes[index] = cached = built
        return cached


def _same(a: KubeObject, b: KubeObject) -> bool:
    return a.with_resource_version("") == b.with_resource_version("")


def _update(old: KubeObject, new: KubeObject) -> tuple[KubeObject, int]:
    """An update as the API server makes it: ``new`` keeps the stored status when it does
    not set one (the status is a subresource: a manifest edit leaves the status the
    controllers wrote, with its condition times), and the generation grows by one when the
    spec changed (not on a metadata- or status-only change). A writer that sets a generation
    other than the stored one (a copy of a real cluster's object) keeps its own."""
    status = getattr(old, "status", None)
    if status is not None and "status" not in new.model_fields_set:
        new = new.model_copy(update={"status": status})
    generation = new.metadata.generation
    if generation in (0, old.metadata.generation):
        generation = old.metadata.generation
        if getattr(new, "spec", None) != getattr(old, "spec", None):
            generation += 1
    return new, generation


_UID_MIX, _UID_LOW = 0x9E3779B97F4A7C15, (1 << 62) - 1


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
        # metadata.uid, kept the same way: the revision that created the object, made into a
        # UUID under a per-store random prefix (unique per creation, also across restarts;
        # an int per object at start, the text only when one is served).
        self._born: dict[Key, int] = {}
        self._uid_prefix = random.getrandbits(64) << 64
        self._objects: dict[str, dict[tuple[str, str], KubeObject]] = {}
        self._index = _Indexer(DEFAULT_INDEXES)
        self._events: collections.deque[WatchEvent] = collections.deque(maxlen=history)
        self._revision = 0
        self._compacted = 0  # events at or below this revision are no longer kept
        # Made when someone waits and set (then dropped) by the next write: a start-up that
        # writes 40,000 objects before anyone waits makes no events.
        self._changed: trio.Event | None = None
        self._snapshot: Snapshot | None = None
        self._dirty: set[str] = set()  # kinds written since the last snapshot

    @property
    def revision(self) -> int:
        return self._revision

    # --- writes ----------------------------------------------------------------------

    def apply(self, obj: KubeObject) -> KubeObject:
        """Create or replace an object; returns the stored copy with its resourceVersion.

        Raises :class:`Rejected` when admission refuses the object."""
        key = obj.key
        kind, ns, name = key
        objs = self._objects.get(kind)
        if objs is None:
            objs = self._objects[kind] = {}
        old = objs.get((ns, name))
        if self.admit is not None:
            obj = self.admit(obj, old)
        if old is None:
            # metadata.generation: 1 on create (one read from a real cluster keeps its own).
            generation = obj.metadata.generation or 1
        else:
            obj, generation = _update(old, obj)
            if _same(old, obj.with_resource_version("", generation)):
                return old
        share_fields_sets(obj)
        stored = obj.with_resource_version(str(self._revision + 1), generation)
        objs[(ns, name)] = stored
        self._index.update(old, stored, key)
        self._record("ADDED" if old is None else "MODIFIED", stored, old, key)
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        objs = self._objects.get(kind, {})
        old = objs.pop((namespace, name), None)
        if old is None:
            return None
        gone = old.with_resource_version(str(self._revision + 1))
        key = (kind, namespace, name)
        self._index.update(old, None, key)
        self._record("DELETED", gone, old, key)
        return gone

    def replace_all(self, kind: str, objects: Iterable[KubeObject]) -> None:
        """Make ``kind`` hold exactly ``objects`` (a re-list): applies and deletes as needed."""
        wanted = {(o.metadata.namespace, o.metadata.name): o for o in objects}
        for ns, name in list(self._objects.get(kind, {})):
            if (ns, name) not in wanted:
                self.delete(kind, ns, name)
        for obj in wanted.values():
            self.apply(obj)

    def _record(self, type_: EventType, obj: KubeObject, old: KubeObject | None, key: Key) -> None:
        self._revision += 1
        if type_ == "ADDED":
            self._created[key] = self.clock()
            self._born[key] = self._revision
        elif type_ == "DELETED":
            self._created.pop(key, None)
            self._born.pop(key, None)
        if len(self._events) == self._events.maxlen:
            self._compacted = self._events[0].revision
        self._events.append(WatchEvent(type_, obj, self._revision, old))
        self._dirty.add(obj.KIND)
        self._snapshot = None
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # --- reads -----------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def created(self, key: Key) -> float | None:
        """When the object at ``key`` was created (wall-clock seconds), if it exists."""
        return self._created.get(key)

    def uid(self, key: Key) -> str | None:
        """The uid of the object at ``key`` (the same until it is deleted), if it exists."""
        born = self._born.get(key)
        if born is None:
            return None
        # An odd multiplier is a bijection modulo 2**62 (the bits a version-4 UUID leaves
        # free below its variant): unique per creation, yet not a visible counter.
        return str(uuid.UUID(int=self._uid_prefix | (born * _UID_MIX) & _UID_LOW, version=4))

    def list(self, kind: str, namespace: str | None = None) -> tuple[list[KubeObject], int]:
        return self.snapshot().list(kind, namespace), self._revision

    def by_index(self, index: str, value: Hashable) -> builtins.list[KubeObject]:
        """The stored objects found under ``value`` in the named index."""
        return [o for o in map(self._lookup, self._index.keys(index, value)) if o is not None]

    def _lookup(self, key: Key) -> KubeObject | None:
        return self._objects.get(key[0], {}).get((key[1], key[2]))

    def _live_keys(self, revision: int, index: str, value: Hashable) -> builtins.list[Key] | None:
        return self._index.keys(index, value) if revision == self._revision else None

    def snapshot(self) -> Snapshot:
        if self._snapshot is None or self._snapshot.revision != self._revision:
            # Kinds not written since the last snapshot share its frozen copy: a Pod edit
            # does not copy 10,000 Services.
            prev = self._snapshot.by_kind if self._snapshot is not None else {}
            frozen = {
                k: prev[k] if k in prev and k not in self._dirty else MappingProxyType(dict(v))
                for k, v in self._objects.items()
            }
            self._dirty.clear()
            self._snapshot = Snapshot(self._revision, MappingProxyType(frozen), self._live_keys)
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
            if self._changed is None:
                self._changed = trio.Event()
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
