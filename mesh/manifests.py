"""Reading cluster objects from YAML or JSON manifests.

One file may hold many documents (``---``), a JSON array, or a ``kind: List``. Each object
is validated on its own: a bad object yields one :class:`ManifestError` naming the file, the
object and the field, and every other object of the file still loads.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from mesh.kube_fields import describe as describe_unknown
from mesh.kube_fields import unknown_field, unknown_fields
from mesh.objects import KINDS, KubeObject
from mesh.yaml_plain import Decline, plain_documents

log = logging.getLogger("mesh.manifests")

try:  # the C loader is ten times faster; fall back where libyaml is missing
    _Base: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Base = yaml.SafeLoader


class _Loader(_Base):  # type: ignore[misc]
    """Safe loader that keeps timestamps as text: the API carries them as RFC 3339 strings
    (``deletionTimestamp``), and a ``datetime`` would fail the string fields.

    Tag resolution is memoised: with no path resolvers (none are registered), a scalar's
    tag depends only on its text and on whether it was plain, and PyYAML's regex walk per
    scalar was the largest Python cost of loading a big manifest."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        if not implicit[0]:
            return _STR  # quoted or block scalars resolve as strings (no path resolvers)
        tag = _TAGS.get(value)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_TAGS) < _MEMO_MAX:
                _TAGS[value] = tag
        return tag


_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),
)

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# Bounded memos shared by every load: plain scalar text -> tag, and (tag, text) -> value for
# the immutable non-string scalars (ints, booleans, null, floats).
_MEMO_MAX = 65_536
_TAGS: dict[str, str] = {}
_VALUES: dict[tuple[str, str], Any] = {}
_IMMUTABLE = (int, float, bool, type(None))


class _Unusual(Exception):
    """A node the fast builder leaves to PyYAML's constructor (tags, merge keys, cycles)."""


def _load_all(text: str) -> Iterator[Any]:
    """``yaml.load_all`` with a faster constructor for plain mappings, sequences and scalars.

    PyYAML's constructor (Python, generator based) was a third of the time to load a big
    manifest; documents made of plain nodes are built here directly, each scalar through
    the loader's own constructor for its resolved tag, so values are the same. Any other
    document (explicit tags, ``<<`` merge keys, recursive aliases) goes to PyYAML whole."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            try:
                yield _build(loader, node, set())
            except _Unusual:
                yield loader.construct_document(node)
    finally:
        loader.dispose()


def _build(loader: Any, node: Any, path: set[int]) -> Any:
    cls = node.__class__
    if cls is yaml.ScalarNode:
        if node.tag == _STR:
            # Interned: a big manifest repeats its namespaces, labels, ports and phases
            # thousands of times, and the models keep the very strings they were given.
            return sys.intern(node.value)
        memo = (node.tag, node.value)
        if memo in _VALUES:
            return _VALUES[memo]
        ctor = loader.yaml_constructors.get(node.tag)
        value = ctor(loader, node) if ctor is not None else None
        if ctor is None or isinstance(value, types.GeneratorType):
            raise _Unusual
        if value.__class__ in _IMMUTABLE and len(_VALUES) < _MEMO_MAX:
            _VALUES[memo] = value
        return value
    if id(node) in path:
        raise _Unusual  # a recursive alias
    path.add(id(node))
    try:
        if cls is yaml.MappingNode and node.tag == _MAP:
            out: dict[Any, Any] = {}
            for key, value in node.value:
                if key.__class__ is not yaml.ScalarNode or key.tag != _STR:
                    raise _Unusual  # merge keys, non-string keys
                out[sys.intern(key.value)] = _build(loader, value, path)
            return out
        if cls is yaml.SequenceNode and node.tag == _SEQ:
            return [_build(loader, item, path) for item in node.value]
        raise _Unusual
    finally:
        path.discard(id(node))


# A loader used only to type plain scalars for the plain-YAML parser (resolve, construct).
_SCALARS = _Loader("")


# The first characters of the plain scalars an implicit resolver may type (digits, signs,
# "y", "n", "t", "f", "o", "~", ...): a scalar starting otherwise is a string, as in
# PyYAML's own resolve, which looks its resolvers up by the first character.
_TYPED_FIRST = frozenset(_Loader.yaml_implicit_resolvers)
_DOTTED = re.compile(r"[0-9]+(?:\.[0-9]+){2,}")


def _plain_scalar(text: str) -> Any:
    """A plain scalar's value exactly as :func:`_build` makes it (same memos)."""
    if text[:1] not in _TYPED_FIRST:
        return sys.intern(text)  # most names, labels and kinds: no resolver applies
    if _DOTTED.fullmatch(text):
        return text  # an IPv4 address: a number has one dot at most, a date dashes
    tag = _SCALARS.resolve(yaml.ScalarNode, text, (True, False))
    if tag == _STR:
        return sys.intern(text)
    memo = (tag, text)
    if memo in _VALUES:
        return _VALUES[memo]
    ctor = _Loader.yaml_constructors.get(tag)
    if ctor is None:
        raise Decline  # "=" (a value key), "<<" (a merge key): PyYAML's to load
    value = ctor(_SCALARS, yaml.ScalarNode(tag, text))
    if value.__class__ in _IMMUTABLE and len(_VALUES) < _MEMO_MAX:
        _VALUES[memo] = value
    return value


# A validator message that starts with the field it is about ("ports: at least one ...").
_FIELD_PREFIX = re.compile(
    r"^([A-Za-z][A-Za-z0-9]*(?:\[\d+\])*(?:\.[A-Za-z][A-Za-z0-9]*(?:\[\d+\])*)*): (.+)$", re.S
)
# Pydantic error types that only say "wrong type"; a union reports one per member, and the
# member whose own validator failed says more.
_TYPE_ERRORS = {"int_parsing", "int_type", "string_type", "bool_type", "dict_type", "list_type"}


@dataclass(frozen=True, slots=True)
class ManifestError:
    """One object that could not be loaded, and why."""

    source: str
    # "Kind/namespace/name" as far as it could be read ("?" for a part that could not), the
    # place of a document that is not an object ("List/items[2]", "[2]" in a JSON array),
    # or "" when the file itself is bad (not YAML, unreadable)
    object: str
    field: str  # dotted path of the offending field, "" when the document itself is bad
    message: str
    # (kind, namespace, name) when the object could be identified, else None
    key: tuple[str, str, str] | None = None

    def __str__(self) -> str:
        where = f"{self.source}: {self.object}" if self.object else self.source
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


@dataclass(slots=True)
class LoadResult:
    objects: list[KubeObject] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _part(value: Any) -> str | None:
    """A kind, namespace or name as text, when it is one (a number is shown as written)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value) or None


def _shown(value: Any, limit: int = 40) -> str:
    try:
        text = json.dumps(value, default=str)
    except ValueError:  # a recursive YAML alias
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(doc: dict[str, Any]) -> str:
    """``Kind/namespace/name`` as far as the document says them, whatever else is wrong."""
    kind = _part(doc.get("kind")) or "?"
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = _part(meta.get("name")) or "?"
    ns = _part(meta.get("namespace"))
    cls = KINDS.get(kind)
    if cls is None:  # an unknown or missing kind: say what the document gives
        return f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"
    if cls.NAMESPACED:
        return f"{kind}/{ns or 'default'}/{name}"
    return f"{kind}/{name}"


def _key(doc: dict[str, Any]) -> tuple[str, str, str] | None:
    kind = doc.get("kind")
    meta = doc.get("metadata")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    ns = (meta.get("namespace") or "default") if cls.NAMESPACED else ""
    return (cls.KIND, str(ns), meta["name"])


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "function-wrap")) or part in (
            "int",
            "str",
            "constrained-int",
            "constrained-str",
            "literal",
        ):
            continue
        else:
            out += ("." if out else "") + part
    return out


def parse_object(
    doc: Any, source: str = "<input>", place: str = "?", *, strict_fields: bool = True
) -> KubeObject | ManifestError | None:
    """Validate one decoded document. Returns None (with a warning logged) for unknown kinds.

    ``place``: how to name a document that is not an object (where it is).
    ``strict_fields``: refuse an object with a field its kind does not have in Kubernetes
    (as kubectl's default strict validation does; mesh/kube_fields.py), which a manifest
    file gets; an object read from a real API server has been checked there."""
    if not isinstance(doc, dict):
        if place == "?":  # where it is is not known here: what it holds finds it
            place = f"the document {_shown(doc)}"
        return ManifestError(source, place, "", f"expected an object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        return ManifestError(source, _describe(doc), "kind", "missing or not a string")
    cls = KINDS.get(kind)
    if cls is None:
        return None
    api_version = doc.get("apiVersion")
    if api_version is not None and api_version not in cls.API_VERSIONS:
        return ManifestError(
            source,
            _describe(doc),
            "apiVersion",
            f"{api_version!r} is not supported for {kind} (expected one of {', '.join(cls.API_VERSIONS)})",
            _key(doc),
        )
    if strict_fields and (unknown := unknown_fields(doc, kind)):
        message = describe_unknown(doc, kind, unknown)
        return ManifestError(source, _describe(doc), unknown[0], message, _key(doc))
    if not isinstance(doc.get("metadata"), dict):
        return ManifestError(source, _describe(doc), "metadata", "missing or not an object")
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        field, msg = _first_error(exc)
        return ManifestError(source, _describe(doc), field, msg, _key(doc))


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """The most telling error of a validation failure, as (field path, message)."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] not in _TYPE_ERRORS), errors[0])
    field = _field_path(tuple(first["loc"]))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    match = _FIELD_PREFIX.match(msg)
    if match:  # "ports: at least one port is required" raised at spec -> field spec.ports
        inner, msg = match.groups()
        field = f"{field}.{inner}" if field else inner
        field = field.replace(".[", "[")
    return field, msg


def _documents(text: str, source: str) -> Iterator[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if isinstance(data, list):
            yield _Array(data)  # its items are named by their place, "[2]"
        else:
            yield data
        return
    plain = plain_documents(text, _plain_scalar, _TYPED_FIRST)
    if plain is not None:  # the common case, at a tenth of PyYAML's cost
        yield from plain
        return
    try:
        yield from _load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"invalid YAML{where}: {problem}") from None


_LIST_FIELDS = frozenset({"apiVersion", "kind", "metadata", "items"})


class _Array(list[Any]):
    """A JSON file that is an array of objects (its items are named by their place)."""


def _flatten(doc: Any, place: str = "?") -> Iterator[tuple[Any, str]]:
    """Expand ``kind: List``, typed lists (``ServiceList``) and JSON arrays into (document,
    where it is); items of a typed list may leave out their kind, as the API's list
    responses do."""
    if isinstance(doc, _Array):
        for i, item in enumerate(doc):
            yield from _flatten(item, f"[{i}]")
        return
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if isinstance(kind, str) and (kind == "List" or kind[: -len("List")] in KINDS):
        # A list's own typo ("itmes") would drop its items unseen: named, as in an object.
        for name in [k for k in doc if k not in _LIST_FIELDS]:
            yield ManifestError("", kind, str(name), unknown_field(str(name), _LIST_FIELDS)), place
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        items = doc.get("items") or []
        if not isinstance(items, list):
            yield ManifestError("", kind, "items", "must be a list"), place
            return
        item_kind = kind[: -len("List")]
        for i, item in enumerate(items):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"kind": item_kind, **item}
                if "apiVersion" in doc:
                    item.setdefault("apiVersion", doc["apiVersion"])
            yield from _flatten(
                item, f"{kind}/items[{i}]" if place == "?" else f"{place}.items[{i}]"
            )
        return
    if kind == "List":  # a List without items holds nothing
        return
    yield doc, place


def load_text(text: str, source: str = "<input>") -> LoadResult:
    """Load every object of a manifest text; never raises on bad input."""
    result = LoadResult()
    docs = _documents(text, source)
    while True:
        try:
            doc = next(docs)
        except StopIteration:
            break
        except ValueError as exc:
            # A syntax error ends the stream: what came before it is kept.
            result.errors.append(ManifestError(source, "", "", str(exc)))
            break
        _take(result, doc, source)
    return result


def parse_documents(text: str) -> list[Any] | None:
    """The decoded documents of a manifest text, plain data only (None: the text has a
    syntax error; :func:`load_text` reports it). Half of :func:`load_text`, for a process
    that parses for another (mesh/ahead.py); :func:`load_parsed` is the other."""
    try:
        return [list(d) if isinstance(d, _Array) else d for d in _documents(text, "<input>")]
    except ValueError:
        return None


def load_parsed(docs: list[Any], source: str = "<input>") -> LoadResult:
    """:func:`load_text` of a text whose documents :func:`parse_documents` gave: the same
    objects, errors and warnings, without parsing again."""
    result = LoadResult()
    for doc in docs:
        _take(result, doc, source)
    return result


def _take(result: LoadResult, doc: Any, source: str) -> None:
    """Validate one decoded document into ``result``."""
    if doc is None:
        return
    for item, place in _flatten(doc):
        if isinstance(item, ManifestError):
            result.errors.append(ManifestError(source, item.object, item.field, item.message))
            continue
        parsed = parse_object(item, source, place)
        if parsed is None:
            kind = item.get("kind") if isinstance(item, dict) else "?"
            result.warnings.append(f"{source}: ignoring unknown kind {kind!r}")
        elif isinstance(parsed, ManifestError):
            result.errors.append(parsed)
        else:
            result.objects.append(parsed)
