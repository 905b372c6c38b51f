"""A parser for the plain YAML that manifests are made of, at about half PyYAML's cost.

Most manifests use a small part of YAML: block mappings and sequences by indentation,
one-line flow collections (``{app: web}``, ``[80, 443]``), plain scalars on one line,
quoted scalars without escapes, comments. Even with libyaml's C scanner PyYAML pays for
a node object, two marks and a resolver call per scalar, some 80 µs for a five-line
document; this module reads such a text line by line with a few regular expressions, and
hands each one-line flow collection, rewritten as JSON, to the C JSON decoder.

It is exact or it declines: anything outside that subset (anchors, aliases, tags, block
scalars, multi-line scalars, escapes, tabs, CR, non-ASCII, directives, ``...``, complex or
non-string keys, a line that does not fit) returns None, and the caller loads the text with
PyYAML, whose values and error messages then stand. Scalars are typed by the caller's
``scalar`` function (YAML 1.1 implicit resolution, as PyYAML does), so a value here is
always the one PyYAML gives; tests compare the two on generated documents.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

# A character libyaml refuses, or one this parser leaves to it (tab, CR).
_UNUSUAL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
# "key:" or "key: rest" with a plain key of the usual characters (labels, annotations).
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: +(.*))?$")
# A quoted scalar without escapes, then nothing or a comment.
_DOUBLE = re.compile(r'"([^"\\]*)" *(?:#.*)?$')
_SINGLE = re.compile(r"'([^']*)' *(?:#.*)?$")
# Characters that may not start a plain scalar here (YAML indicators, quotes, space).
_NOT_FIRST = frozenset("-?:,[]{}#&*!|>'\"%@` ")
# Flow collections (see _flow): a plain scalar (no indicator, colon, hash, quote or
# backslash inside; no trailing space), a single-quoted one without a quote, backslash or
# escape inside, or a double-quoted one without a backslash.
_P = r"""[^\s{}\[\],:#'"\\]"""
_FLOW_TOKEN = re.compile(
    r"""((?:[^\s{}\[\],:#'"&*!|>%@`?\\-]|-(?="""
    + _P
    + "))"
    + _P
    + "*(?: +"
    + _P
    + r"""+)*)|'([^'"\\]*)'|("[^"\\]*")"""
)
_BAD_COLON = re.compile(r":(?! )")

Scalar = Callable[[str], Any]


_MEMO_MAX = 65_536
# YAML limits an implicit key to 1024 characters (PyYAML refuses a longer one).
_KEY_MAX = 1000


class _Typing:
    """One caller's ``scalar`` through bounded memos (its values are immutable strings,
    numbers, booleans and nulls, and manifests repeat their keys, kinds and labels): a
    plain scalar's value, and the JSON literal of a flow collection's scalar."""

    def __init__(self, scalar: Scalar, strings: frozenset[str]) -> None:
        self.scalar = scalar
        self.strings = strings
        self.values: dict[str, Any] = {}
        self.literals: dict[str, str] = {}

    def typed(self, text: str) -> Any:
        values = self.values
        value = values.get(text, values)
        if value is values:
            value = self.scalar(text)
            if len(values) < _MEMO_MAX:
                values[text] = value
        return value

    def json_text(self, text: str) -> str:
        """A one-line flow collection as JSON: split (in C) into the text between scalars
        and the scalars, left to right, so a quoted scalar is taken whole and nothing
        inside it is rewritten; each scalar becomes its JSON literal."""
        parts = _FLOW_TOKEN.split(text)
        strings, literals, literal = self.strings, self.literals, self._literal
        out = [parts[0]]
        for k in range(1, len(parts), 4):
            plain = parts[k]
            if plain is not None:
                if plain[0] in strings:  # a string whatever it holds
                    out.append('"' + plain + '"')  # no quote, backslash or control inside
                else:
                    out.append(literals.get(plain) or literal(plain))
            elif parts[k + 1] is not None:
                out.append('"' + parts[k + 1] + '"')
            else:
                out.append(parts[k + 2])
            out.append(parts[k + 3])
        return "".join(out)

    def _literal(self, plain: str) -> str:
        value = self.typed(plain)
        if value.__class__ is str:
            literal = '"' + value + '"'
        elif value.__class__ is float and value != value:
            literal = "NaN"
        else:
            literal = json.dumps(value)  # int, float, bool, None
        if len(self.literals) < _MEMO_MAX:
            self.literals[plain] = literal
        return literal


_TYPINGS: dict[tuple[Scalar, frozenset[str]], _Typing] = {}
_PRINTABLE = frozenset(map(chr, range(33, 127)))


class Decline(Exception):
    """The text is outside the subset: PyYAML loads it (``scalar`` may raise it too)."""


def plain_documents(
    text: str, scalar: Scalar, typed_first: frozenset[str] = _PRINTABLE
) -> list[Any] | None:
    """The documents of ``text`` as PyYAML would load them, or None when the text is not
    plain enough to be sure (then load it with PyYAML). ``scalar`` types a plain scalar's
    text; a quoted scalar is a string (``scalar`` is given only plain ones). A plain
    scalar inside a flow collection whose first character is not in ``typed_first`` is
    taken as a string without asking ``scalar`` (PyYAML's resolvers go by it too)."""
    if not text.isascii() or _UNUSUAL.search(text):
        return None
    typing = _TYPINGS.get((scalar, typed_first))
    if typing is None:
        typing = _Typing(scalar, _PRINTABLE - typed_first)
        _TYPINGS[(scalar, typed_first)] = typing
    docs: list[Any] = []
    lines: list[tuple[int, str]] = []
    explicit = False
    try:
        for raw in text.split("\n"):
            content = raw.lstrip(" ")
            if not content or content[0] == "#":
                continue
            if raw[0] == "-" and raw.startswith("---"):
                if raw != "---":
                    return None  # "--- value", "--- !tag": PyYAML
                _close(docs, lines, explicit, typing)
                lines, explicit = [], True
                continue
            if raw[0] in "%." and raw.startswith(("%", "...")):
                return None
            lines.append((len(raw) - len(content), content.rstrip(" ")))
        _close(docs, lines, explicit, typing)
    except Decline:
        return None
    return docs


def _close(docs: list[Any], lines: list[tuple[int, str]], explicit: bool, typing: _Typing) -> None:
    if not lines:
        if explicit:
            docs.append(None)  # "---" and nothing: a null document
        return
    parser = _Block(lines, typing)
    value, end = parser.block(0, lines[0][0])
    if end != len(lines):
        raise Decline
    docs.append(value)


class _Block:
    """Block collections by indentation over (indent, content) lines; each method returns
    its value and the index of the first line it did not consume."""

    def __init__(self, lines: list[tuple[int, str]], typing: _Typing) -> None:
        self.lines = lines
        self.typing = typing

    def block(self, i: int, indent: int) -> tuple[Any, int]:
        content = self.lines[i][1]
        if content[0] == "-" and (len(content) == 1 or content[1] == " "):
            return self.sequence(i, indent)
        if _KEY.match(content):
            return self.mapping(i, indent)
        return inline(content, self.typing), self._after(i + 1, indent)

    def _after(self, i: int, indent: int) -> int:
        """``i`` after a value of a collection at ``indent``: a deeper line would continue
        a multi-line scalar or be an error, both PyYAML's to judge."""
        if i < len(self.lines) and self.lines[i][0] > indent:
            raise Decline
        return i

    def _nested(self, i: int, indent: int, *, seq_here: bool) -> tuple[Any, int]:
        """The value of an empty "key:" or "-": a deeper block, a sequence at the same
        indent (for a key), or null."""
        lines = self.lines
        if i < len(lines):
            deeper, content = lines[i]
            if deeper > indent:
                return self.block(i, deeper)
            if seq_here and deeper == indent and (content == "-" or content[:2] == "- "):
                return self.sequence(i, indent)
        return None, i

    def mapping(self, i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        lines, typing, n = self.lines, self.typing, len(self.lines)
        while i < n and lines[i][0] == indent:
            match = _KEY.match(lines[i][1])
            if match is None:
                raise Decline  # a "-" item under a mapping, a quoted key, ...: PyYAML
            key = typing.typed(match[1])
            if key.__class__ is not str or len(key) > _KEY_MAX:
                raise Decline  # "1:", "true:", "null:" are not string keys
            rest = match[2]
            if rest and rest[0] != "#":
                out[key] = inline(rest, typing)
                i = self._after(i + 1, indent)
            else:
                out[key], i = self._nested(i + 1, indent, seq_here=True)
                i = self._after(i, indent)
        return out, i

    def sequence(self, i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        lines, n = self.lines, len(self.lines)
        while i < n and lines[i][0] == indent:
            content = lines[i][1]
            if content[0] != "-" or not (len(content) == 1 or content[1] == " "):
                break  # the next key of the mapping this sequence is a value of
            rest = content[1:].lstrip(" ")
            if not rest or rest[0] == "#":
                value, i = self._nested(i + 1, indent, seq_here=False)
            else:
                # "- item": the item starts at its own column, as a line of its own would.
                # (The line list belongs to this one parse: it is rewritten in place.)
                column = indent + len(content) - len(rest)
                lines[i] = (column, rest)
                value, i = self.block(i, column)
            out.append(value)
            i = self._after(i, indent)
        return out, i


def inline(text: str, typing: _Typing) -> Any:
    """A value on one line: a quoted or plain scalar, or a flow collection."""
    first = text[0]
    if first == '"' or first == "'":
        match = (_DOUBLE if first == '"' else _SINGLE).match(text)
        if match is None:
            raise Decline
        return scalar_text(match[1])
    if first == "{" or first == "[":
        return _flow(text, typing)
    if first in _NOT_FIRST and not (first == "-" and len(text) > 1 and text[1] != " "):
        raise Decline
    if "#" in text:
        cut = text.find(" #")
        if cut >= 0:
            text = text[:cut].rstrip(" ")
        if "#" in text:
            raise Decline
    if ": " in text or text[-1] == ":":
        raise Decline  # "a: b: c" is an error in YAML
    return typing.typed(text)


def scalar_text(text: str) -> str:
    """A quoted scalar: a string whatever it looks like (interned as the plain ones are)."""
    return sys.intern(text)


def _flow(text: str, typing: _Typing) -> Any:
    """A flow collection on one line (``{k: v, k2: [a, b]}``), rewritten as JSON
    (:meth:`_Typing.json_text`) and read by the C JSON decoder. What JSON and YAML would read differently is declined first (a colon
    without a space after it: "a:1" is one scalar in YAML; a hash: a comment); whatever
    else JSON refuses (a trailing comma, a non-string key, an anchor) is declined by the
    decoder."""
    if "#" in text or len(text) > _KEY_MAX or _BAD_COLON.search(text):
        raise Decline  # (a long line may hold a key longer than YAML allows)
    try:
        return json.loads(typing.json_text(text))
    except ValueError:
        raise Decline from None
