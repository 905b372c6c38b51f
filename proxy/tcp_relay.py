"""Moving bytes between two TCP sockets, both ways, with half-close and backpressure.

On Linux each direction splices socket -> pipe -> socket (os.splice), so the payload never
enters Python. Sockets and pipe are non-blocking: when the kernel answers EAGAIN the task
parks in trio's ``wait_readable`` / ``wait_writable``, so a slow peer stalls only its own
direction, and the pipe is the only buffer: nothing more is read until the receiver has
taken what is in it (backpressure). Where splice is missing or refused (EINVAL: a socket
type it does not support) a direction falls back to ``recv_into`` / ``send``.

Short exchanges are copied through a buffer first (no pipe to set up); a direction that fills
the buffer in one read is bulk and moves to splice for the rest of the connection.

When one side sends EOF, the other side's write half is shut down (``SHUT_WR``) and the
opposite direction carries on: HTTP/1.0-style "send request, shutdown, read reply" works. An
error on either side (reset, broken pipe) aborts the whole connection with a reset on both
sides, so neither peer is left waiting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

import trio

Direction = str  # "to_endpoint" | "to_client"
OnBytes = Callable[[Direction, int], None]

SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 18  # bytes per splice round; F_SETPIPE_SZ allows up to 1 MiB unprivileged
CHUNK = 1 << 16  # recv_into buffer of the fallback path
_YIELD_EVERY = 16  # splice rounds without EAGAIN before a trio checkpoint (fairness)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class _SpliceRefused(Exception):
    """splice() does not work on this pair of file descriptors (nothing was moved yet)."""


def set_nodelay(sock: trio.socket.SocketType) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset(sock: trio.socket.SocketType) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def relay(
    client: trio.socket.SocketType,
    upstream: trio.socket.SocketType,
    on_bytes: OnBytes,
    *,
    splice: bool = SPLICE,
) -> bool:
    """Relay until both directions reach EOF; True if it ended cleanly, False on an error
    (the caller then resets both sockets). The sockets are not closed here."""
    failed = False

    async def pump(src: trio.socket.SocketType, dst: trio.socket.SocketType, d: Direction) -> None:
        nonlocal failed
        try:
            await _pump(src.fileno(), dst.fileno(), d, on_bytes, splice)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            failed = True
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, client, upstream, "to_endpoint")
        nursery.start_soon(pump, upstream, client, "to_client")
    return not failed


async def _pump(sfd: int, dfd: int, d: Direction, on_bytes: OnBytes, splice: bool) -> None:
    """Copy sfd -> dfd until EOF. Reads and writes are tried first and waited for only on
    EAGAIN, so a busy flow costs syscalls, not event-loop round trips. Small exchanges
    (requests, replies) are copied through one buffer; once a read fills the buffer the flow
    is bulk and switches to splice, which needs a pipe (as HAProxy's splice-auto does)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    rounds = 0
    while True:
        try:
            n = os.readv(sfd, [buf])
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sfd)
            continue
        if n == 0:
            return
        on_bytes(d, n)
        sent = 0
        while sent < n:
            try:
                sent += os.write(dfd, view[sent:n])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dfd)
        if n == CHUNK and splice:
            try:
                await _splice(sfd, dfd, d, on_bytes)
                return
            except _SpliceRefused:
                splice = False
        rounds += 1
        if rounds % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()


async def _splice(sfd: int, dfd: int, d: Direction, on_bytes: OnBytes) -> None:
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
                    continue
                except OSError as exc:
                    if exc.errno == errno.EINVAL and not moved:
                        raise _SpliceRefused from exc
                    raise
                if n == 0:
                    return  # EOF
                moved = True
                buffered = n
                on_bytes(d, n)
            try:
                buffered -= os.splice(r, dfd, buffered, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dfd)
                continue
            rounds += 1
            if rounds % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
    finally:
        os.close(r)
        os.close(w)
