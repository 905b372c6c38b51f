"""Linux inotify through ctypes: wake the manifest source when a file is written or moved.

The source still compares stamps and contents itself (control/source_dir.py); inotify only
tells it *when* to look, so an edit is picked up at once instead of at the next poll. Only
events that end a write are watched (close after writing, moved in or out, created,
deleted), not every ``write(2)``, so a file is not read half written. Directories are
watched recursively; a directory created later is added when its creation is seen.

Where inotify cannot be had (not Linux, no libc symbol, the per-user watch limit reached)
:func:`open_watch` returns None and the source polls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = (
    IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)


class Watch:
    """One inotify descriptor watching a directory tree (or a single file)."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self.fd = fd
        self._libc = libc
        self._dirs: dict[int, Path] = {}
        # Files written to and not yet closed: a writer is still at work (``cat a b > f``,
        # ``helm template > f``), so what is on disk may be a part of the file.
        self.writing: set[str] = set()

    def add_tree(self, root: Path) -> None:
        if root.is_dir():
            for dirpath, dirnames, _ in os.walk(root, followlinks=False):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                self._add(Path(dirpath))
        else:
            # A single file is replaced by rename (editors, ConfigMap mounts): watch its
            # directory, whose entries change, not the inode that goes away.
            self._add(root.parent)

    def _add(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._dirs[wd] = path

    def drain(self) -> int:
        """Read every pending event; returns how many. New directories get watched."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            if not data:
                return count
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
                offset += _HEADER.size + length
                count += 1
                parent = self._dirs.get(wd)
                if parent is not None and not mask & IN_ISDIR and name:
                    path = str(parent / os.fsdecode(name))
                    if mask & IN_MODIFY:
                        self.writing.add(path)
                    elif mask & (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
                        self.writing.discard(path)
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and parent is not None:
                    child = parent / os.fsdecode(name)
                    if not child.name.startswith("."):
                        # Gone again, or the watch limit: the poll still sees it.
                        with contextlib.suppress(OSError):
                            self.add_tree(child)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_watch(root: Path) -> Watch | None:
    """An inotify watch over ``root``, or None where inotify is not available."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        init = libc.inotify_init1
    except (OSError, AttributeError):
        return None
    fd = init(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        return None
    watch = Watch(fd, libc)
    try:
        watch.add_tree(root)
    except OSError:
        watch.close()  # the watch limit (ENOSPC), a permission: polling still works
        return None
    return watch
