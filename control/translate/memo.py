"""Per-Service memo shared by the translators: rebuild a Service's record only when one of
the objects it was built from changed.

A translator gives two functions: ``inputs(service, snapshot)`` (the Service followed by every
object its record reads: slices, referenced Pods; None when the Service yields no record)
and ``build(service, inputs, snapshot)``. :meth:`ServiceMemo.full` walks every Service and
reuses a record whose inputs are the very objects seen last time (stored objects are
immutable, so identity is change). :meth:`ServiceMemo.update` visits only the Services named
by the caller (from store events), so an edit costs the Services it touches plus one pass
over an ordered list of references. Records are kept in (namespace, name) order.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from mesh.objects import SERVICE_NAME_LABEL, KubeObject, Service

if TYPE_CHECKING:
    from mesh.control.store import Snapshot, WatchEvent

R = TypeVar("R")
ServiceKey = tuple[str, str]
Inputs = tuple[KubeObject | None, ...]
InputsFn = Callable[[Service, "Snapshot"], Inputs | None]
BuildFn = Callable[[Service, Inputs, "Snapshot"], R]


def same_objects(a: Inputs, b: Inputs) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class ServiceMemo(Generic[R]):
    def __init__(self, inputs: InputsFn, build: BuildFn[R]) -> None:
        self._inputs = inputs
        self._build = build
        self._records: dict[ServiceKey, tuple[Inputs, R]] = {}
        self._order: list[ServiceKey] = []
        self._values: tuple[R, ...] | None = ()
        self.warm = False
        self.built = 0  # records built (not reused): tests pin the work

    def full(self, snapshot: Snapshot) -> tuple[R, ...]:
        """Every Service of ``snapshot``; reuses unchanged records."""
        old = self._records
        self._records = {}
        for obj in snapshot.list(Service.KIND):
            if isinstance(obj, Service):
                self._visit(obj, snapshot, old.get((obj.namespace, obj.name)))
        self._order = list(self._records)  # snapshot lists are sorted by (namespace, name)
        self._values = None
        self.warm = True
        return self.values()

    def update(self, snapshot: Snapshot, keys: Iterable[ServiceKey]) -> tuple[R, ...]:
        """Only the Services ``keys`` (changed, added or gone); the rest stay as they are."""
        for key in keys:
            prior = self._records.pop(key, None)
            obj = snapshot.get(Service.KIND, *key)
            kept = isinstance(obj, Service) and self._visit(obj, snapshot, prior)
            if prior is not None and not kept:
                del self._order[bisect.bisect_left(self._order, key)]
                self._values = None
            elif prior is None and kept:
                bisect.insort(self._order, key)
                self._values = None
            elif kept and self._records[key][1] is not prior[1]:  # type: ignore[index]
                self._values = None
        return self.values()

    def _visit(self, svc: Service, snapshot: Snapshot, prior: tuple[Inputs, R] | None) -> bool:
        inputs = self._inputs(svc, snapshot)
        if inputs is None:
            return False
        if prior is not None and same_objects(prior[0], inputs):
            self._records[(svc.namespace, svc.name)] = prior
            return True
        self._records[(svc.namespace, svc.name)] = (inputs, self._build(svc, inputs, snapshot))
        self.built += 1
        return True

    def values(self) -> tuple[R, ...]:
        if self._values is None:
            self._values = tuple(self._records[k][1] for k in self._order)
        return self._values

    def inputs_of(self, key: ServiceKey) -> Inputs | None:
        entry = self._records.get(key)
        return entry[0] if entry is not None else None

    def keys(self) -> list[ServiceKey]:
        return list(self._order)


def touched_services(events: Iterable[WatchEvent]) -> set[ServiceKey]:
    """The Services whose record may change with ``events``: changed Services and the
    Services named by changed EndpointSlices (before and after the change)."""
    out: set[ServiceKey] = set()
    for ev in events:
        kind = ev.object.KIND
        if kind == "Service":
            out.add((ev.object.namespace, ev.object.name))
        elif kind == "EndpointSlice":
            for obj in (ev.object, ev.old):
                if obj is not None:
                    service = obj.metadata.labels.get(SERVICE_NAME_LABEL)
                    if service:
                        out.add((obj.namespace, service))
    return out
