"""Work done ahead on the second core: a list's items computed by a forked child too.

At start the manifest source parses every document of every file (40,000 for 10,000
Services and their Pods): a pure function of each document's text, whose result must end
up in the one process that validates and serves the objects. It pays where taking a result
from the pipe costs the parent much less than computing it (a YAML parse against a
``marshal.loads``), not for cheap functions of big results. :class:`Ahead` forks one child that computes ``func(items[i])`` from the last item
backwards and streams the results (marshal: dicts, lists, tuples, bytes, strings and numbers;
interned strings stay interned) through a pipe, while the parent goes on from the first item
forwards as it would alone. When the parent reaches an item, it takes the child's result if it
has come, or else computes it itself; the two meet in the middle, wherever that falls on a
machine whose other core is busy. The parent writes how far it has got into a word of
shared memory, and the child stops at the first batch the parent has reached; the child is
then killed and reaped. The child never waits for the parent either: what the pipe cannot
take yet queues in the child (a child started before its parent reads, as
control/early.py's, keeps computing), and the parent decodes a batch only when it takes one
of its items.

A child forked before its parent has anything to do (control/early.py: while the parent
imports) starts from the first item instead, and goes on from the front for as long as it
stays ahead of the parent; the parent then only takes results. Once the parent comes
within :data:`LEAD` items of it, the child turns to the last item and works backwards as
above, so on a machine whose other core is busy the two still meet in the middle.

The parent never waits for the child, so the outcome never depends on it:

- one core, a short list, or no ``fork``: no child at all, everything as before;
- an item the child could not compute (an exception: a YAML syntax error) or could not send
  (a value marshal does not take): the parent computes it itself, so errors and their
  messages are exactly those of the serial path;
- the child dying, or the parent raising (Ctrl-C, an error): :meth:`Ahead.close` (also the
  context manager's exit) kills and reaps it; a parent killed outright takes the child with
  it (``PR_SET_PDEATHSIG``), and a child whose pipe closed ends at its next write.

Results that the parent compares by identity (shared sentinels) must be mapped back by the
caller: marshal gives equal values, not the same objects.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import marshal
import mmap
import os
import select
import signal
import struct
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

# Below this many items to compute, a fork costs more than it saves (an edit parses one).
MIN_ITEMS = 1000
# Items per message: large enough that the pipe's per-message cost vanishes, small
# enough that the parent sees the child's progress often (some 30 KB of data each).
BATCH = 128
# A child working from the front (:meth:`Ahead.made_in_child`) goes on there only while
# the parent is at least this many items behind it: a batch the parent reaches before it
# arrives is computed twice.
LEAD = 4 * BATCH
_REACHED = struct.Struct("<q")  # the highest index the parent has asked for (-1: none)
_HEADER = struct.Struct("<IIQ")  # first index of the batch, its items, payload length
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: fewer wake-ups of a child that writes ahead
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1
_ENDING = {signal.SIGINT, signal.SIGTERM}

T = TypeVar("T")
Func = Callable[[T], Any]


def usable_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Ahead(Generic[T]):
    """``func(items[i])`` for the parent, computed by a forked child when it is ahead.

    :meth:`take` returns the child's result for index ``i`` if it has arrived (each index
    at most once), else None: the caller then computes ``func(items[i])`` itself (so a
    ``func`` whose result may be None cannot tell "none" from "not come": return a list)."""

    def __init__(
        self,
        items: Sequence[T],
        func: Func[T],
        *,
        cores: int | None = None,
        min_items: int = MIN_ITEMS,
    ) -> None:
        self.pid = 0  # the child's (0: none)
        self.taken = 0  # results taken from the child (tests pin the split)
        self._fd = -1
        self._buffer = bytearray()
        # Batches arrive as marshal payloads and are decoded only when the parent takes
        # one of their items: a child far ahead (control/early.py) may have sent most of
        # the work before the parent starts, and tens of thousands of decoded results at
        # once would raise the parent's memory for good (freed, but fragmented).
        self._where: dict[int, int] = {}  # item index -> first index of its batch
        self._raw: dict[int, bytes] = {}  # first index -> a batch not decoded yet
        self._open: dict[int, list[Any]] = {}  # first index -> a decoded batch
        self._left: dict[int, int] = {}  # first index -> its items not taken yet
        self._polls = 0
        self._reached: mmap.mmap | None = None
        self._said = -1  # the last index written to ``_reached``
        cores = usable_cores() if cores is None else cores
        if cores < 2 or len(items) < min_items or not hasattr(os, "fork"):
            return
        self._start(lambda: (items, func))

    @classmethod
    def made_in_child(
        cls, make: Callable[[], tuple[Sequence[T], Func[T]]], *, cores: int | None = None
    ) -> Ahead[T]:
        """An :class:`Ahead` whose child makes its items and function itself, after the
        fork: a process can start one before it has imported or read what the work needs
        (the child imports it on its own core). The caller must know that its own items
        will be those ``make`` gives, index for index (the same pure function of the same
        input); ``make`` raising means no results, as a child that died. The child starts
        from the first item (the parent is busy elsewhere meanwhile) while it is ahead."""
        ahead: Ahead[T] = cls((), lambda item: None, cores=1)
        if (usable_cores() if cores is None else cores) >= 2 and hasattr(os, "fork"):
            ahead._start(make, front=True)
        return ahead

    def _start(self, make: Callable[[], tuple[Sequence[T], Func[T]]], front: bool = False) -> None:
        # Where the parent has got to, shared with the child (an anonymous shared map):
        # the child stops at the first batch the parent has reached, instead of computing
        # what the parent did itself (on a busy machine, CPU taken from the parent).
        self._reached = mmap.mmap(-1, _REACHED.size)
        _REACHED.pack_into(self._reached, 0, -1)
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        # Ctrl-C and SIGTERM wait until the child has its own handlers (the default ones):
        # one arriving in between would run the parent's code in the child, or be lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING)
        try:
            pid = os.fork()
        except OSError:  # no memory, no process slot: the parent computes everything
            pid = -1
        if pid == 0:  # the child: never returns into the parent's code
            status = 1
            try:
                os.close(read_fd)
                _child(make, write_fd, blocked, self._reached, front)
                status = 0
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write_fd)
        if pid < 0:
            os.close(read_fd)
            return
        os.set_blocking(read_fd, False)
        self.pid, self._fd = pid, read_fd

    def take(self, i: int, *, wait: bool = False) -> Any:
        """The child's result for ``items[i]`` if it has arrived (each index once), else
        None: the caller computes it itself (also when the child could not).
        ``wait``: block until index ``i`` arrives or the child ends (tests)."""
        where = self._where
        reached = self._reached
        if not wait and reached is not None and i > self._said:
            # The parent going forwards tells the child how far it has got (each item:
            # the child's next check may come any moment).
            _REACHED.pack_into(reached, 0, i)
            self._said = i
        if i not in where and self.pid:
            # A syscall per item the parent computes itself would cost more than the child
            # saves on small ones: look at the pipe every few items.
            self._polls += 1
            if wait or self._polls % 8 == 1:
                self._receive(wait, until=i)
        first = where.pop(i, None)
        if first is None:
            return None
        batch = self._open.get(first)
        if batch is None:
            batch = self._open[first] = marshal.loads(self._raw.pop(first))
        result = batch[i - first]
        batch[i - first] = None
        left = self._left[first] - 1
        if left:
            self._left[first] = left
        else:
            del self._left[first], self._open[first]
        if result is not None:
            self.taken += 1
        return result

    def _receive(self, wait: bool, until: int) -> None:
        """Read what the child has written: all there is, or with ``wait`` until index
        ``until`` has come or the child has ended."""
        while self._fd >= 0:
            if wait:
                if until in self._where:
                    return
                select.select([self._fd], [], [], 1.0)
            try:
                chunk = os.read(self._fd, _PIPE_SIZE)
            except BlockingIOError:
                if wait:
                    continue
                return
            if not chunk:  # the child finished or died: what it sent stands
                self._close_pipe()
                return
            self._buffer += chunk
            self._decode()

    def _decode(self) -> None:
        buf = self._buffer
        start = 0
        while len(buf) - start >= _HEADER.size:
            first, count, size = _HEADER.unpack_from(buf, start)
            end = start + _HEADER.size + size
            if len(buf) < end:
                break
            self._raw[first] = bytes(buf[start + _HEADER.size : end])
            self._left[first] = count
            self._where.update(dict.fromkeys(range(first, first + count), first))
            start = end
        del buf[:start]

    def _close_pipe(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Kill and reap the child (whatever it was doing); drop what was not taken."""
        self._close_pipe()
        if self.pid:
            pid, self.pid = self.pid, 0
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for held in (self._where, self._raw, self._open, self._left):
            held.clear()
        if self._reached is not None:
            self._reached.close()
            self._reached = None
        self._buffer = bytearray()

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _child(
    make: Callable[[], tuple[Sequence[T], Func[T]]],
    fd: int,
    mask: Iterable[int],
    reached: mmap.mmap,
    front: bool,
) -> None:
    """Compute from the last item backwards, a batch per message, until done or orphaned
    (``front``: first from the first item forwards, while ahead of the parent)."""
    # Signals are the default ones (Ctrl-C ends the child too), not the parent's handlers,
    # which would write to the parent's wake-up descriptor.
    signal.set_wakeup_fd(-1)
    for sig in _ENDING:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one sent meanwhile ends it here
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above took effect
        return
    items, func = make()
    # The child never waits for the parent: what the pipe cannot take yet waits here, so
    # a child started before its parent reads (control/early.py: while the parent imports)
    # keeps computing instead of stopping once the pipe is full.
    os.set_blocking(fd, False)
    pending: collections.deque[memoryview] = collections.deque()
    done = 0  # items below this were computed from the front
    hi = len(items)
    while front and done < hi:
        at = _REACHED.unpack_from(reached, 0)[0]
        if at >= 0 and at + LEAD > done:
            break  # the parent has (nearly) caught up: from the back now
        _send(fd, pending, func, items, done, min(hi, done + BATCH))
        done = min(hi, done + BATCH)
    while hi > done:
        lo = max(done, hi - BATCH)
        if _REACHED.unpack_from(reached, 0)[0] >= lo:
            break  # the parent is in this batch already: it does the rest itself
        _send(fd, pending, func, items, lo, hi)
        hi = lo
    _flush(fd, pending, block=True)


def _send(
    fd: int,
    pending: collections.deque[memoryview],
    func: Func[T],
    items: Sequence[T],
    lo: int,
    hi: int,
) -> None:
    """Compute items ``lo`` to ``hi`` (excluded) and send them as one message."""
    results = [_safe(func, items[i]) for i in range(lo, hi)]
    try:
        payload = marshal.dumps(results)
    except Exception:  # an unmarshallable value somewhere: look at them one by one
        payload = marshal.dumps([_marshallable(r) for r in results])
    pending.append(memoryview(_HEADER.pack(lo, hi - lo, len(payload)) + payload))
    _flush(fd, pending, block=False)


def _safe(func: Func[T], item: T) -> Any:
    try:
        return func(item)
    except Exception:  # the parent computes it again and reports it as it always did
        return None


def _marshallable(result: Any) -> Any:
    try:
        marshal.dumps(result)
    except Exception:  # a recursive alias, a type marshal lacks: the parent computes it
        return None
    return result


def _flush(fd: int, pending: collections.deque[memoryview], *, block: bool) -> None:
    """Write what is pending, in order: all of it (``block``), or what the pipe takes now."""
    while pending:
        try:
            # BrokenPipeError once the parent closed: the child ends.
            written = os.write(fd, pending[0])
        except BlockingIOError:
            if not block:
                return
            select.select([], [fd], [])
            continue
        if written == len(pending[0]):
            pending.popleft()
        else:
            pending[0] = pending[0][written:]
