"""Label selectors as ``kubectl -l`` writes them (pure).

Grammar (k8s.io/apimachinery/pkg/labels): requirements separated by commas, each one of
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
``key`` (exists) and ``!key`` (does not exist). All must hold. As in Kubernetes, ``!=`` and
``notin`` also match objects without the key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mesh.labels import label_key_error, label_value_error

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]

# Keys and values are read as tokens (any run of characters that are not space or
# punctuation of the grammar, as apimachinery's lexer does) and then checked with the API
# server's rules (mesh/labels.py), so a bad key is named with the reason.
_TOKEN = r"[^\s,=!()<>]+"
_SET = re.compile(rf"\s*({_TOKEN})\s+(in|notin)\s*\(([^()]*)\)\s*")
_EQ = re.compile(rf"\s*({_TOKEN})\s*(==|=|!=)\s*({_TOKEN})?\s*")
_EXISTS = re.compile(rf"\s*(!?)\s*({_TOKEN})\s*")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        match self.op:
            case "=" | "in":
                return has and labels[self.key] in self.values
            case "!=" | "notin":
                return not has or labels[self.key] not in self.values
            case "exists":
                return has
            case "!exists":
                return not has


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced '('")
    parts.append(text[start:])
    return parts


def _key(part: str, key: str) -> str:
    if (error := label_key_error(key)) is not None:
        raise ValueError(f"{part.strip()!r}: invalid label key {key!r}: {error}")
    return key


def _value(part: str, value: str) -> str:
    if (error := label_value_error(value)) is not None:
        raise ValueError(f"{part.strip()!r}: invalid label value {value!r}: {error}")
    return value


def _requirement(part: str) -> Requirement:
    if m := _SET.fullmatch(part):
        values = [v.strip() for v in m.group(3).split(",")]
        key = _key(part, m.group(1))
        # apimachinery reads "in ()" and "in (a,,b)" as holding the empty value; an empty
        # entry here is far more likely a slip, so it is refused.
        if not all(values):
            raise ValueError(f"{part.strip()!r}: invalid value list")
        for v in values:
            _value(part, v)
        return Requirement(key, m.group(2), frozenset(values))  # type: ignore[arg-type]
    if m := _EQ.fullmatch(part):
        op: Op = "!=" if m.group(2) == "!=" else "="
        return Requirement(_key(part, m.group(1)), op, frozenset({_value(part, m.group(3) or "")}))
    if m := _EXISTS.fullmatch(part):
        return Requirement(_key(part, m.group(2)), "!exists" if m.group(1) else "exists")
    raise ValueError(f"{part.strip()!r} is not a label requirement")


def from_label_selector(
    match_labels: Mapping[str, str], match_expressions: Iterable[tuple[str, str, Sequence[str]]]
) -> Selector:
    """A ``metav1.LabelSelector`` (already validated) as a :class:`Selector`: matchLabels
    and matchExpressions all must hold; an empty selector matches everything."""
    ops: dict[str, Op] = {
        "In": "in",
        "NotIn": "notin",
        "Exists": "exists",
        "DoesNotExist": "!exists",
    }
    reqs = [Requirement(k, "=", frozenset({v})) for k, v in match_labels.items()]
    reqs += [Requirement(k, ops[op], frozenset(values)) for k, op, values in match_expressions]
    return Selector(tuple(reqs))


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises ValueError with one sentence saying what is wrong."""
    if not text.strip():
        return Selector()
    return Selector(tuple(_requirement(p) for p in _split(text)))
