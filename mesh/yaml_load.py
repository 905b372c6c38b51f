"""Manifest text to plain data: YAML (the plain fast path of mesh/yaml_plain.py, else
PyYAML's C loader with a faster constructor) or JSON, document by document.

No models here (no pydantic): a process that only parses for another (mesh/ahead.py,
control/early.py) imports this and not the cluster objects, and starts parsing sooner.
mesh/manifests.py validates what this gives.
"""

from __future__ import annotations

import json
import marshal
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import yaml

from mesh.kube_fields import all_known
from mesh.yaml_plain import Decline, plain_documents

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


class _Array(list[Any]):
    """A JSON file that is an array of objects (its items are named by their place)."""


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


def parse_documents(text: str) -> list[Any] | None:
    """The decoded documents of a manifest text, plain data only (None: the text has a
    syntax error; :func:`load_text` reports it). Half of :func:`load_text`, for a process
    that parses for another (mesh/ahead.py); :func:`load_parsed` is the other."""
    try:
        return [list(d) if isinstance(d, _Array) else d for d in _documents(text, "<input>")]
    except ValueError:
        return None


# Kinds whose objects often hold one and the same sub-document, and that field: the Pods
# of one template have the same spec. mesh/manifests.py validates each distinct one once.
SHARED_FIELDS = {"Pod": "spec"}


def parse_checked(text: str) -> list[Any] | None:
    """:func:`parse_documents` for a process that parses for another (mesh/ahead.py), which
    also does the unknown-field check there (mesh/kube_fields.py): ``[documents, checked,
    shared]`` with ``checked`` true when no object of the text has a field its kind lacks
    (the loader may skip its own check), or None (a syntax error, a JSON array: the loader
    loads the text itself). ``shared`` (only when checked): per document, None or its
    :data:`SHARED_FIELDS` value as marshal bytes, the value itself left as None in the
    document, so that the loader decodes and validates each distinct one once."""
    docs = parse_documents(text)
    if docs is None or any(doc.__class__ is list for doc in docs):
        return None
    checked = all_known(docs)
    shared: list[bytes | None] = [None] * len(docs)
    if checked:
        for i, doc in enumerate(docs):
            kind = doc.get("kind") if doc.__class__ is dict else None
            name = SHARED_FIELDS.get(kind) if isinstance(kind, str) else None
            value = doc.get(name) if name is not None else None
            if value.__class__ is dict:
                try:
                    shared[i] = marshal.dumps(value)
                except Exception:  # a recursive alias: sent as it is (or not at all)
                    continue
                doc[name] = None  # the key kept in its place
    return [docs, checked, shared]
