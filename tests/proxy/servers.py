"""Loopback endpoints and clients for proxy tests.

A "who" endpoint answers each TCP connection with its own ``ip:port`` line and then echoes
until EOF; over UDP it answers each datagram with ``ip:port|`` and the datagram.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable

import trio

from mesh.proxy.local_routes import IP_FREEBIND

REJECT = "reject"
SILENT = "silent"  # no answer at all: what a reject must never be
Addr = tuple[str, int]


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _freebind(sock: socket.socket | trio.socket.SocketType, ip: str) -> None:
    # IPv6 test hosts are local by a ``local`` route only (no address on lo): binding one
    # needs IP_FREEBIND, which IPv4 does not (127.0.0.0/8 is all assigned).
    if ":" in ip:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)


def _bound(ip: str, port: int, kind: int) -> trio.socket.SocketType:
    raw = socket.socket(_family(ip), kind)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _freebind(raw, ip)
    raw.bind((ip, port))
    if kind == socket.SOCK_STREAM:
        raw.listen(128)
    raw.setblocking(False)
    return trio.socket.from_stdlib_socket(raw)


async def _echo(conn: trio.socket.SocketType, hello: bytes) -> None:
    with conn:
        try:
            await conn.send(hello)
            while data := await conn.recv(65536):
                view = memoryview(data)
                while view:
                    view = view[await conn.send(view) :]
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


async def tcp_who(
    ip: str, port: int, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
) -> None:
    """A who endpoint on ip:port; ``task_status.started`` gets a scope that stops it."""
    sock = _bound(ip, port, socket.SOCK_STREAM)
    hello = f"{ip}:{port}\n".encode()
    with sock, trio.CancelScope() as scope:
        async with trio.open_nursery() as conns:
            task_status.started(scope)
            while True:
                conn, _ = await sock.accept()
                conns.start_soon(_echo, conn, hello)


async def tcp_sink(
    ip: str,
    port: int,
    handler: Callable[[trio.socket.SocketType], object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TCP server on ip:port running ``handler(conn)`` (an async function) per connection."""
    sock = _bound(ip, port, socket.SOCK_STREAM)
    with sock:
        async with trio.open_nursery() as conns:
            task_status.started()
            while True:
                conn, _ = await sock.accept()
                conns.start_soon(handler, conn)  # type: ignore[arg-type]


async def udp_who(
    ip: str, port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    sock = _bound(ip, port, socket.SOCK_DGRAM)
    prefix = f"{ip}:{port}|".encode()
    with sock:
        task_status.started()
        while True:
            data, addr = await sock.recvfrom(65535)
            await sock.sendto(prefix + data, addr)


async def eventually(predicate: Callable[[], bool], tries: int = 500) -> None:
    """Wait (bounded: ``tries`` polls 20 ms apart) until ``predicate()`` holds."""
    for _ in range(tries):
        if predicate():
            return
        await trio.sleep(0.02)
    raise AssertionError("condition not reached")


async def connect_from(client: str, dest: Addr) -> trio.socket.SocketType:
    sock = trio.socket.socket(_family(client), socket.SOCK_STREAM)
    _freebind(sock, client)
    await sock.bind((client, 0))
    await sock.connect(dest)
    if sock.getsockname()[:2] == sock.getpeername()[:2]:
        # TCP simultaneous open: with nothing listening yet on a port of the ephemeral range,
        # the kernel may give the client that very port and connect it to itself.
        sock.close()
        raise ConnectionRefusedError(f"{dest} connected to itself: nothing listens there")
    return sock


async def read_line(sock: trio.socket.SocketType) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


async def ask_tcp(client: str, dest: Addr) -> str:
    """Which endpoint answers a new connection: its "ip:port", REJECT (reset or refused),
    or "closed" (an orderly close with nothing said, which a reject must not be)."""
    try:
        with trio.fail_after(10):
            sock = await connect_from(client, dest)
            with sock:
                line = await read_line(sock)
    except ConnectionRefusedError:
        return REJECT
    except OSError as exc:
        if exc.errno == errno.ECONNRESET:
            return REJECT
        raise
    return line.decode().strip() or "closed"


async def ask_udp(client: str, dest: Addr, sock: trio.socket.SocketType | None = None) -> str:
    """Which endpoint answers a datagram (sent from a fresh socket connected to ``dest``
    unless ``sock`` is given): its "ip:port"; REJECT when an ICMP port unreachable comes
    back; SILENT when nothing answers within a short wait. A connected socket only accepts
    replies from ``dest``, so an answer proves it came from the virtual address."""
    own = sock is None
    if sock is None:
        sock = trio.socket.socket(_family(client), socket.SOCK_DGRAM)
        _freebind(sock, client)
        await sock.bind((client, 0))
        await sock.connect(dest)
    try:
        try:
            if own:
                await sock.send(b"ping")
            else:
                await sock.sendto(b"ping", dest)
            with trio.move_on_after(1.0):
                data, src = await sock.recvfrom(65535)
                assert (src[0], src[1]) == dest, "the reply must come from the virtual address"
                who, _, body = data.partition(b"|")
                assert body == b"ping"
                return who.decode()
        except ConnectionRefusedError:
            return REJECT
        return SILENT
    finally:
        if own:
            with contextlib.suppress(OSError):
                sock.close()
