"""A manifest text cut into its YAML documents, and which of them a load must parse.

Plain text work, no models: the document cache (control/documents.py) and a process
that parses for it from the start (control/early.py) cut a text the same way and so
agree, index for index, on the texts to parse.
"""

from __future__ import annotations

import re
from collections.abc import Container
from hashlib import blake2b

_UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.)", re.M)
_GLUED = re.compile(r"\n---[^ \t\r\n]")  # a "---" line start that is not a marker


def digests(chunks: list[str]) -> list[bytes]:
    """Each document's key in the cache: a 16-byte digest of its text."""
    return [blake2b(chunk.encode(), digest_size=16).digest() for chunk in chunks]


def texts_to_parse(
    chunks: list[str], keys: list[bytes], cached: Container[bytes]
) -> tuple[dict[bytes, int], list[str]]:
    """The chunks not cached, each text once (by digest), and each one's index."""
    todo: dict[bytes, int] = {}
    texts: list[str] = []
    for digest, chunk in zip(keys, chunks, strict=True):
        if digest not in cached and digest not in todo:
            todo[digest] = len(texts)
            texts.append(chunk)
    return todo, texts


def first_load_texts(text: str) -> list[str]:
    """The texts a document cache with nothing cached parses to load ``text``, in the
    order of its child's indexes (control/early.py works on them before the cache has
    seen the file)."""
    chunks = split_documents(text)
    if chunks is None:
        return []
    return texts_to_parse(chunks, digests(chunks), ())[1]


def split_documents(text: str) -> list[str] | None:
    """``text`` cut before each ``---`` line (None: it has directives or end markers)."""
    maybe = text.startswith(("%", "...")) or "\n%" in text or "\n..." in text
    if maybe and _UNSPLITTABLE.search(text):
        return None
    # str.split finds the candidates at C speed; a "---" that is not a marker (a key such
    # as "----x" at column 0 cannot be valid YAML, but be exact) is glued back.
    parts = text.split("\n---")
    if len(parts) > 2 and not _GLUED.search(text):  # every candidate is a marker
        chunks = [parts[0] + "\n"]
        chunks += ["---" + part + "\n" for part in parts[1:-1]]
        chunks.append("---" + parts[-1])
        return chunks
    chunks = [parts[0] + "\n"] if len(parts) > 1 else [parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        piece = "---" + part + ("" if last else "\n")
        if part[:1] in ("", " ", "\t", "\r", "\n"):
            chunks.append(piece)
        else:
            chunks[-1] += piece
    return [c for c in chunks if c]
