"""Fields Kubernetes does not know, in a manifest read from a file (pure).

kubectl validates strictly by default (``--validate=strict`` since 1.27): the API server
refuses an object with a field its schema lacks, and a typo such as ``sepc`` or
``selecter`` fails loudly instead of leaving a Service without its selector. The models in
mesh/objects.py hold only the fields the mesh uses and ignore the rest, so they cannot tell a
typo from a field Kubernetes has and the mesh does not read; the full field names of every
kind come from mesh/kube_fields_data.py (generated from the Kubernetes client's models and
the Gateway API CRDs by mesh/kube_fields_gen.py).

Objects from a real API server need no such check (the server already made it), and kinds
without a table are not checked. The check walks only the mappings of the document, one
dict lookup per key; label maps, annotations and free-form fields are not walked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh import kube_fields_data

# A field's entry in a type's table: None for a scalar, a label map or a free-form field
# (nothing to walk), else (shape, the child type's table) with shape "" (one object), "["
# (a list of) or "{" (a map to). A table maps every field name the type has.
_Entry = tuple[str, "_Fields"] | None
_Fields = dict[str, _Entry]


class _Type:
    """One object type: its field names and, for fields holding objects, how (object,
    list or map) and of which type."""

    __slots__ = ("children", "fields", "known", "name")

    def __init__(self, name: str, known: frozenset[str]) -> None:
        self.name = name
        self.known = known
        self.children: dict[str, tuple[str, _Type]] = {}
        self.fields: _Fields = dict.fromkeys(known)


def parse(text: str) -> dict[str, dict[str, str]]:
    """The types of kube_fields_data's TYPES text: type name -> field -> child marker
    ("" a scalar or free-form, "T" an object, "[T" a list of, "{T" a map to)."""
    out: dict[str, dict[str, str]] = {}
    for line in text.split("\n"):
        if line:
            name, *fields = line.split(" ")
            out[name] = {f: c for f, _, c in (x.partition(":") for x in fields)}
    return out


_KINDS: dict[str, _Type] = {}


def _compile() -> dict[str, _Type]:
    """The linked types, built on first use (a few milliseconds, once per process)."""
    if not _KINDS:
        raw = parse(kube_fields_data.TYPES)
        types = {name: _Type(name, frozenset(fields)) for name, fields in raw.items()}
        for name, fields in raw.items():
            t = types[name]
            for field, child in fields.items():
                if child:
                    shape = child[0] if child[0] in "[{" else ""
                    t.children[field] = (shape, types[child.lstrip("[{")])
                    t.fields[field] = (shape, types[child.lstrip("[{")].fields)
        _KINDS.update({kind: types[name] for kind, name in kube_fields_data.KINDS.items()})
    return _KINDS


def has_table(kind: str) -> bool:
    return kind in _compile()


def unknown_fields(doc: dict[str, Any], kind: str) -> list[str]:
    """The paths (``spec.ports[0].nme``) of the fields of ``doc`` that its kind does not
    have, in document order; [] when all are known or the kind has no table."""
    t = (_KINDS or _compile()).get(kind)
    if t is None or _clean(doc, t.fields):
        return []
    out: list[str] = []
    _collect(doc, t, "", out)
    return out


def all_known(docs: list[Any]) -> bool:
    """Whether :func:`unknown_fields` is [] for every object a manifest loader takes from
    ``docs`` (a text's decoded documents): each is a mapping with a string kind that is not
    a list kind (whose items the loader unpacks), or null. False says only "not sure": a
    process that parses for another (control/early.py) tells it so, and the loader, which
    needs the models this module does not import, then skips its own check."""
    for doc in docs:
        if doc is None:
            continue
        if doc.__class__ is not dict:
            return False
        kind = doc.get("kind")
        if kind.__class__ is not str or kind.endswith("List") or unknown_fields(doc, kind):
            return False
    return True


def _clean(node: dict[str, Any], fields: _Fields) -> bool:
    """Whether every field under ``node`` is known: the fast path, no paths built. One
    dict lookup per key (a Pod of the scale benchmark is some seven mappings)."""
    for field, value in node.items():
        found = fields.get(field, _MISSING)
        if found is None:
            continue
        if found is _MISSING:
            return False
        shape, child = found
        cls = value.__class__
        if shape == "":
            if cls is dict and not _clean(value, child):
                return False
        elif shape == "[":
            if cls is list:
                for item in value:
                    if item.__class__ is dict and not _clean(item, child):
                        return False
        elif cls is dict:
            for item in value.values():
                if item.__class__ is dict and not _clean(item, child):
                    return False
    return True


_MISSING: Any = object()


def _collect(node: dict[str, Any], t: _Type, path: str, out: list[str]) -> None:
    """Every unknown field under ``node`` (the slow path, after _clean said there is one)."""
    prefix = f"{path}." if path else ""
    for field, value in node.items():
        if field not in t.known:
            out.append(f"{prefix}{field}")
            continue
        found = t.children.get(field)
        if found is None:
            continue
        shape, child = found
        if shape == "" and isinstance(value, dict):
            _collect(value, child, f"{prefix}{field}", out)
        elif shape == "[" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _collect(item, child, f"{prefix}{field}[{i}]", out)
        elif shape == "{" and isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict):
                    _collect(item, child, f"{prefix}{field}.{key}", out)


def describe(doc: dict[str, Any], kind: str, paths: list[str]) -> str:
    """One sentence about the unknown fields ``paths`` of ``doc`` (the first one named by
    the caller as the field): a close known name when there is one, and how many more."""
    first = paths[0]
    name = first.rsplit(".", 1)[-1]
    msg = unknown_field(name, _known_beside(doc, kind, first))
    if len(paths) > 1:
        more = ", ".join(paths[1:4]) + (", ..." if len(paths) > 4 else "")
        msg += f"; also unknown: {more}"
    return msg


def unknown_field(name: str, known: Iterable[str]) -> str:
    """``unknown field "selecter" (did you mean "selector"?)``: the hint when one is close."""
    import difflib  # the error path only: not a start-up cost

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f'unknown field "{name}"' + (f' (did you mean "{close[0]}"?)' if close else "")


def _known_beside(doc: dict[str, Any], kind: str, path: str) -> frozenset[str]:
    """The field names of the object holding ``path`` (for the did-you-mean hint)."""
    t: _Type | None = _compile().get(kind)
    node: Any = doc
    for part in path.split(".")[:-1]:
        if t is None or not isinstance(node, dict):
            return frozenset()
        index = None
        if part.endswith("]") and "[" in part:
            part, _, rest = part.partition("[")
            index = int(rest[:-1])
        found = t.children.get(part)
        node = node.get(part)
        if found is None:
            return frozenset()
        shape, t = found
        if shape == "[" and index is not None and isinstance(node, list):
            node = node[index]
        elif shape == "{" and isinstance(node, dict):
            return frozenset()  # a map's keys are free: the path part after it is a key
    return t.known if t is not None else frozenset()
