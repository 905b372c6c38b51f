"""Reading cluster objects from YAML or JSON manifests.

One file may hold many documents (``---``), a JSON array, or a ``kind: List``. Each object
is validated on its own: a bad object yields one :class:`ManifestError` naming the file, the
object and the field, and every other object of the file still loads.
"""

from __future__ import annotations

import json
import logging
import marshal
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mesh.kube_fields import describe as describe_unknown
from mesh.kube_fields import unknown_field, unknown_fields
from mesh.objects import KINDS, KubeObject

# The text side (no models) is mesh.yaml_load, which a parse-only process imports alone;
# its two parse functions are re-exported as this module's.
from mesh.yaml_load import SHARED_FIELDS, _Array, _documents
from mesh.yaml_load import parse_checked as parse_checked
from mesh.yaml_load import parse_documents as parse_documents

log = logging.getLogger("mesh.manifests")

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


_LIST_FIELDS = frozenset({"apiVersion", "kind", "metadata", "items"})


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


def load_parsed(
    docs: list[Any],
    source: str = "<input>",
    *,
    checked: bool = False,
    shared: list[bytes | None] | None = None,
    models: dict[tuple[str, bytes], Any] | None = None,
) -> LoadResult:
    """:func:`load_text` of a text whose documents :func:`parse_documents` gave: the same
    objects, errors and warnings, without parsing again. ``checked``, ``shared``: as
    :func:`parse_checked` gives them (no unknown fields, so that check is not made again;
    sub-documents as marshal bytes). ``models``: the sub-models validated so far, by kind
    and bytes (the caller keeps it across the texts of one load): an object whose
    sub-document has the same bytes as one validated before is given that model, which
    is frozen and equal to what validating those bytes again would give. Only valid ones
    are kept, so an invalid sub-document is validated, and reported, every time."""
    result = LoadResult()
    for i, doc in enumerate(docs):
        raw = shared[i] if shared is not None else None
        if raw is None:
            _take(result, doc, source, strict_fields=not checked)
            continue
        kind = doc["kind"]
        name = SHARED_FIELDS[kind]
        key = (kind, raw)
        model = models.get(key) if models is not None else None
        doc[name] = marshal.loads(raw) if model is None else model
        count = len(result.objects)
        _take(result, doc, source, strict_fields=not checked)
        if model is None and models is not None and len(result.objects) > count:
            models[key] = getattr(result.objects[-1], name)
    return result


def _take(result: LoadResult, doc: Any, source: str, *, strict_fields: bool = True) -> None:
    """Validate one decoded document into ``result``."""
    if doc is None:
        return
    if doc.__class__ is dict:
        kind = doc.get("kind")
        if kind.__class__ is str and not kind.endswith("List") and kind[:-4] not in KINDS:
            # What _flatten gives for an object that is not a list: itself, placed "?"
            # (the common case, without the generator).
            _take_item(result, doc, source, "?", strict_fields)
            return
    for item, place in _flatten(doc):
        if isinstance(item, ManifestError):
            result.errors.append(ManifestError(source, item.object, item.field, item.message))
            continue
        _take_item(result, item, source, place, strict_fields)


def _take_item(result: LoadResult, item: Any, source: str, place: str, strict_fields: bool) -> None:
    parsed = parse_object(item, source, place, strict_fields=strict_fields)
    if parsed is None:
        kind = item.get("kind") if isinstance(item, dict) else "?"
        result.warnings.append(f"{source}: ignoring unknown kind {kind!r}")
    elif isinstance(parsed, ManifestError):
        result.errors.append(parsed)
    else:
        result.objects.append(parsed)
