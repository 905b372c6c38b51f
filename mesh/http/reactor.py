"""A small epoll reactor that drives the engine's connection coroutines inside one trio task.

Theory of operation. A proxied request waits twice (for the upstream's answer, then for the
client's next request), and a round through trio's scheduler costs several times what the
wait itself does: registering interest, parking the task, running the scheduler loop, waking
it. Measured on loopback that was about as much CPU as parsing and rewriting the request.
The node proxy meets the same cost with an epoll reactor inside a trio task (tcp_relay); this
is the same idea for code written as coroutines: the connection handlers stay ordinary
``async def`` code, but the reactor, not trio, resumes them.

A coroutine spawned here runs until it awaits a socket (``wait`` below, used by mesh.http.pool
whenever a read or write would block). The reactor resumes it when the socket is ready, or
throws ``Timeout`` into it when its deadline passes (checked every ``tick``). One trio task runs
the reactor: it sleeps in ``wait_readable`` on the epoll descriptor and handles a whole batch
of ready sockets per wakeup, so trio sees one task however many connections there are.

Registration is edge-triggered and persistent: a socket is added to the epoll set the first
time it is waited on and stays there until it is closed (the kernel drops a closed descriptor
from the set by itself), so a wait costs no ``epoll_ctl``. An edge nobody waits for is kept
(``_pending``) and satisfies the next wait at once; a wait woken that way may find the socket
not ready after all, which every caller handles (it tries the operation and waits again on
EAGAIN). A descriptor number is reused after a close: registrations are keyed by the socket
object as well (weakly), and a new object under an old number is registered afresh.

The same edges watch idle pooled connections for free: an upstream that closes a kept-alive
connection (or sends bytes nobody asked for) leaves an edge behind, which ``idle_event``
reports, so the pool needs no peek per reuse (nginx's upstream keepalive does the same).

Inside the reactor a coroutine may await only ``wait`` and ``pause``; anything that needs
trio itself (a byte tunnel after Upgrade, with its two concurrent directions) is handed to
``trio_nursery``. Outside a reactor (a test driving the engine from trio tasks) ``wait`` falls
back to trio's own waits, so the same code runs either way.
"""

from __future__ import annotations

import logging
import select
import weakref
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

import trio

log = logging.getLogger("mesh.http.reactor")

CURRENT: Reactor | None = None  # the reactor stepping a coroutine right now, if any
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_ALWAYS = select.EPOLLERR | select.EPOLLHUP  # wake a waiter of either kind
_REGISTER = _IN | _OUT | select.EPOLLET
_MAX_EVENTS = 256
_POLLS = 8  # polls per wakeup before other trio tasks get a turn
_READY_ROUNDS = 64  # coroutines resumed from ``pause`` per round


class Timeout(Exception):
    """A wait reached its deadline."""


class Wait:
    """Awaited inside a reactor: until ``sock`` (descriptor ``fd``) is ready for ``mask``, or
    ``deadline``. ``sock`` is any object that owns the descriptor (a socket, a TLS wrapper)."""

    __slots__ = ("deadline", "fd", "mask", "sock")

    def __init__(self, sock: object, fd: int, mask: int, deadline: float) -> None:
        self.sock, self.fd, self.mask, self.deadline = sock, fd, mask, deadline

    def __await__(self) -> Generator[Wait, None, None]:
        yield self


_PAUSE = Wait(None, -1, 0, 0.0)

Coro = Coroutine[Any, Any, Any]


class Reactor:
    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self.tasks = 0  # coroutines alive
        self.now = 0.0  # trio's clock, read once a tick: deadlines need no finer grain
        self.trio_nursery: trio.Nursery | None = None
        self._ep: Any = None
        self._waiting: dict[int, tuple[Coro, float, int]] = {}  # fd -> coroutine, deadline, mask
        self._ready: deque[Coro] = deque()
        # fd -> the object registered under it, weakly: a socket's life is its owner's affair
        self._armed: dict[int, weakref.ref[Any]] = {}
        self._pending: dict[int, int] = {}  # fd -> events that came while nobody waited

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._ep = ep = select.epoll()
        self.now = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self.trio_nursery = nursery
                nursery.start_soon(self._expire)
                task_status.started()
                await self._loop(ep)
        finally:
            for coro, _, _ in list(self._waiting.values()):
                coro.close()
            for coro in self._ready:
                coro.close()
            self._waiting.clear()
            self._ready.clear()
            self._armed.clear()
            self._pending.clear()
            self.trio_nursery = None
            trio.lowlevel.notify_closing(ep.fileno())
            ep.close()
            self._ep = None

    async def _loop(self, ep: Any) -> None:
        waiting, pending, step = self._waiting, self._pending, self._step
        while True:
            for _ in range(_READY_ROUNDS):
                if not self._ready:
                    break
                step(self._ready.popleft(), None)
            if self._ready:
                await trio.lowlevel.checkpoint()
                continue
            await trio.lowlevel.wait_readable(ep.fileno())
            for _ in range(_POLLS):
                events = ep.poll(0, _MAX_EVENTS)
                for fd, mask in events:
                    entry = waiting.get(fd)
                    if entry is not None and mask & (entry[2] | _ALWAYS):
                        del waiting[fd]
                        if mask & ~entry[2] & _IN:
                            pending[fd] = _IN  # the other direction's edge, kept for later
                        step(entry[0], None)
                    else:
                        pending[fd] = pending.get(fd, 0) | mask
                if len(events) < _MAX_EVENTS:
                    break

    def spawn(self, coro: Coro) -> None:
        """Run ``coro`` now until its first wait (the reactor must be running)."""
        assert self._ep is not None, "the reactor is not running"
        self.tasks += 1
        self._step(coro, None)

    def idle_event(self, sock: object, fd: int) -> bool | None:
        """For a socket nobody waits on (an idle pooled connection): True when something
        happened on it since (bytes, EOF, an error), False when nothing did, None when this
        reactor does not watch it (ask the kernel instead)."""
        ref = self._armed.get(fd)
        if ref is None or ref() is not sock:
            return None
        return bool(self._pending.get(fd, 0) & (_IN | _ALWAYS))

    def watches(self, sock: Any) -> bool:
        """``sock`` is registered here (and so waited on here, not through trio)."""
        try:
            ref = self._armed.get(sock.fileno())
        except (OSError, ValueError):
            return False
        return ref is not None and ref() is sock

    def settle(self, fd: int) -> None:
        """Forget the edges seen on ``fd`` (the kernel said they are spent)."""
        self._pending.pop(fd, None)

    def _step(self, coro: Coro, exc: BaseException | None) -> None:
        global CURRENT
        previous, CURRENT = CURRENT, self
        try:
            w = coro.throw(exc) if exc is not None else coro.send(None)
        except StopIteration:
            self.tasks -= 1
            return
        except Exception:  # a bug must cost one connection, never the reactor
            log.exception("connection failed")
            self.tasks -= 1
            return
        finally:
            CURRENT = previous
        if type(w) is not Wait:
            log.error("a coroutine in the reactor awaited something else: %r", w)
            coro.close()
            self.tasks -= 1
            return
        fd = w.fd
        if fd < 0:
            self._ready.append(coro)
            return
        ref = self._armed.get(fd)
        if ref is None or ref() is not w.sock:
            # New here, or a new socket under a reused number: register it (an edge that is
            # already due is reported by the next poll).
            self._pending.pop(fd, None)
            try:
                self._ep.register(fd, _REGISTER)
            except FileExistsError:
                self._ep.modify(fd, _REGISTER)
            self._armed[fd] = weakref.ref(w.sock)
        else:
            seen = self._pending.get(fd)
            if seen and seen & (w.mask | _ALWAYS):
                # It became ready while nobody waited: go on at once (on the next round).
                self._pending[fd] = seen & ~w.mask & ~_ALWAYS
                self._ready.append(coro)
                return
        self._waiting[fd] = (coro, w.deadline, w.mask)

    async def _expire(self) -> None:
        """Throw Timeout into waits past their deadline (at most ``tick`` late)."""
        waiting = self._waiting
        while True:
            await trio.sleep(self.tick)
            self.now = now = trio.current_time()
            expired = [fd for fd, (_, deadline, _) in waiting.items() if deadline <= now]
            for fd in expired:
                coro = waiting.pop(fd)[0]
                self._step(coro, Timeout())


async def wait(sock: Any, writable: bool, deadline: float) -> None:
    """Inside a reactor: until ``sock`` is ready (Timeout at ``deadline``)."""
    await Wait(sock, sock.fileno(), _OUT if writable else _IN, deadline)


async def pause() -> None:
    """Let the other connections have a turn (a reactor yield, or a trio checkpoint)."""
    if CURRENT is not None:
        await _PAUSE
    else:
        await trio.lowlevel.checkpoint()
