"""The manifest files of a directory and their stamps: plain disk reads, no trio, so a
process can look before it has imported the rest (control/early.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

EXTENSIONS = (".yaml", ".yml", ".json")
Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns)


def scan(root: Path) -> dict[str, Stamp]:
    """Manifest files under ``root`` (or ``root`` itself if it is a file) with their stamps."""
    if root.is_file():
        return {str(root): _stamp(root)} if root.exists() else {}
    out: dict[str, Stamp] = {}
    for path in _walk(root):
        try:
            out[str(path)] = _stamp(path)
        except OSError:
            continue  # removed while we looked: the next scan sees it gone
    return out


def scan_all(roots: Sequence[Path]) -> dict[str, Stamp]:
    """:func:`scan` of each root (``-f`` given several times), in the order given."""
    if len(roots) == 1:
        return scan(roots[0])
    out: dict[str, Stamp] = {}
    for root in roots:
        out.update(scan(root))
    return out


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.endswith(EXTENSIONS):
                yield Path(dirpath, fname)


def _stamp(path: Path) -> Stamp:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read(path: str) -> bytes | OSError:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return exc
