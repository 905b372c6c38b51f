"""The manifest-directory source: the embedded default.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file under a directory (recursively; hidden
files and directories are skipped, as are the ``..data`` links of a mounted ConfigMap) is
loaded and its objects applied to the store; a file given by name is read whatever its
name, and several files and directories may be given (kubectl's ``-f`` repeated). On Linux,
inotify wakes the source as soon as a write to a file is finished (control/inotify.py), and a
file a writer still has open (``helm template > dir/all.yaml`` part way) is not read until it
is closed (for at most HOLD_MAX_S); the directory is also polled, so a created, changed or
deleted file is picked up within one poll interval where no event comes.

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
(control/documents.py: each YAML document's objects are kept by its text, and the region
of a big file an edit touched is found by comparing it with its last text), so an
unchanged object is the very object applied last time and causes no store write.

Errors are logged once per change and kept in :attr:`DirSource.errors`.
:class:`ManifestSet` is the pure bookkeeping; :class:`DirSource` adds the disk and trio.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mesh.control import early
from mesh.control.documents import DocumentCache, KeyedResult
from mesh.control.files import Stamp, scan_all
from mesh.control.files import read as _read
from mesh.control.inotify import Watch, open_watch
from mesh.control.store import Key, Rejected, Store
from mesh.manifests import LoadResult, ManifestError, load_text
from mesh.objects import KubeObject

log = logging.getLogger("mesh.control.source")

RACY_NS = 2_000_000_000
# How long a file a writer keeps open is left unread before it is read as it stands.
HOLD_MAX_S = 10.0


def _describe(key: Key) -> str:
    kind, ns, name = key
    return f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"


@dataclass(slots=True)
class _File:
    objects: dict[Key, KubeObject] = field(default_factory=dict)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _SameOrigin(Mapping[Key, str]):
    """Every object comes from one file."""

    def __init__(self, objects: Mapping[Key, KubeObject], name: str) -> None:
        self._objects = objects
        self._name = name

    def __getitem__(self, key: Key) -> str:
        if key not in self._objects:
            raise KeyError(key)
        return self._name

    def __iter__(self) -> Iterator[Key]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)


class ManifestSet:
    """The objects of a set of manifest files, file by file, with last-good retention."""

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}

    def update(self, name: str, result: LoadResult) -> _File:
        """Take a file's new load result; returns the file's new state."""
        prev = self._files.get(name, _File()).objects
        now = _File(errors=list(result.errors), warnings=list(result.warnings))
        if isinstance(result, KeyedResult) and not result.errors:
            now.objects = result.by_key  # no key defined twice (the cache checked)
        else:
            for obj in result.objects:
                key = obj.key
                if key in now.objects:
                    now.warnings.append(f"{name}: {_describe(key)} is defined twice; last wins")
                now.objects[key] = obj
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

    def desired(self) -> tuple[Mapping[Key, KubeObject], Mapping[Key, str], list[str]]:
        """Every object to serve, the file each comes from, and warnings for objects
        defined in several files."""
        if len(self._files) == 1:  # the file's own dict, origins looked up when asked
            ((name, only),) = self._files.items()
            return only.objects, _SameOrigin(only.objects, name), []
        out: dict[Key, KubeObject] = {}
        origin: dict[Key, str] = {}
        warnings: list[str] = []
        for name in sorted(self._files):
            objects = self._files[name].objects
            # Whole dicts at C speed; the keys of several files are rare and looked at alone.
            for key in sorted(objects.keys() & out.keys()) if out else ():
                warnings.append(
                    f"{_describe(key)} is defined in {origin[key]} and {name}; {name} wins"
                )
            out.update(objects)
            origin.update(dict.fromkeys(objects, name))
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

    def sync(
        self,
        desired: Mapping[Key, KubeObject],
        origin: Mapping[Key, str],
        hint: frozenset[Key] | None = None,
    ) -> None:
        """``hint``: the keys whose desired object may have changed since the last sync
        (None: any); the rejected ones are retried either way."""
        applied = self.applied
        if hint is None:
            gone: Iterable[Key] = applied.keys() - desired.keys()
            # Only what changed is sorted and applied: an unchanged object is the very
            # object applied last time (the document cache), so a big file costs lookups.
            pending = [k for k, o in desired.items() if applied.get(k) is not o]
        else:
            candidates = hint | self.rejected.keys()
            gone = [k for k in candidates if k in applied and k not in desired]
            pending = [k for k in candidates if k in desired and applied.get(k) is not desired[k]]
        for key in sorted(gone):
            self.store.delete(*key)
            del applied[key]
        rejected: dict[Key, ManifestError] = {}
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


def _open_watch(roots: Sequence[Path]) -> Watch | None:
    """One inotify watch over every root, or None (then the poll alone sees changes)."""
    watch = open_watch(roots[0])
    if watch is None:
        return None
    try:
        for root in roots[1:]:
            watch.add_tree(root)
    except OSError:
        watch.close()  # the watch limit, a permission: as open_watch, polling still works
        return None
    return watch


def parse_manifest(
    path: str, data: bytes | OSError, cache: DocumentCache | None = None
) -> LoadResult:
    try:
        if isinstance(data, OSError):
            raise data
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[ManifestError(path, "", "", f"cannot read: {exc}")])
    return cache.load(text, path) if cache is not None else load_text(text, path)


# --- the trio shell --------------------------------------------------------------------


class DirSource:
    """Polls a manifest directory and keeps the store in step with it."""

    def __init__(
        self,
        root: Path | Sequence[Path],
        store: Store,
        *,
        poll_interval: float = 0.25,
        inotify: bool = True,
    ) -> None:
        # A directory or a file, or several (kubectl's repeated -f).
        self.roots: tuple[Path, ...] = (root,) if isinstance(root, Path) else tuple(root)
        self.root = self.roots[0]
        self.store = store
        self.poll_interval = poll_interval
        self.inotify = inotify
        self.files = ManifestSet()
        self.applier = Applier(store)
        self._stamps: dict[str, Stamp] = {}
        self._digests: dict[str, bytes] = {}
        self._documents: dict[str, DocumentCache] = {}
        self._dup_warnings: list[str] = []
        self._held: dict[str, float] = {}  # file -> when it was first held (see _hold)

    @property
    def errors(self) -> list[ManifestError]:
        return self.files.errors() + sorted(
            self.applier.rejected.values(), key=lambda e: (e.source, e.object)
        )

    @property
    def warnings(self) -> list[str]:
        return self.files.warnings() + self._dup_warnings

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for root in self.roots:
            if not root.exists():
                raise FileNotFoundError(f"manifest file or directory {root} does not exist")
        watch = _open_watch(self.roots) if self.inotify else None
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
                await self.poll(frozenset(watch.writing) if watch is not None else frozenset())
        finally:
            if watch is not None:
                watch.close()

    async def poll(self, writing: frozenset[str] = frozenset()) -> bool:
        """Look at the disk once; apply what changed. Returns whether anything did.
        ``writing``: files a writer still has open (inotify), left for a later look."""
        changes = await trio.to_thread.run_sync(self._read_changes, writing)
        return self._apply_changes(changes)

    def sync_once(self) -> bool:
        """:meth:`poll` without a thread (tests, tools): read the disk, apply what changed."""
        return self._apply_changes(self._read_changes())

    def _apply_changes(self, changes: dict[str, LoadResult | None]) -> bool:
        if not changes:
            return False
        hint: frozenset[Key] | None = frozenset()
        for name, result in changes.items():
            if result is None:
                log.info("manifest removed", extra={"manifest": name})
                self.files.remove(name)
                hint = None
            else:
                self._take(name, result)
                spliced = result.changed if isinstance(result, KeyedResult) else None
                hint = None if hint is None or spliced is None else hint | spliced
        self.sync(hint)
        return True

    def _read_changes(self, writing: frozenset[str] = frozenset()) -> dict[str, LoadResult | None]:
        stamps = scan_all(self.roots)
        held = self._hold(stamps, writing)
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
            if (self._stamps.get(name) == stamp and stamp[2] < recent) or name in held:
                continue
            data = _read(name)
            raw = data if isinstance(data, bytes) else repr(data).encode()
            digest = hashlib.sha256(raw).digest()
            if self._digests.get(name) == digest:
                continue
            self._digests[name] = digest
            cache = self._documents.setdefault(name, DocumentCache())
            cache.early = early.adopt(name, digest)  # parsed since the command started
            changes[name] = parse_manifest(name, data, cache)
        for name in held:  # looked at again once the writer closes it
            if name in self._stamps:
                stamps[name] = self._stamps[name]
            else:
                del stamps[name]
        self._stamps = stamps
        early.drop()  # those of files not read (gone, unreadable): nobody takes them
        return changes

    def _hold(self, stamps: dict[str, Stamp], writing: frozenset[str]) -> set[str]:
        """The changed files not to read yet: those a writer still has open, for at most
        HOLD_MAX_S (a writer that never closes, a file system whose events are lost)."""
        now = time.monotonic()
        held = set()
        for name in writing & stamps.keys():
            changed = self._stamps.get(name) != stamps[name]
            if changed and now - self._held.setdefault(name, now) < HOLD_MAX_S:
                held.add(name)
        for name in [n for n in self._held if n not in held]:
            del self._held[name]
        return held

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

    def sync(self, hint: frozenset[Key] | None = None) -> None:
        """Apply the desired objects; ``hint``: the keys that may have changed (None: any)."""
        desired, origin, dup_warnings = self.files.desired()
        for warning in dup_warnings:
            if warning not in self._dup_warnings:
                log.warning("%s", warning)
        self._dup_warnings = dup_warnings
        self.applier.sync(desired, origin, hint)

    def status(self) -> dict[str, Any]:
        return {
            "files": len(self._stamps),
            "objects": len(self.applier.applied),
            "errors": [str(e) for e in self.errors],
            "warnings": self.warnings,
        }
