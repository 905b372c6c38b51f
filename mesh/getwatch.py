"""``mesh get -w``: follow the control plane's object watch, and resume it when it breaks.

As kubectl's watch (client-go's reflector) does: when the stream ends, the connection breaks or
the server answers 410 Gone (the watch fell behind the kept history), list again, show what the
list says changed since the last object shown, and watch on from the list's resourceVersion.
What changed is decided by :func:`relisted`, a pure function of the objects already shown and
the new list; the rest only moves bytes and waits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
Lister = Callable[[], tuple[list[Obj], str]]  # the selected objects and the list's version
Watcher = Callable[[str], Iterator[tuple[str, Obj]]]  # version -> (event type, object)

# Set by the server on every write (or at load): a re-list after a control plane restart
# brings new values for unchanged objects, which must not print them again.
_VOLATILE = ("resourceVersion", "creationTimestamp", "uid", "generation", "managedFields")
_BACKOFF = (0.5, 1.0, 2.0, 5.0)  # seconds between re-list attempts; the last one repeats
_QUICK = 1.0  # seconds: a watch that ends sooner than this is followed by a pause


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _content(obj: Obj) -> Obj:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _VOLATILE}
    return {**obj, "metadata": meta}


def relisted(shown: dict[Key, Obj], items: list[Obj]) -> tuple[list[Obj], dict[Key, Obj]]:
    """What a fresh list says that the objects already shown do not: the new and changed
    objects in list order, then the ones gone (their last shown state, by name); and the
    objects shown from then on."""
    now = {key_of(o): o for o in items}
    out = [o for k, o in now.items() if k not in shown or _content(shown[k]) != _content(o)]
    out += [shown[k] for k in sorted(shown) if k not in now]
    return out, now


def follow(
    shown: dict[Key, Obj],
    version: str,
    watch: Watcher,
    relist: Lister,
    *,
    keep: Callable[[Obj], bool] = lambda _: True,
    broken: Callable[[str], None] = lambda _: None,
    resumed: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Obj, None, None]:
    """Objects to print, forever: the watch's from ``version``, then after each break what
    a re-list shows changed (:func:`relisted`). ``shown`` holds what was printed (the
    first listing). ``broken`` hears, once per outage, why the control plane cannot be
    listed, and ``resumed`` when it answers again; re-lists are retried with a growing pause, and so are watches that end at once
    (a server that closes every stream must not be listed in a tight loop). WrongServer and
    KeyboardInterrupt pass through."""
    from mesh.inspect import WrongServer

    quick = 0
    while True:
        started = clock()
        try:
            for kind, obj in watch(version):
                if not keep(obj):
                    continue
                if kind == "DELETED":
                    shown.pop(key_of(obj), None)
                else:
                    shown[key_of(obj)] = obj
                yield obj
        except WrongServer:
            raise
        except OSError:
            pass  # broken or 410 Gone: list again below, as after a clean end
        quick = quick + 1 if clock() - started < _QUICK else 0
        if quick:
            sleep(_BACKOFF[min(quick - 1, len(_BACKOFF) - 1)])
        for attempt in itertools.count():  # until it answers (Ctrl-C ends the command)
            try:
                items, version = relist()
                if attempt:
                    resumed()
                break
            except WrongServer:
                raise
            except OSError as exc:
                if attempt == 0:
                    broken(str(exc))
                sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
        changed, fresh = relisted(shown, [o for o in items if keep(o)])
        shown.clear()
        shown.update(fresh)
        yield from changed
