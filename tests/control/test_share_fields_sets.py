"""The store's fields-set sharing (mesh.objects.share_fields_sets) against the form it
replaced: after either, every model of an object holds the very same set object, equal to
the one pydantic gave it, so dumps, copies and the store's events cannot tell them apart."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mesh.objects import _FIELDS_SETS, _VARIANTS, KubeObject, Pod, Service, share_fields_sets
from mesh.objects import _nested_fields as nested_fields


def reference(model: BaseModel) -> None:
    """The former implementation, kept as the oracle."""
    stack = [model]
    while stack:
        item = stack.pop()
        cls = item.__class__
        fields_set = item.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(cls, fields_set)
        if shared is not fields_set:
            if shared != fields_set:
                shared = _VARIANTS.setdefault((cls, frozenset(fields_set)), fields_set)
            object.__setattr__(item, "__pydantic_fields_set__", shared)
        for name in nested_fields(cls):
            value = item.__dict__[name]
            if value.__class__ is tuple:
                stack.extend(inner for inner in value if isinstance(inner, BaseModel))
            elif isinstance(value, BaseModel):
                stack.append(value)


def models(model: BaseModel) -> Iterator[BaseModel]:
    """Every model of ``model``'s tree, in one fixed order (whatever the fields hold)."""
    yield model
    for value in model.__dict__.values():
        for inner in value if isinstance(value, tuple) else (value,):
            if isinstance(inner, BaseModel):
                yield from models(inner)


LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
PORTS = st.lists(
    st.fixed_dictionaries(
        {"port": st.integers(1, 65535)},
        optional={"name": st.sampled_from(["http", "dns"]), "protocol": st.just("UDP")},
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda p: (p["port"], p.get("protocol")),
)


def service(name: str, labels: dict[str, str], ports: list[dict[str, Any]]) -> KubeObject:
    ports = [{**p, "name": f"{p.get('name', 'p')}-{i}"} for i, p in enumerate(ports)]
    meta: dict[str, Any] = {"name": name, "labels": labels} if labels else {"name": name}
    return Service.model_validate({"metadata": meta, "spec": {"ports": ports, "selector": labels}})


def pod(name: str, labels: dict[str, str], ready: bool, ips: list[str]) -> KubeObject:
    status: dict[str, Any] = {"phase": "Running", "podIPs": [{"ip": i} for i in ips]}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    spec = {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}
    return Pod.model_validate({"metadata": {"name": name, "labels": labels}, "spec": spec, "status": status})  # fmt: skip


OBJECTS = st.lists(
    st.one_of(
        st.builds(service, st.sampled_from(["a", "b"]), LABELS, PORTS),
        st.builds(
            pod,
            st.sampled_from(["p", "q"]),
            LABELS,
            st.booleans(),
            st.lists(st.sampled_from(["10.0.0.1", "fd00::1"]), max_size=2, unique=True),
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(OBJECTS)
def test_sharing_equals_the_former_implementation(objects: list[KubeObject]) -> None:
    twins = [copy.deepcopy(o) for o in objects]  # own sets, equal to the originals'
    given_sets = [[set(m.__pydantic_fields_set__) for m in models(o)] for o in objects]
    for obj, twin in zip(objects, twins, strict=True):
        reference(obj)
        share_fields_sets(twin)
    for obj, twin, sets in zip(objects, twins, given_sets, strict=True):
        pairs = list(zip(models(obj), models(twin), strict=True))
        assert [set(a.__pydantic_fields_set__) for a, _ in pairs] == sets  # nothing changed
        for a, b in pairs:
            assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
        assert obj == twin
        assert obj.model_dump(exclude_unset=True) == twin.model_dump(exclude_unset=True)
