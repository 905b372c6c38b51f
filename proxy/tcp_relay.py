"""Moving bytes between two TCP sockets, both ways, with half-close and backpressure.

Theory of operation. A flow is two directions, each a loop in a trio task: the task that
accepted and connected the flow runs client -> endpoint, and one more task (started in the
proxy's connection nursery, no nursery of its own) runs endpoint -> client. Sockets are
non-blocking and every read and write is tried first; only on EAGAIN does a direction park in
``wait_readable`` / ``wait_writable``, so a busy flow costs syscalls, not event-loop round
trips, and a slow peer stalls only its own direction. Nothing more is read until what was read
has been written (backpressure).

Short exchanges (requests, replies) are copied through one buffer shared by all flows: a
direction only holds on to bytes across a wait when a write is partial, and then it keeps a
copy of the rest. A read that fills the buffer marks the direction as bulk: it moves to
splice, socket -> pipe -> socket, and the payload never enters Python again (as HAProxy's
splice-auto does). Where splice is refused (EINVAL: a socket type it does not support) the
direction stays on the buffer.

When one side sends EOF, the other side's write half is shut down (``SHUT_WR``) and the
opposite direction carries on: HTTP/1.0-style "send request, shutdown, read reply" works. An
error on either side (reset, broken pipe) aborts the flow: the failing direction marks it
failed and wakes the other one (``notify_closing``; each direction checks the mark after every
wait). Whichever direction ends last closes both sockets, with a reset when the flow failed,
so neither peer is left waiting and no file descriptor is closed under a task still using it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable

import trio

log = logging.getLogger("mesh.proxy.tcp")

TO_ENDPOINT, TO_CLIENT = 0, 1  # directions, as indexes into the byte totals
SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 18  # bytes per splice round; F_SETPIPE_SZ allows up to 1 MiB unprivileged
CHUNK = 1 << 16  # the copy buffer; a read that fills it makes a direction bulk
_YIELD_EVERY = 16  # rounds without EAGAIN before a trio checkpoint (fairness)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_LINGER_RESET = struct.pack("ii", 1, 0)


class _SpliceRefused(Exception):
    """splice() does not work on this pair of file descriptors (nothing was moved yet)."""


class _Aborted(Exception):
    """The other direction failed; this one stops without touching the sockets."""


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Flow:
    """The shared fate of one flow's two directions."""

    __slots__ = ("client", "failed", "live", "on_closed", "upstream")

    def __init__(
        self, client: socket.socket, upstream: socket.socket, on_closed: Callable[[], None]
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.on_closed = on_closed
        self.live = 2
        self.failed = False

    def abort(self) -> None:
        if not self.failed:
            self.failed = True
            # wakes the other direction if it is parked on either socket
            trio.lowlevel.notify_closing(self.client)
            trio.lowlevel.notify_closing(self.upstream)

    def direction_done(self) -> None:
        self.live -= 1
        if self.live:
            return
        if self.failed:
            reset(self.client)
            reset(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        self.on_closed()


class Relay:
    """Relays TCP flows. One per proxy: it owns the copy buffer all flows share and the byte
    totals (``totals[TO_ENDPOINT]``, ``totals[TO_CLIENT]``), which it only ever adds to."""

    def __init__(self, totals: list[int], *, splice: bool = SPLICE) -> None:
        self.totals = totals
        self.splice = splice
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)

    async def run(
        self,
        client: socket.socket,
        upstream: socket.socket,
        nursery: trio.Nursery,
        on_closed: Callable[[], None],
    ) -> None:
        """Relay until both directions end; the sockets (non-blocking) belong to the relay
        from here on and are closed when it ends, after which ``on_closed`` is called. Runs
        client -> endpoint in the calling task and starts endpoint -> client in ``nursery``."""
        flow = _Flow(client, upstream, on_closed)
        # The endpoint has not been sent anything yet: that direction starts with a wait
        # rather than a read that would almost surely fail with EAGAIN.
        nursery.start_soon(self._direction, flow, upstream, client, TO_CLIENT, True)
        await self._direction(flow, client, upstream, TO_ENDPOINT, False)

    async def _direction(
        self, flow: _Flow, src: socket.socket, dst: socket.socket, d: int, wait_first: bool
    ) -> None:
        try:
            await self._copy(flow, src, dst, d, wait_first)
            if not flow.failed:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
        except (_Aborted, trio.ClosedResourceError):
            flow.abort()  # already failed: the other direction woke us
        except OSError:
            flow.abort()
        except Exception:  # one broken flow must never take the proxy down
            log.exception("relay failed")
            flow.abort()
        except BaseException:  # cancelled: the proxy is stopping
            flow.abort()
            raise
        finally:
            flow.direction_done()

    async def _copy(
        self, flow: _Flow, src: socket.socket, dst: socket.socket, d: int, wait_first: bool
    ) -> None:
        """Copy src -> dst until EOF, through the shared buffer; hand over to splice once a
        read fills the buffer."""
        buf, view, totals = self._buf, self._view, self.totals
        sfd = src.fileno()
        splice = self.splice
        rounds = 0
        if wait_first:
            await trio.lowlevel.wait_readable(sfd)
            if flow.failed:
                raise _Aborted
        while True:
            try:
                n = src.recv_into(buf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sfd)
                if flow.failed:
                    raise _Aborted from None
                continue
            if n == 0:
                return
            totals[d] += n
            try:
                sent = dst.send(view[:n])
            except BlockingIOError:
                sent = 0
            if sent < n:  # the buffer is shared: keep a copy of the rest across the waits
                await _send_all(flow, dst, bytes(view[sent:n]))
            if n < CHUNK:
                # A short read emptied the socket's queue: a second read would only fail
                # with EAGAIN, so wait straight away (the data or EOF that arrives meanwhile
                # makes the wait return at once).
                await trio.lowlevel.wait_readable(sfd)
                if flow.failed:
                    raise _Aborted
                continue
            if splice:
                try:
                    await self._splice(flow, sfd, dst.fileno(), d)
                    return
                except _SpliceRefused:
                    splice = False
            rounds += 1
            if rounds % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
                if flow.failed:
                    raise _Aborted

    async def _splice(self, flow: _Flow, sfd: int, dfd: int, d: int) -> None:
        totals = self.totals
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
            buffered = 0
            moved = False
            rounds = 0
            while True:
                if buffered == 0:
                    try:
                        n = os.splice(sfd, w, PIPE_SIZE, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sfd)
                        if flow.failed:
                            raise _Aborted from None
                        continue
                    except OSError as exc:
                        if exc.errno == errno.EINVAL and not moved:
                            raise _SpliceRefused from exc
                        raise
                    if n == 0:
                        return  # EOF
                    moved = True
                    buffered = n
                    totals[d] += n
                try:
                    buffered -= os.splice(r, dfd, buffered, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dfd)
                    if flow.failed:
                        raise _Aborted from None
                    continue
                rounds += 1
                if rounds % _YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
                    if flow.failed:
                        raise _Aborted
        finally:
            os.close(r)
            os.close(w)


async def _send_all(flow: _Flow, dst: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        await trio.lowlevel.wait_writable(dst)
        if flow.failed:
            raise _Aborted
        with contextlib.suppress(BlockingIOError):
            view = view[dst.send(view) :]
