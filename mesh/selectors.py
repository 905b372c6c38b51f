"""Label selectors as ``kubectl -l`` writes them (pure).

Grammar (k8s.io/apimachinery/pkg/labels): requirements separated by commas, each one of
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
``key`` (exists) and ``!key`` (does not exist). All must hold. As in Kubernetes, ``!=`` and
``notin`` also match objects without the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]

# A label key: an optional DNS-subdomain prefix and '/', then a name of up to 63 characters.
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


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


def _requirement(part: str) -> Requirement:
    if m := _SET.match(part):
        values = [v.strip() for v in m.group(3).split(",")]
        if not all(values) or not all(_VALUE_RE.match(v) for v in values):
            raise ValueError(f"{part.strip()!r}: invalid value list")
        return Requirement(m.group(1), m.group(2), frozenset(values))  # type: ignore[arg-type]
    if m := _EQ.match(part):
        op: Op = "!=" if m.group(2) == "!=" else "="
        return Requirement(m.group(1), op, frozenset({m.group(3)}))
    if m := _EXISTS.match(part):
        return Requirement(m.group(2), "!exists" if m.group(1) else "exists")
    raise ValueError(f"{part.strip()!r} is not a label requirement")


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises ValueError with one sentence saying what is wrong."""
    if not text.strip():
        return Selector()
    return Selector(tuple(_requirement(p) for p in _split(text)))
