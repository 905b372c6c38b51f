"""Moving bytes between two TCP sockets, both ways, with half-close and backpressure.

Theory of operation. Every established flow is driven by one reactor: a trio task that owns
an epoll instance (level-triggered), waits for it to become readable with trio's
``wait_readable`` and then handles whatever is ready, flow by flow, without a task switch
per event; it polls again until a poll comes back empty (at most ``_POLLS`` times), as the
peers keep sending while a batch is handled and a round through trio costs more than a poll.

A flow is two directions, client -> endpoint and endpoint -> client; each moves bytes until
EAGAIN and the epoll interest of the two sockets says what each direction waits for: to read
its source, or, when a write stopped short, to write its destination. While a direction has
unwritten bytes it does not read (backpressure), so a slow peer stalls only its own
direction.

Short exchanges (requests, replies) are copied through one buffer shared by all flows; a
direction keeps a copy only of what a short write left over. A read that fills the buffer
marks the direction as bulk: it moves to splice, socket -> pipe -> socket, and the payload
never enters Python again (as HAProxy's splice-auto does). Where splice is refused (EINVAL: a
socket type it does not support) the direction stays on the buffer. A read shorter than the
buffer emptied the socket, so the direction stops there instead of reading into EAGAIN; level
triggering reports the socket again if more came meanwhile.

Other sockets can share the reactor (``watch``): listening sockets and connects in progress.
Their handlers run after the flows of the same poll have been handled, because a handler may
create sockets: a new socket can reuse the number of one that a flow closed earlier in the
batch, and a later event for that number must not reach it.

When one side sends EOF, the other side's write half is shut down (``SHUT_WR``) and the
opposite direction carries on: HTTP/1.0-style "send request, shutdown, read reply" works. When
both directions are done the sockets are closed (a close sends the FIN still owed, so the
last EOF needs no shutdown of its own). When epoll says the peer has sent its FIN
(EPOLLRDHUP) and a read empties the socket, the direction reads the EOF right away and sends
the last bytes with MSG_MORE, so that they and the FIN leave in one segment, as a reply and
the close that ends it usually do. An error on either side (reset, broken pipe)
ends the flow with a reset on both sides, so neither peer is left waiting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("mesh.proxy.tcp")

TO_ENDPOINT, TO_CLIENT = 0, 1  # directions, as indexes into the byte totals
SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 18  # bytes per splice round; F_SETPIPE_SZ allows up to 1 MiB unprivileged
CHUNK = 1 << 16  # the copy buffer; a read that fills it makes a direction bulk
_ROUNDS = 16  # reads per direction and event before the other flows get a turn (fairness)
_MAX_EVENTS = 256  # epoll events per poll
_POLLS = 8  # polls per reactor wakeup before other trio tasks get a turn (fairness)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_LINGER_RESET = struct.pack("ii", 1, 0)
Handler = Callable[[int, int], None]  # (fd, epoll mask), for a watched socket
_IN, _OUT, _RDHUP = select.EPOLLIN | select.EPOLLRDHUP, select.EPOLLOUT, select.EPOLLRDHUP
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_OPEN, _EOF, _SHUT = 0, 1, 2  # a direction's ``done``: reading; EOF read, FIN owed; FIN sent
_BROKEN = select.EPOLLERR | select.EPOLLHUP


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Direction:
    """One direction of a flow: what it has read and not yet written, and its pipe once bulk."""

    __slots__ = ("d", "done", "dst", "pending", "pipe", "piped", "sfd", "splice", "spliced", "src")

    def __init__(self, src: socket.socket, dst: socket.socket, d: int, splice: bool) -> None:
        self.src, self.dst, self.d = src, dst, d
        self.sfd = src.fileno()
        self.splice = splice
        self.done = _OPEN
        self.pending: memoryview | None = None  # bytes a short write left over
        self.pipe: tuple[int, int] | None = None  # (read end, write end) once bulk
        self.piped = 0  # bytes in the pipe
        self.spliced = 0  # bytes moved by splice so far

    @property
    def blocked(self) -> bool:
        return self.pending is not None or self.piped > 0

    def close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None
            self.piped = 0


class _Flow:
    __slots__ = ("cfd", "cmask", "down", "on_closed", "ufd", "umask", "up")

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        on_closed: Callable[[], None],
        splice: bool,
    ) -> None:
        self.up = _Direction(client, upstream, TO_ENDPOINT, splice)
        self.down = _Direction(upstream, client, TO_CLIENT, splice)
        self.cfd, self.ufd = client.fileno(), upstream.fileno()
        self.cmask = self.umask = _IN
        self.on_closed = on_closed


class Relay:
    """Relays TCP flows. One per proxy: it owns the reactor, the copy buffer all flows share
    and the byte totals (``totals[TO_ENDPOINT]``, ``totals[TO_CLIENT]``), which it only ever
    adds to. ``run`` must be running for ``add`` to be called."""

    def __init__(self, totals: list[int], *, splice: bool = SPLICE) -> None:
        self.totals = totals
        self.splice = splice
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._epoll: Any = None  # select.epoll while running
        self._flows: dict[int, _Flow] = {}  # both file descriptors of every flow
        self._watched: dict[int, Handler] = {}  # other sockets in the reactor (``watch``)

    @property
    def flows(self) -> int:
        return len(self._flows) // 2

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reactor. When it stops (cancelled), the flows it holds are reset."""
        self._epoll = ep = select.epoll()
        try:
            task_status.started()
            flows, watched = self._flows, self._watched
            later: list[tuple[Handler, int, int]] = []
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                for _ in range(_POLLS):
                    events = ep.poll(0, _MAX_EVENTS)
                    for fd, mask in events:
                        flow = flows.get(fd)
                        if flow is not None:
                            self._dispatch(flow, fd, mask)
                        elif (handler := watched.get(fd)) is not None:
                            later.append((handler, fd, mask))
                    for handler, fd, mask in later:
                        try:
                            handler(fd, mask)
                        except Exception:  # a handler must never take the reactor down
                            log.exception("socket handler failed")
                    later.clear()
                    if not events:
                        break
        finally:
            for flow in set(self._flows.values()):
                self._finish(flow, failed=True)
            self._watched.clear()
            trio.lowlevel.notify_closing(ep.fileno())
            ep.close()
            self._epoll = None

    def add(
        self, client: socket.socket, upstream: socket.socket, on_closed: Callable[[], None]
    ) -> None:
        """Relay between two connected non-blocking sockets; from here on they belong to the
        relay, which closes them when the flow ends and then calls ``on_closed``."""
        assert self._epoll is not None, "the relay is not running"
        flow = _Flow(client, upstream, on_closed, self.splice)
        self._flows[flow.cfd] = self._flows[flow.ufd] = flow
        self._epoll.register(flow.cfd, _IN)
        if self._watched.pop(flow.ufd, None) is not None:  # watched while it connected
            self._epoll.modify(flow.ufd, _IN)
        else:
            self._epoll.register(flow.ufd, _IN)
        # The client has most likely sent its request already: relay it now rather than after
        # a round through epoll. The endpoint has been sent nothing yet: it waits for epoll.
        self._drive(flow, flow.up, None, 0)

    def watch(self, fd: int, mask: int, handler: Handler) -> None:
        """Have the reactor call ``handler(fd, mask)`` when the socket ``fd`` is ready for
        ``mask`` (level-triggered); ``add`` takes over a watched upstream socket."""
        assert self._epoll is not None, "the relay is not running"
        self._epoll.register(fd, mask)
        self._watched[fd] = handler

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it); a no-op once the reactor has stopped."""
        if self._watched.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _dispatch(self, flow: _Flow, fd: int, mask: int) -> None:
        if fd == flow.cfd:
            self._drive(flow, flow.up, flow.down, mask)
        else:
            self._drive(flow, flow.down, flow.up, mask)

    def _drive(self, flow: _Flow, reader: _Direction, writer: _Direction | None, mask: int) -> None:
        """Progress after an event on one socket: ``reader`` reads from it, ``writer`` writes
        to it. Then end the flow, or set what its sockets wait for."""
        try:
            if writer is not None and mask & (_OUT | _BROKEN):
                self._step(writer)
            if not mask or mask & (_IN | _BROKEN):
                self._step(reader, mask & _RDHUP)
            if mask & select.EPOLLERR:
                # a reset or an error on the socket: pass it on to the other peer
                raise ConnectionResetError(errno.ECONNRESET, "socket error")
        except OSError:
            self._finish(flow, failed=True)
            return
        except Exception:  # one broken flow must never take the proxy down
            log.exception("relay failed")
            self._finish(flow, failed=True)
            return
        up, down = flow.up, flow.down
        if up.done and down.done:
            self._finish(flow, failed=False)  # the close sends the FIN still owed
            return
        if up.done == _EOF:
            self._shut(up)
        if down.done == _EOF:
            self._shut(down)
        cmask = (0 if up.done or up.blocked else _IN) | (_OUT if down.blocked else 0)
        umask = (0 if down.done or down.blocked else _IN) | (_OUT if up.blocked else 0)
        if cmask != flow.cmask:
            self._interest(flow.cfd, flow.cmask, cmask)
            flow.cmask = cmask
        if umask != flow.umask:
            self._interest(flow.ufd, flow.umask, umask)
            flow.umask = umask

    def _interest(self, fd: int, old: int, new: int) -> None:
        # A socket shut down both ways reports EPOLLHUP whatever its mask: one the flow wants
        # nothing from (yet) leaves the epoll set, or level triggering would spin on it.
        if not new:
            self._epoll.unregister(fd)
        elif not old:
            self._epoll.register(fd, new)
        else:
            self._epoll.modify(fd, new)

    def _step(self, dr: _Direction, rdhup: int = 0) -> None:
        """Move what can be moved now; return at EAGAIN (or after ``_ROUNDS`` reads: the
        level-triggered epoll reports the socket again). ``rdhup``: the source has sent its
        FIN."""
        if dr.done:
            return
        for _ in range(_ROUNDS):
            if dr.blocked and not self._flush(dr):
                return
            if dr.pipe is not None:
                try:
                    n = os.splice(dr.sfd, dr.pipe[1], PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL or dr.spliced:
                        raise
                    dr.close_pipe()  # refused on this pair: stay on the buffer
                    dr.splice = False
                    continue
                if n == 0:
                    self._eof(dr)
                    return
                dr.piped = n
                dr.spliced += n
                self.totals[dr.d] += n
                continue  # written by the flush above
            try:
                n = dr.src.recv_into(self._buf)
            except BlockingIOError:
                return
            if n == 0:
                self._eof(dr)
                return
            last = False
            if rdhup and n < CHUNK:  # the FIN is there: read it now and send it with these
                try:
                    more = dr.src.recv_into(self._view[n:])
                except BlockingIOError:
                    more = -1  # not the FIN yet after all
                if more >= 0:
                    last = not more
                    n += more
            self.totals[dr.d] += n
            try:
                sent = dr.dst.send(self._view[:n], _MSG_MORE if last else 0)
            except BlockingIOError:
                sent = 0
            if sent < n:  # the buffer is shared: keep a copy of the rest
                dr.pending = memoryview(bytes(self._view[sent:n]))
                return  # the EOF is read again once it is written
            if last:
                self._eof(dr)
                return
            if n < CHUNK:
                return  # the socket is empty
            if dr.splice:
                r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                dr.pipe = (r, w)
                with contextlib.suppress(OSError):
                    fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)

    def _flush(self, dr: _Direction) -> bool:
        """Write what a direction holds; False while the destination is full."""
        dfd = dr.dst.fileno()
        for _ in range(_ROUNDS):
            try:
                if dr.pipe is not None and dr.piped:
                    dr.piped -= os.splice(dr.pipe[0], dfd, dr.piped, flags=_SPLICE_FLAGS)
                    if dr.piped:
                        continue
                elif dr.pending is not None:
                    dr.pending = dr.pending[dr.dst.send(dr.pending) :]
                    if dr.pending:
                        continue
                    dr.pending = None
            except BlockingIOError:
                return False
            return True
        return False

    def _eof(self, dr: _Direction) -> None:
        dr.done = _EOF  # the FIN is passed on by _drive, or by the close that ends the flow
        dr.close_pipe()

    def _shut(self, dr: _Direction) -> None:
        dr.done = _SHUT
        try:
            dr.dst.shutdown(socket.SHUT_WR)
        except OSError:  # the destination is gone: its own event ends the flow
            return

    def _finish(self, flow: _Flow, *, failed: bool) -> None:
        del self._flows[flow.cfd], self._flows[flow.ufd]
        flow.up.close_pipe()
        flow.down.close_pipe()
        client, upstream = flow.down.dst, flow.up.dst
        if failed:
            reset(client)
            reset(upstream)
        else:
            client.close()
            upstream.close()
        flow.on_closed()
