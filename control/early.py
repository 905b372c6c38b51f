"""Parsing the manifests from the first moment of a serving command.

A big manifest directory is parsed at start by the manifest source with a forked child
working from the back (control/documents.py, mesh/ahead.py). The source runs only once
the command has imported and built everything else (the plane, the components, the
servers: most of a second), while the child would have nothing to wait for: :func:`start`
forks it first thing, before those imports. The parent only takes each big file's digest;
the child reads the file (and checks the digest), imports what parsing needs, cuts the
text into documents exactly as the source will, and parses them from the front for as long
as it stays ahead of the parent (then from the back: mesh/ahead.py), checking each object
for unknown fields as it goes (mesh/yaml_load.py's parse_checked), so that the parent only
takes and validates. When the source reads a file whose digest
is the one read here, its document cache adopts that child (:func:`adopt`) instead of
forking its own; a file changed in between is parsed as if nothing had started, and
:func:`drop` ends every child not adopted. Nothing here changes a result: only who parses.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.ahead import Ahead
from mesh.control.files import read, scan_all

# Files smaller than this are left to the source: a fork costs more than it saves.
MIN_BYTES = 256 * 1024

_started: dict[str, tuple[bytes, Ahead[str]]] = {}


def start(
    roots: Path | Sequence[Path], *, min_bytes: int = MIN_BYTES, cores: int | None = None
) -> int:
    """Fork one parsing child per big manifest file under ``roots`` (files or directories,
    as the source is given them); returns how many. Never raises: a directory that cannot
    be read is the source's to report."""
    try:
        files = scan_all((roots,) if isinstance(roots, Path) else tuple(roots))
    except OSError:
        return 0
    for name, stamp in files.items():
        if stamp[1] < min_bytes or name in _started:
            continue
        digest = _digest(name)
        if digest is None:
            continue
        ahead: Ahead[str] = Ahead.made_in_child(functools.partial(_work, name, digest), cores=cores)
        if ahead.pid:
            _started[name] = (digest, ahead)
    return len(_started)


def _digest(name: str) -> bytes | None:
    """The file's SHA-256, read in small pieces: the parent never holds the whole file
    here. (A buffer of several megabytes, once freed, raises glibc's threshold for
    serving allocations from mmap, and the process then ends up some 20 MB bigger.)"""
    digest = hashlib.sha256()
    try:
        with open(name, "rb") as f:
            while piece := f.read(_PIECE):
                digest.update(piece)
    except OSError:
        return None
    return digest.digest()


_PIECE = 64 * 1024  # below glibc's default mmap threshold (128 KiB)


def _work(name: str, digest: bytes) -> tuple[Sequence[str], Any]:
    """In the child: the texts the document cache will parse on a first load of the file,
    if it still has the content the parent's digest is of (else nothing to do)."""
    # Text work only (no models, no pydantic): the child starts parsing at once.
    from mesh.control.chunks import first_load_texts
    from mesh.yaml_load import parse_checked

    raw = read(name)
    if not isinstance(raw, bytes) or hashlib.sha256(raw).digest() != digest:
        return [], parse_checked
    return first_load_texts(raw.decode("utf-8")), parse_checked


def adopt(name: str, digest: bytes) -> Ahead[str] | None:
    """The child started for file ``name`` if the file still has the content it had then
    (``digest``: its SHA-256); else None, and that child ends."""
    entry = _started.pop(name, None)
    if entry is None:
        return None
    if entry[0] != digest:
        entry[1].close()
        return None
    return entry[1]


def drop() -> None:
    """End every child not adopted (the source has read every file once)."""
    while _started:
        _, (_, ahead) = _started.popitem()
        ahead.close()
