"""The manifest-directory source: the embedded default.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file under a directory (recursively; hidden
files and directories are skipped, as are the ``..data`` links of a mounted ConfigMap) is
loaded and its objects applied to the store. On Linux, inotify wakes the source as soon as a
write to a file is finished (control/inotify.py); the directory is also polled, so a
created, changed or deleted file is picked up within one poll interval where no event comes.

Rules, chosen to match ``kubectl apply`` against an API server:

- Deleting a file, or an object from a file, deletes the object.
- An object whose new version is invalid, or rejected at admission (a clusterIP already
  taken), keeps its last good version in the store; the error is reported, and fixing the
  file heals the object. A file that cannot be parsed at all (a YAML syntax error, an
  unreadable file) keeps all its previous objects until it parses again: an editor saving
  half a file must not take Services down.
- Two files defining the same object: the one later in path order wins, with a warning.
- The source owns only the objects it applied: it never deletes anything else (the
  EndpointSlices of the endpoints controller, objects fed through the store's API).

Work per edit: a changed file is re-read, but only its changed documents are parsed again
(:class:`DocumentCache` keeps each YAML document's objects by its text), so an unchanged
object is the very object applied last time and causes no store write.

Errors are logged once per change and kept in :attr:`DirSource.errors`.
:class:`ManifestSet` is the pure bookkeeping; :class:`DirSource` adds the disk and trio.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mesh.control.inotify import open_watch
from mesh.control.store import Key, Rejected, Store
from mesh.manifests import LoadResult, ManifestError, load_text
from mesh.objects import KubeObject

log = logging.getLogger("mesh.control.source")

EXTENSIONS = (".yaml", ".yml", ".json")
Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns)
RACY_NS = 2_000_000_000


def _describe(key: Key) -> str:
    kind, ns, name = key
    return f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"


@dataclass(slots=True)
class _File:
    objects: dict[Key, KubeObject] = field(default_factory=dict)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ManifestSet:
    """The objects of a set of manifest files, file by file, with last-good retention."""

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}

    def update(self, name: str, result: LoadResult) -> _File:
        """Take a file's new load result; returns the file's new state."""
        prev = self._files.get(name, _File()).objects
        now = _File(errors=list(result.errors), warnings=list(result.warnings))
        for obj in result.objects:
            if obj.key in now.objects:
                now.warnings.append(f"{name}: {_describe(obj.key)} is defined twice; last wins")
            now.objects[obj.key] = obj
        unparsable = any(err.key is None for err in result.errors)
        for err in result.errors:
            if err.key is not None and err.key in prev and err.key not in now.objects:
                now.objects[err.key] = prev[err.key]  # keep the last good version
        if unparsable:
            for key, obj in prev.items():
                now.objects.setdefault(key, obj)
        self._files[name] = now
        return now

    def remove(self, name: str) -> None:
        self._files.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._files)

    def desired(self) -> tuple[dict[Key, KubeObject], dict[Key, str], list[str]]:
        """Every object to serve, the file each comes from, and warnings for objects
        defined in several files."""
        out: dict[Key, KubeObject] = {}
        origin: dict[Key, str] = {}
        warnings: list[str] = []
        for name in sorted(self._files):
            for key, obj in self._files[name].objects.items():
                if key in origin:
                    warnings.append(
                        f"{_describe(key)} is defined in {origin[key]} and {name}; {name} wins"
                    )
                out[key] = obj
                origin[key] = name
        return out, origin, warnings

    def errors(self) -> list[ManifestError]:
        return [err for name in sorted(self._files) for err in self._files[name].errors]

    def warnings(self) -> list[str]:
        return [w for name in sorted(self._files) for w in self._files[name].warnings]


class Applier:
    """Makes the store hold a desired set of objects, touching only what it applied."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.applied: dict[Key, KubeObject] = {}  # as given, before admission
        self.rejected: dict[Key, ManifestError] = {}

    def sync(self, desired: Mapping[Key, KubeObject], origin: Mapping[Key, str]) -> None:
        for key in sorted(set(self.applied) - set(desired)):
            self.store.delete(*key)
            del self.applied[key]
        rejected: dict[Key, ManifestError] = {}
        applied = self.applied
        # Only what changed is sorted and applied: an unchanged object is the very object
        # applied last time (the document cache), so most of a big file costs a lookup.
        pending = [k for k, o in desired.items() if applied.get(k) is not o]
        for key in sorted(pending):
            obj = desired[key]
            if applied.get(key) == obj:
                continue
            try:
                self.store.apply(obj)
            except Rejected as exc:
                head, _, tail = str(exc).partition(": ")
                field_, msg = (head, tail) if tail and " " not in head else ("", str(exc))
                rejected[key] = ManifestError(
                    origin.get(key, "?"), _describe(key), field_, msg, key
                )
                continue
            self.applied[key] = obj
        for key, err in rejected.items():
            if self.rejected.get(key) != err:
                _log_error("manifest rejected", err)
        self.rejected = rejected


def _log_error(what: str, err: ManifestError) -> None:
    log.error(
        "%s: %s",
        what,
        err,
        # Only what is known: a file that is not YAML names no object and no field.
        extra={
            key: value
            for key, value in (
                ("manifest", err.source),
                ("object", err.object),
                ("field", err.field),
                ("reason", err.message),
            )
            if value and value != "?"
        },
    )


# --- the disk --------------------------------------------------------------------------


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


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.endswith(EXTENSIONS):
                yield Path(dirpath, fname)


def _stamp(path: Path) -> Stamp:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def parse_manifest(
    path: str, data: bytes | OSError, cache: DocumentCache | None = None
) -> LoadResult:
    try:
        if isinstance(data, OSError):
            raise data
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[ManifestError(path, "?", "", f"cannot read: {exc}")])
    return cache.load(text, path) if cache is not None else load_text(text, path)


class DocumentCache:
    """The objects of one file's YAML documents, by a digest of each document's text.

    A file is split at its ``---`` lines; a document whose text is unchanged since the last
    load reuses its objects, so editing one object of a 40,000-object file parses one
    document. Whenever a document has an error the whole text is loaded as one (so messages,
    line numbers and "a syntax error ends the stream" are exactly :func:`load_text`'s), as
    is a text with directives or ``...`` end markers. Entries are keyed by a 16-byte digest,
    not the text, so the cache costs a small fraction of the file's size."""

    def __init__(self) -> None:
        self._docs: dict[bytes, tuple[tuple[KubeObject, ...], tuple[str, ...]]] = {}
        self.parsed = 0  # documents parsed (not taken from the cache): tests pin the work

    def load(self, text: str, source: str) -> LoadResult:
        chunks = split_documents(text)
        if chunks is None:
            self._docs = {}
            return load_text(text, source)
        docs: dict[bytes, tuple[tuple[KubeObject, ...], tuple[str, ...]]] = {}
        out = LoadResult()
        for chunk in chunks:
            key = hashlib.blake2b(chunk.encode(), digest_size=16).digest()
            part = docs.get(key) or self._docs.get(key)
            if part is None:
                self.parsed += 1
                loaded = load_text(chunk, source)
                if loaded.errors:
                    self._docs = {}
                    return load_text(text, source)
                part = (tuple(loaded.objects), tuple(loaded.warnings))
            docs[key] = part
            out.objects.extend(part[0])
            out.warnings.extend(part[1])
        self._docs = docs
        return out


_UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.)", re.M)


def split_documents(text: str) -> list[str] | None:
    """``text`` cut before each ``---`` line (None: it has directives or end markers)."""
    maybe = text.startswith(("%", "...")) or "\n%" in text or "\n..." in text
    if maybe and _UNSPLITTABLE.search(text):
        return None
    # str.split finds the candidates at C speed; a "---" that is not a marker (a key such
    # as "----x" at column 0 cannot be valid YAML, but be exact) is glued back.
    parts = text.split("\n---")
    chunks = [parts[0] + "\n"] if len(parts) > 1 else [parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        piece = "---" + part + ("" if last else "\n")
        if part[:1] in ("", " ", "\t", "\r", "\n"):
            chunks.append(piece)
        else:
            chunks[-1] += piece
    return [c for c in chunks if c]


def _read(path: str) -> bytes | OSError:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return exc


# --- the trio shell --------------------------------------------------------------------


class DirSource:
    """Polls a manifest directory and keeps the store in step with it."""

    def __init__(
        self, root: Path, store: Store, *, poll_interval: float = 0.25, inotify: bool = True
    ) -> None:
        self.root = root
        self.store = store
        self.poll_interval = poll_interval
        self.inotify = inotify
        self.files = ManifestSet()
        self.applier = Applier(store)
        self._stamps: dict[str, Stamp] = {}
        self._digests: dict[str, bytes] = {}
        self._documents: dict[str, DocumentCache] = {}
        self._dup_warnings: list[str] = []

    @property
    def errors(self) -> list[ManifestError]:
        return self.files.errors() + sorted(
            self.applier.rejected.values(), key=lambda e: (e.source, e.object)
        )

    @property
    def warnings(self) -> list[str]:
        return self.files.warnings() + self._dup_warnings

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.root.exists():
            raise FileNotFoundError(f"manifest directory {self.root} does not exist")
        watch = open_watch(self.root) if self.inotify else None
        try:
            await self.poll()
            task_status.started()
            while True:
                if watch is None:
                    await trio.sleep(self.poll_interval)
                else:
                    # Woken by a finished write at once; the poll stays as a safety net
                    # (network filesystems send no events).
                    with trio.move_on_after(self.poll_interval):
                        await trio.lowlevel.wait_readable(watch.fd)
                    watch.drain()
                await self.poll()
        finally:
            if watch is not None:
                watch.close()

    async def poll(self) -> bool:
        """Look at the disk once; apply what changed. Returns whether anything did."""
        changes = await trio.to_thread.run_sync(self._read_changes)
        return self._apply_changes(changes)

    def sync_once(self) -> bool:
        """:meth:`poll` without a thread (tests, tools): read the disk, apply what changed."""
        return self._apply_changes(self._read_changes())

    def _apply_changes(self, changes: dict[str, LoadResult | None]) -> bool:
        if not changes:
            return False
        for name, result in changes.items():
            if result is None:
                log.info("manifest removed", extra={"manifest": name})
                self.files.remove(name)
            else:
                self._take(name, result)
        self.sync()
        return True

    def _read_changes(self) -> dict[str, LoadResult | None]:
        stamps = scan(self.root)
        changes: dict[str, LoadResult | None] = {
            name: None for name in self._stamps if name not in stamps
        }
        for name in changes:
            self._digests.pop(name, None)
            self._documents.pop(name, None)
        recent = time.time_ns() - RACY_NS
        for name, stamp in stamps.items():
            # A file written twice within the clock's granularity keeps its stamp: while
            # its mtime is recent, compare contents too (git's "racy" entries).
            if self._stamps.get(name) == stamp and stamp[2] < recent:
                continue
            data = _read(name)
            raw = data if isinstance(data, bytes) else repr(data).encode()
            digest = hashlib.sha256(raw).digest()
            if self._digests.get(name) == digest:
                continue
            self._digests[name] = digest
            cache = self._documents.setdefault(name, DocumentCache())
            changes[name] = parse_manifest(name, data, cache)
        self._stamps = stamps
        return changes

    def _take(self, name: str, result: LoadResult) -> None:
        state = self.files.update(name, result)
        for err in state.errors:
            _log_error("invalid manifest", err)
        for warning in state.warnings:
            log.warning("%s", warning, extra={"manifest": name})
        log.info(
            "manifest loaded",
            extra={"manifest": name, "objects": len(result.objects), "errors": len(result.errors)},
        )

    def sync(self) -> None:
        desired, origin, dup_warnings = self.files.desired()
        for warning in dup_warnings:
            if warning not in self._dup_warnings:
                log.warning("%s", warning)
        self._dup_warnings = dup_warnings
        self.applier.sync(desired, origin)

    def status(self) -> dict[str, Any]:
        return {
            "files": len(self._stamps),
            "objects": len(self.applier.applied),
            "errors": [str(e) for e in self.errors],
            "warnings": self.warnings,
        }
