"""Label keys and values, annotations and label selectors, checked as the API server does.

The rules are k8s.io/apimachinery's (``pkg/api/validate/content/kube.go``,
``pkg/apis/meta/v1/validation``, ``pkg/api/validation/objectmeta.go``):

- a label key (a "qualified name") is an optional DNS-1123 subdomain prefix of at most 253
  bytes and a '/', then a name of 1 to 63 bytes matching ``([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]``;
- a label value is empty or at most 63 bytes of the same pattern;
- an annotation key is a label key once lower-cased; all keys and values together are at
  most 256 KiB;
- a selector requirement's operator is In, NotIn, Exists or DoesNotExist; In and NotIn need
  values, Exists and DoesNotExist take none; every value is a label value.

Pure. A big start-up meets the same few keys and values thousands of times, so the ones found
valid are remembered (bounded sets): the common case is one set lookup per key and value.
Errors are raised as ``ValueError`` whose text starts with the offending key or value quoted
(``"app/x/y": ...``), so the manifest reader puts it under the field that holds it; a map
with several bad entries gets one message naming each (``"app/x/y": ...; "-web": ...``), as
the API server lists every field error rather than the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Go's regexp ``^...$`` matches the whole text; Python's ``$`` would also allow a trailing
# newline, so every pattern is used with fullmatch. The classes are ASCII ranges on purpose.
_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")

NAME_MAX = 63
PREFIX_MAX = 253
VALUE_MAX = 63
ANNOTATIONS_MAX = 256 * 1024  # bytes of all keys and values together
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')"
)
_PREFIX_RULE = (
    "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or '.', "
    "starting and ending with an alphanumeric character (e.g. 'example.com')"
)

# Bounded memos of what was found valid: past the bound, checks still run, uncached.
_MEMO_MAX = 65_536
_GOOD_KEYS: set[str] = set()
_GOOD_VALUES: set[str] = {""}
_GOOD_ANNOTATION_KEYS: set[str] = set()


def _utf8_len(text: str) -> int:
    """Length in bytes, as Go's ``len``: the limits are in bytes, not characters."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name), or None when it is."""
    if key in _GOOD_KEYS:
        return None
    error = _key_error(key)
    if error is None and len(_GOOD_KEYS) < _MEMO_MAX:
        _GOOD_KEYS.add(key)
    return error


def _key_error(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) > 2:
        return (
            "a label key is a name with an optional DNS subdomain prefix and one '/' "
            "(e.g. 'example.com/MyName'), and its name part " + _NAME_RULE
        )
    problems: list[str] = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            if _utf8_len(prefix) > PREFIX_MAX:
                problems.append(f"prefix part must be no more than {PREFIX_MAX} bytes")
            if not _SUBDOMAIN.fullmatch(prefix):
                problems.append("prefix part " + _PREFIX_RULE)
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    else:
        if _utf8_len(name) > NAME_MAX:
            problems.append(f"name part must be no more than {NAME_MAX} bytes")
        if not _NAME.fullmatch(name):
            problems.append("name part " + _NAME_RULE)
    return "; ".join(problems) or None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None when it is."""
    if value in _GOOD_VALUES:
        return None
    problems: list[str] = []
    if _utf8_len(value) > VALUE_MAX:
        problems.append(f"must be no more than {VALUE_MAX} bytes")
    if not _NAME.fullmatch(value):
        problems.append(
            "a label value must be empty or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character "
            "(e.g. 'MyValue', 'my_value' or '12345')"
        )
    if problems:
        return "; ".join(problems)
    if len(_GOOD_VALUES) < _MEMO_MAX:
        _GOOD_VALUES.add(value)
    return None


def check_labels(labels: Mapping[str, str]) -> None:
    """Raise ValueError naming every invalid key and value of a label map (or selector), as
    the API server lists one field error per bad entry: ``"a/b/c": why; "-x": why``."""
    good_keys, good_values = _GOOD_KEYS, _GOOD_VALUES
    errors: list[tuple[str, str]] = []  # (quoted key or value, why)
    for key, value in labels.items():
        if key not in good_keys and (error := label_key_error(key)) is not None:
            errors.append((_quote(key), error))
        if value not in good_values and (error := label_value_error(value)) is not None:
            errors.append((_quote(value), error))
    if errors:
        raise ValueError(_all(errors))


def _all(errors: list[tuple[str, str]]) -> str:
    """Every error of one map in one message, the entries with the same reason together
    (``"a b", "c d": why; "-x": why``); the first bad entry leads."""
    grouped: dict[str, list[str]] = {}
    for what, why in errors:
        grouped.setdefault(why, []).append(what)
    return "; ".join(
        f"{', '.join(whats)}: {why}" if whats[0] else why for why, whats in grouped.items()
    )


def check_annotations(annotations: Mapping[str, str]) -> None:
    """Raise ValueError for an invalid annotation key or annotations over 256 KiB in all."""
    if not annotations:
        return
    good = _GOOD_ANNOTATION_KEYS
    total = 0
    errors: list[tuple[str, str]] = []
    for key, value in annotations.items():
        if key not in good:
            # The rule is the label key's with case ignored (the API server lower-cases).
            error = label_key_error(key.lower())
            if error is not None:
                errors.append((_quote(key), error))
            elif len(good) < _MEMO_MAX:
                good.add(key)
        total += len(key) + len(value)
    if total > ANNOTATIONS_MAX // 4:  # characters are at most 4 bytes: count bytes only then
        total = sum(_utf8_len(k) + _utf8_len(v) for k, v in annotations.items())
        if total > ANNOTATIONS_MAX:
            errors.append(
                (
                    "",
                    f"must have at most {ANNOTATIONS_MAX} bytes in all keys and values, not {total}",
                )
            )
    if errors:
        raise ValueError(_all(errors))


def requirement_error(key: str, operator: str, values: Sequence[str]) -> tuple[str, str] | None:
    """What is wrong with one ``matchExpressions`` entry, as (field, message), or None.

    The field is relative to the entry: ``operator``, ``values``, ``key`` or ``values[i]``."""
    if operator in ("In", "NotIn"):
        if not values:
            return "values", "must be specified when `operator` is 'In' or 'NotIn'"
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            return "values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
    else:
        return (
            "operator",
            f"{_quote(operator)}: not a valid selector operator (one of {', '.join(OPERATORS)})",
        )
    if (error := label_key_error(key)) is not None:
        return "key", f"{_quote(key)}: {error}"
    for i, value in enumerate(values):
        if (error := label_value_error(value)) is not None:
            return f"values[{i}]", f"{_quote(value)}: {error}"
    return None


def _quote(text: str) -> str:
    """Double-quoted with escapes, as the API server's ``%q`` shows a value."""
    import json  # the error path only

    return json.dumps(text, ensure_ascii=False)
