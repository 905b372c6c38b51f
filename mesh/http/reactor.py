"""A small epoll reactor that drives the engine's connection coroutines inside one trio task.

Theory of operation. A proxied request waits twice (for the upstream's answer, then for the
client's next request), and a round through trio's scheduler costs several times what the
wait itself does: registering interest, parking the task, running the scheduler loop, waking
it. Measured on loopback that was about as much CPU as parsing and rewriting the request.
The node proxy meets the same cost with an epoll reactor inside a trio task (tcp_relay); this
is the same idea for code written as coroutines: the connection handlers stay ordinary
``async def`` code, but the reactor, not trio, resumes them.

A coroutine spawned here runs until it awaits a socket (``wait`` below, used by mesh.http.pool
whenever a read or write would block). The reactor arms the socket in its own epoll
(one-shot) and resumes the coroutine when it is ready, or throws ``Timeout`` into it when its
deadline passes (checked every ``tick``). One trio task runs the reactor: it sleeps in
``wait_readable`` on the epoll descriptor and handles a whole batch of ready sockets per
wakeup, so trio sees one task however many connections there are.

Inside the reactor a coroutine may await only ``wait`` and ``pause``; anything that needs
trio itself (a byte tunnel after Upgrade, with its two concurrent directions) is handed to
``trio_nursery``. Outside a reactor (a test driving the engine from trio tasks) ``wait`` falls
back to trio's own waits, so the same code runs either way.
"""

from __future__ import annotations

import contextlib
import logging
import select
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

import trio

log = logging.getLogger("mesh.http.reactor")

CURRENT: Reactor | None = None  # the reactor stepping a coroutine right now, if any
_ONESHOT = select.EPOLLONESHOT
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_MAX_EVENTS = 256
_POLLS = 8  # polls per wakeup before other trio tasks get a turn
_READY_ROUNDS = 64  # coroutines resumed from ``pause`` per round


class Timeout(Exception):
    """A wait reached its deadline."""


class Wait:
    """Awaited inside a reactor: until ``fd`` is ready for ``mask`` (or ``deadline``)."""

    __slots__ = ("deadline", "fd", "mask")

    def __init__(self, fd: int, mask: int, deadline: float) -> None:
        self.fd, self.mask, self.deadline = fd, mask, deadline

    def __await__(self) -> Generator[Wait, None, None]:
        yield self


Coro = Coroutine[Any, Any, Any]


class Reactor:
    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self.tasks = 0  # coroutines alive
        self.now = 0.0  # trio's clock, read once a tick: deadlines need no finer grain
        self.trio_nursery: trio.Nursery | None = None
        self._ep: Any = None
        self._waiting: dict[int, tuple[Coro, float]] = {}
        self._ready: deque[Coro] = deque()
        self._armed: set[int] = set()

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
            for coro, _ in list(self._waiting.values()):
                coro.close()
            for coro in self._ready:
                coro.close()
            self._waiting.clear()
            self._ready.clear()
            self.trio_nursery = None
            trio.lowlevel.notify_closing(ep.fileno())
            ep.close()
            self._ep = None

    async def _loop(self, ep: Any) -> None:
        waiting, step = self._waiting, self._step
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
                for fd, _mask in events:
                    entry = waiting.pop(fd, None)
                    if entry is not None:
                        step(entry[0], None)
                if len(events) < _MAX_EVENTS:
                    break

    def spawn(self, coro: Coro) -> None:
        """Run ``coro`` now until its first wait (the reactor must be running)."""
        assert self._ep is not None, "the reactor is not running"
        self.tasks += 1
        self._step(coro, None)

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
        if w.fd < 0:
            self._ready.append(coro)
            return
        fd = w.fd
        self._waiting[fd] = (coro, w.deadline)
        mask = w.mask | _ONESHOT
        try:
            if fd in self._armed:
                self._ep.modify(fd, mask)
            else:
                self._ep.register(fd, mask)
                self._armed.add(fd)
        except FileNotFoundError:  # the number was closed and reused since: a new socket
            self._ep.register(fd, mask)
            self._armed.add(fd)
        except FileExistsError:
            self._ep.modify(fd, mask)
            self._armed.add(fd)

    async def _expire(self) -> None:
        """Throw Timeout into waits past their deadline (at most ``tick`` late)."""
        waiting = self._waiting
        while True:
            await trio.sleep(self.tick)
            self.now = now = trio.current_time()
            expired = [fd for fd, (_, deadline) in waiting.items() if deadline <= now]
            for fd in expired:
                coro, _ = waiting.pop(fd)
                with contextlib.suppress(OSError):
                    self._ep.modify(fd, _ONESHOT)  # disarmed
                self._step(coro, Timeout())


async def wait(fd: int, writable: bool, deadline: float) -> None:
    """Inside a reactor: until ``fd`` is ready (Timeout at ``deadline``)."""
    await Wait(fd, _OUT if writable else _IN, deadline)


async def pause() -> None:
    """Let the other connections have a turn (a reactor yield, or a trio checkpoint)."""
    if CURRENT is not None:
        await Wait(-1, 0, 0.0)
    else:
        await trio.lowlevel.checkpoint()
