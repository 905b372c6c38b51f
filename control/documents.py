"""A manifest file cut into YAML documents, each parsed once: the cost of an edit is the
cost of the documents it touched.

:class:`DocumentCache` keeps, for one file, each document's objects by a digest of its
text, and the layout of the last text it loaded. A new text is compared with the last one
(common prefix and suffix, at memcmp speed): the documents wholly inside them are the same
documents at shifted offsets, so only the region in between is split, digested and looked
up, and the file's objects (the list and the by-key dict) are spliced rather than rebuilt.
Editing one object of a 40,000-object file thus costs a few milliseconds of comparison and
one document's parse. Any case the splice does not cover (a non-ASCII text, duplicate keys,
warnings, an error) takes the whole-file path, whose results are the same. A load with many
documents to parse (a start) has a child process parse them ahead on the second core
(mesh/ahead.py); its results are the same too.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from mesh.ahead import MIN_ITEMS, Ahead
from mesh.control.chunks import digests as _digests
from mesh.control.chunks import split_documents as split_documents
from mesh.control.chunks import texts_to_parse
from mesh.manifests import LoadResult, load_parsed, load_text
from mesh.objects import KubeObject
from mesh.yaml_load import parse_checked

Key = tuple[str, str, str]
# One document's objects, their keys, and its warnings.
_Part = tuple[tuple[KubeObject, ...], tuple[Key, ...], tuple[str, ...]]


@dataclass(slots=True)
class KeyedResult(LoadResult):
    """A load result whose objects are also given by key (no key occurs twice)."""

    by_key: dict[Key, KubeObject] = field(default_factory=dict)
    # Spliced: the keys whose objects may differ from the previous load's (None: unknown).
    changed: frozenset[Key] | None = None


@dataclass(slots=True)
class _Layout:
    """The last text loaded whole or spliced, document by document (ASCII, no warnings,
    no key twice)."""

    raw: bytes  # the text, encoded (ASCII: character and byte offsets agree)
    ends: list[int]  # where each document ends
    digests: list[bytes]
    parts: list[_Part]
    counts: list[int]  # objects in the documents up to and including each one
    result: KeyedResult


class DocumentCache:
    """The objects of one file's YAML documents, by a digest of each document's text.

    A file is split at its ``---`` lines; a document whose text is unchanged since the last
    load reuses its objects, so editing one object of a 40,000-object file parses one
    document. Whenever a document has an error the whole text is loaded as one (so messages,
    line numbers and "a syntax error ends the stream" are exactly :func:`load_text`'s), as
    is a text with directives or ``...`` end markers. Entries are keyed by a 16-byte digest,
    not the text, so the cache costs a small fraction of the file's size."""

    def __init__(self) -> None:
        self._docs: dict[bytes, _Part] = {}
        self._layout: _Layout | None = None
        self.parsed = 0  # documents parsed (not taken from the cache): tests pin the work
        self.spliced = 0  # loads that took the splice path (tests pin it)
        self.parsed_ahead = 0  # of ``parsed``, those a child parsed (mesh/ahead.py)
        # Fewest documents to parse for which a child helps (tests set it lower).
        self.parse_ahead = MIN_ITEMS
        # A child already parsing this file's first load (control/early.py): used by the
        # next load that parses from nothing, ended by any load.
        self.early: Ahead[str] | None = None

    def load(self, text: str, source: str) -> LoadResult:
        try:
            return self._load(text, source)
        finally:
            if self.early is not None:
                self.early.close()
                self.early = None

    def _load(self, text: str, source: str) -> LoadResult:
        layout, self._layout = self._layout, None
        if layout is not None and text.isascii():
            spliced = self._splice(layout, text, source)
            if spliced is not None:
                self.spliced += 1
                return spliced
            self._docs = dict(zip(layout.digests, layout.parts, strict=True))
        elif layout is not None:
            self._docs = dict(zip(layout.digests, layout.parts, strict=True))
        chunks = split_documents(text)
        if chunks is None:
            self._docs = {}
            return load_text(text, source)
        parsed = self._parts(chunks, source, self._docs)
        if parsed is None:
            self._docs = {}
            return load_text(text, source)
        digests, parts = parsed
        out = KeyedResult()
        objects, warnings, by_key = out.objects, out.warnings, out.by_key
        for found, keys, warned in parts:
            objects.extend(found)
            if warned:
                warnings.extend(warned)
            for key, obj in zip(keys, found, strict=True):
                by_key[key] = obj
        self._docs = dict(zip(digests, parts, strict=True))
        if len(by_key) != len(objects):  # a key defined twice: ManifestSet says so
            return LoadResult(objects, out.errors, warnings)
        if not warnings and text.isascii():
            self._docs = {}  # the layout holds them
            self._layout = _Layout(
                text.encode(),
                list(accumulate(map(len, chunks))),
                digests,
                parts,
                list(accumulate(len(p[0]) for p in parts)),
                out,
            )
        return out

    def _parts(
        self, chunks: list[str], source: str, cached: dict[bytes, _Part]
    ) -> tuple[list[bytes], list[_Part]] | None:
        """Each chunk's digest and objects, parsed only when not cached (None: an error)."""
        digests = _digests(chunks)
        # The texts to parse, each once: a big first load has a child parse them from the
        # back while this loop goes from the front (mesh/ahead.py).
        todo, texts = texts_to_parse(chunks, digests, cached)
        parts: list[_Part] = []
        seen: dict[bytes, _Part] = {}
        # Sub-models validated in this load, by their text (the Pods of one template share
        # their spec: mesh/manifests.py's load_parsed).
        models: dict[tuple[str, bytes], Any] = {}
        early, self.early = self.early, None
        if early is not None and cached:  # its texts are those of a load from nothing
            early.close()
            early = None
        if early is None:
            early = Ahead(texts, parse_checked, min_items=self.parse_ahead)
        with early as ahead:
            for digest, chunk in zip(digests, chunks, strict=True):
                part = seen.get(digest) or cached.get(digest)
                if part is None:
                    self.parsed += 1
                    # [documents, checked, shared] (mesh/yaml_load.py's parse_checked)
                    got = ahead.take(todo[digest])
                    if got is None:
                        loaded = load_text(chunk, source)
                    else:
                        docs, checked, shared = got
                        loaded = load_parsed(
                            docs, source, checked=checked, shared=shared, models=models
                        )
                    if loaded.errors:
                        return None
                    found = tuple(loaded.objects)
                    part = (found, tuple(o.key for o in found), tuple(loaded.warnings))
                seen[digest] = part
                parts.append(part)
            self.parsed_ahead += ahead.taken
        return digests, parts

    def _splice(self, old: _Layout, text: str, source: str) -> KeyedResult | None:
        raw = text.encode()
        n_old, n_new = len(old.raw), len(raw)
        prefix = _common_prefix(old.raw, raw)
        suffix = _common_suffix(old.raw, raw, min(n_old, n_new) - prefix)
        ends = old.ends
        # Documents kept at the front: they end, and the next marker line ("\n---" and the
        # character after it) starts, inside the common prefix.
        i = bisect_right(ends, prefix - 4)
        # Documents kept at the back: the newline before their marker is in the suffix.
        j = max(i, bisect_left(ends, n_old - suffix + 1) + 1)
        j = min(j, len(ends))
        delta = n_new - n_old
        start = ends[i - 1] if i else 0
        stop = ends[j - 1] + delta if j < len(ends) else n_new
        if i == j and start == stop:
            mid_chunks: list[str] = []
        else:
            chunks = split_documents(text[start:stop])
            if chunks is None:
                return None
            mid_chunks = chunks
        # Documents moved within the region (reordered) are found among the ones it replaced.
        replaced = dict(zip(old.digests[i:j], old.parts[i:j], strict=True))
        parsed = self._parts(mid_chunks, source, replaced)
        if parsed is None:
            return None
        mid_digests, mid_parts = parsed
        if any(p[2] for p in mid_parts):
            return None
        before = old.counts[i - 1] if i else 0
        after = old.counts[j - 1] if j else 0
        mid_objects = [o for p in mid_parts for o in p[0]]
        prev = old.result
        objects = prev.objects[:before] + mid_objects + prev.objects[after:]
        by_key = dict(prev.by_key)
        for _, keys, _ in old.parts[i:j]:
            for key in keys:
                del by_key[key]
        for found, keys, _ in mid_parts:
            for key, obj in zip(keys, found, strict=True):
                by_key[key] = obj
        if len(by_key) != len(objects):
            return None  # a key twice now: the whole-file path reports it
        shift = len(mid_objects) - (after - before)
        changed = frozenset(k for p in old.parts[i:j] for k in p[1])
        changed |= frozenset(k for p in mid_parts for k in p[1])
        out = KeyedResult(objects, [], [], by_key, changed)
        self._layout = _Layout(
            raw,
            ends[:i]
            + [start + e for e in accumulate(map(len, mid_chunks))]
            + [e + delta for e in ends[j:]],
            old.digests[:i] + mid_digests + old.digests[j:],
            old.parts[:i] + mid_parts + old.parts[j:],
            old.counts[:i]
            + [before + c for c in accumulate(len(p[0]) for p in mid_parts)]
            + [c + shift for c in old.counts[j:]],
            out,
        )
        return out


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix: a binary search whose every step compares
    (memcmp) only the half it has not yet seen equal, so a few passes over the text."""
    lo, hi = 0, min(len(a), len(b))
    view = memoryview(a)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.startswith(view[lo:mid], lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit`` (searched as the prefix)."""
    lo, hi = 0, max(0, limit)
    view, n_a, n_b = memoryview(a), len(a), len(b)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.endswith(view[n_a - mid : n_a - lo], 0, n_b - lo):
            lo = mid
        else:
            hi = mid - 1
    return lo
