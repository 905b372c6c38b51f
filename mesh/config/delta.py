"""Config deltas: a new version of a component config as its changes against the one before.

Theory of operation. A config is a frozen model whose big fields are tuples of records (DNS
Services, proxy Services, gateway routes and backends, pod addresses). An edit changes a few
records and the translators keep every other record as the very same object, so the change
between two versions is found by walking both tuples: first the common head and tail (an
identity check per record), then, in the window between, the records aligned by key
(``namespace/name``, ``name``, or the value itself for plain values) when the keys are unique
and in the same order on both sides. What differs becomes *splices*: ``[start, removed,
inserted]`` against the base tuple, as a list edit at a position. Any other field that
changed (zone, TTL, the namespaces list...) is sent whole.

The delta names the version it applies to (``base``) and, for each spliced field, its length
after: :func:`apply` refuses a delta whose base is not the config it is given, so a delta is
never applied onto the wrong base. Only the records that travel are validated; the others
stay the same objects, which the components' apply paths (the DNS index, the proxy's service
table) recognise by identity and do not rebuild.

Wire form (one JSON object; the config stream sends it as one line)::

    {"_delta": 1, "base": 41, "version": 42,
     "set": {"namespaces": ["bench", "default"]},
     "splice": {"services": [[17, 1, [{...}]]]},
     "lengths": {"services": 10000}}

``_delta`` is the format number (a field name no config can have: pydantic keeps names with a
leading underscore private). A config type with its own validators or serialisers at the top
level gets no deltas (:func:`supports_deltas`): applying splices would bypass them.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

import pydantic
from pydantic import TypeAdapter

from mesh.config.base import ComponentConfig

__all__ = [
    "FORMAT",
    "DeltaError",
    "DeltaMismatch",
    "apply",
    "decode_delta",
    "diff",
    "encode",
    "is_delta",
    "parse",
    "splices",
    "supports_deltas",
]

FORMAT = 1  # the wire form above; a reader refuses any other
PREFIX = b'{"_delta":'  # how a delta line starts (encode writes "_delta" first)

C = TypeVar("C", bound=ComponentConfig)
Splice = tuple[int, int, list[Any]]


class DeltaError(Exception):
    """A delta that cannot be applied (malformed, invalid records, another format)."""


class DeltaMismatch(DeltaError):
    """A delta made against another version than the config at hand."""


# --- per field: how it travels ------------------------------------------------------------


class _Field:
    """How one top-level field of a config type is compared, encoded and decoded."""

    __slots__ = ("item", "items", "key", "name", "whole")

    def __init__(self, config_type: type[ComponentConfig], name: str) -> None:
        info = config_type.model_fields[name]
        self.name = name
        self.whole: TypeAdapter[Any] = TypeAdapter(info.rebuild_annotation())
        args = get_args(info.annotation)
        spliceable = (
            get_origin(info.annotation) is tuple
            and len(args) == 2
            and args[1] is Ellipsis
            and not info.metadata  # constraints on the whole tuple would be bypassed
        )
        self.item: Any = args[0] if spliceable else None
        self.items: TypeAdapter[list[Any]] | None = (
            TypeAdapter(list[self.item]) if spliceable else None  # type: ignore[name-defined]
        )
        self.key = _key_function(self.item)


def _key_function(item: Any) -> Callable[[Any], Hashable]:
    fields = getattr(item, "model_fields", None) if isinstance(item, type) else None
    if fields is not None and "namespace" in fields and "name" in fields:
        return lambda r: (r.namespace, r.name)
    if fields is not None and "name" in fields:
        return lambda r: r.name
    return lambda r: r  # plain values (and frozen records)


@functools.cache
def _fields(config_type: type[ComponentConfig]) -> dict[str, _Field]:
    return {
        name: _Field(config_type, name) for name in config_type.model_fields if name != "version"
    }


@functools.cache
def supports_deltas(config_type: type[ComponentConfig]) -> bool:
    """Whether configs of this type can travel as deltas: no validator or serialiser of its
    own at the top level (splices and ``model_copy`` would bypass them)."""
    d = config_type.__pydantic_decorators__
    return not (
        d.model_validators or d.field_validators or d.field_serializers or d.model_serializers
    )


# --- the server's side: diff and encode -----------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b


def _common(a: Iterable[Any], b: Iterable[Any], limit: int) -> int:
    """How many leading items of ``a`` and ``b`` are the same. One-tuples compare in C with
    an identity check first, so the shared records of two versions cost no ``__eq__``."""
    return next(itertools.compress(itertools.count(), map(operator.ne, zip(a), zip(b))), limit)


def splices(old: Sequence[Any], new: Sequence[Any], key: Callable[[Any], Hashable]) -> list[Splice]:
    """The list edits that turn ``old`` into ``new``: ``(start, removed, inserted)`` against
    ``old``, in order, not overlapping. Exact for any two sequences."""
    n, m = len(old), len(new)
    lo = _common(old, new, min(n, m))
    tail = _common(reversed(old), reversed(new), min(n, m) - lo)
    tail = min(tail, min(n, m) - lo)  # the head and the tail never overlap
    hi_a, hi_b = n - tail, m - tail
    if lo == hi_a and lo == hi_b:
        return []
    window = _align(old[lo:hi_a], new[lo:hi_b], key)
    return [(lo + start, removed, items) for start, removed, items in window]


def _align(a: Sequence[Any], b: Sequence[Any], key: Callable[[Any], Hashable]) -> list[Splice]:
    whole: list[Splice] = [(0, len(a), list(b))]
    try:
        ka = [key(x) for x in a]
        kb = [key(x) for x in b]
        sa, sb = set(ka), set(kb)
    except TypeError:  # an unhashable value: no alignment, one splice
        return whole
    if len(sa) != len(ka) or len(sb) != len(kb):
        return whole  # a key twice: which one moved is ambiguous
    common = sa & sb
    if [k for k in ka if k in common] != [k for k in kb if k in common]:
        return whole  # reordered
    out: list[Splice] = []
    start, removed, inserted = -1, 0, list[Any]()
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and ka[i] not in common:  # gone
            step = (1, 0)
        elif j < len(b) and kb[j] not in common:  # new
            step = (0, 1)
        elif _same(a[i], b[j]):  # kept: closes the open splice
            if start >= 0:
                out.append((start, removed, inserted))
                start, removed, inserted = -1, 0, list[Any]()
            i += 1
            j += 1
            continue
        else:  # replaced
            step = (1, 1)
        if start < 0:
            start = i
        removed += step[0]
        if step[1]:
            inserted.append(b[j])
        i += step[0]
        j += step[1]
    if start >= 0:
        out.append((start, removed, inserted))
    return out


def diff(old: C, new: C) -> dict[str, Any] | None:
    """The delta from ``old`` to ``new`` as a JSON-ready document, or None when configs of
    this type cannot travel as deltas."""
    config_type = type(new)
    if type(old) is not config_type or not supports_deltas(config_type):
        return None
    whole: dict[str, Any] = {}
    spliced: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for name, field in _fields(config_type).items():
        a, b = getattr(old, name), getattr(new, name)
        if a is b or a == b:  # tuples compare in C, shared records by identity
            continue
        if field.items is None:
            if a != b:
                whole[name] = field.whole.dump_python(b, mode="json")
            continue
        edits = splices(a, b, field.key)
        if not edits:
            continue
        if sum(len(items) for _, _, items in edits) >= len(b):
            whole[name] = field.whole.dump_python(b, mode="json")  # no smaller as splices
            continue
        spliced[name] = [
            [start, removed, field.items.dump_python(items, mode="json")]
            for start, removed, items in edits
        ]
        lengths[name] = len(b)
    doc: dict[str, Any] = {"_delta": FORMAT, "base": old.version, "version": new.version}
    doc.update({"set": whole, "splice": spliced, "lengths": lengths})
    return doc


def encode(doc: Mapping[str, Any]) -> bytes:
    """One JSON line; ``_delta`` first, so a reader tells a delta by its first bytes."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# --- the client's side: parse and apply ------------------------------------------------------


def parse(line: bytes) -> dict[str, Any]:
    """A delta line as a document; DeltaError when it is not one of this format."""
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise DeltaError(f"a config delta that is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DeltaError("a config delta that is not a JSON object")
    if doc.get("_delta") != FORMAT:
        raise DeltaError(
            f"the control plane sent a config delta of format {doc.get('_delta')!r} and this "
            f"process reads format {FORMAT} only: run the same mesh version on both sides"
        )
    return doc


def _int(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if type(value) is not int:
        raise DeltaError(f"a config delta whose {name!r} is not a number")
    return value


def _section(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise DeltaError(f"a config delta whose {name!r} is not an object")
    return value


def _validated(adapter: TypeAdapter[Any], value: Any, where: str) -> Any:
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in (where, *first["loc"]))
        raise DeltaError(f"an invalid record in a config delta at {loc}: {first['msg']}") from None


def apply(base: C, doc: Mapping[str, Any]) -> C:
    """``base`` with the delta ``doc`` (from :func:`parse`) applied: only the records that
    travel are validated, the others stay the same objects. DeltaMismatch when ``doc`` was
    made against another version; DeltaError when it is malformed or invalid."""
    config_type = type(base)
    fields = _fields(config_type)
    from_version, version = _int(doc, "base"), _int(doc, "version")
    if from_version != base.version:
        raise DeltaMismatch(
            f"a config delta from version {from_version} does not apply to version {base.version}"
        )
    update: dict[str, Any] = {"version": version}
    for name, value in _section(doc, "set").items():
        field = fields.get(name)
        if field is None:
            raise DeltaError(f"a config delta sets {name!r}, not a field of {config_type.__name__}")
        update[name] = _validated(field.whole, value, name)
    lengths = _section(doc, "lengths")
    for name, edits in _section(doc, "splice").items():
        field = fields.get(name)
        if field is None or field.items is None or name in update:
            raise DeltaError(f"a config delta splices {name!r}, not a list field it may splice")
        new = _spliced(getattr(base, name), edits, field.items, name)
        if lengths.get(name) != len(new):
            raise DeltaMismatch(f"a config delta left {name} with {len(new)} records, not as sent")
        update[name] = new
    return base.model_copy(update=update)


def _spliced(
    old: tuple[Any, ...], edits: Any, adapter: TypeAdapter[list[Any]], name: str
) -> tuple[Any, ...]:
    if not isinstance(edits, list):
        raise DeltaError(f"a config delta whose splices of {name!r} are not a list")
    parts: list[Sequence[Any]] = []
    pos = 0
    for edit in edits:
        if (
            not isinstance(edit, list)
            or len(edit) != 3
            or type(edit[0]) is not int
            or type(edit[1]) is not int
            or not pos <= edit[0] <= edit[0] + edit[1] <= len(old)
        ):
            raise DeltaMismatch(f"a config delta with a splice of {name} outside its records")
        start, removed, items = edit
        parts.append(old[pos:start])
        parts.append(_validated(adapter, items, f"{name}[{start}]"))
        pos = start + removed
    parts.append(old[pos:])
    return tuple(itertools.chain.from_iterable(parts))


def decode_delta(base: C, line: bytes) -> C:
    """:func:`parse` then :func:`apply`."""
    return apply(base, parse(line))


def is_delta(line: bytes) -> bool:
    return line.startswith(PREFIX)
