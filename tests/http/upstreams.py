"""Loopback upstreams and raw clients for the L7 engine's tests.

A :class:`RecordingUpstream` records every byte each connection sent it and answers each
complete request (read with the engine's own strict codec) as its ``behaviour`` says.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio

from mesh.http.errors import ProtocolError
from mesh.http.events import CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, Request
from mesh.http.h1 import Reader

OK = "ok"  # 200 with a body naming the upstream and echoing the request's fields
DIE_MID_BODY = "die-mid-body"  # a head promising 100 bytes, 10 of them, then a reset
CLOSE_AFTER = "close-after"  # answer (keep-alive advertised), then close the connection
SILENT = "silent"  # read the request and never answer
UPGRADE = "upgrade"  # 101, then echo bytes


class AcceptLoop:
    """``serve``: listen on a free 127.0.0.1 port, hand each connection to ``_connection``."""

    address: tuple[str, int]

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.address = listener.getsockname()
        async with trio.open_nursery() as nursery:
            task_status.started(self.address)
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(self._connection, conn)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        raise NotImplementedError


async def read_head(conn: trio.socket.SocketType) -> bytes | None:
    """Read until a request head has arrived (and what came with it); None if the peer
    closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return buf


@dataclass
class RecordingUpstream(AcceptLoop):
    behaviour: str = OK
    received: list[bytearray] = field(default_factory=list)  # bytes per connection
    complete: list[Request] = field(default_factory=list)  # requests read to their end
    bodies: list[int] = field(default_factory=list)  # body bytes of each complete request
    address: tuple[str, int] = ("127.0.0.1", 0)

    @property
    def total_bytes(self) -> int:
        return sum(len(r) for r in self.received)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        record = bytearray()
        self.received.append(record)
        reader = Reader("server")
        body = 0
        with conn:
            try:
                while True:
                    ev = reader.next_event()
                    if ev is NEED_DATA:
                        data = await conn.recv(65536)
                        record += data
                        reader.feed(data)
                        continue
                    if ev is CLOSED or ev is PAUSED:
                        return
                    if type(ev) is Data:
                        body += len(ev.data)
                    elif type(ev) is Request:
                        request = ev
                        body = 0
                    elif type(ev) is EndOfMessage:
                        self.complete.append(request)
                        self.bodies.append(body)
                        if not await self._answer(conn, request, body, reader):
                            return
                        reader.next_message()
            except (OSError, ProtocolError, trio.BrokenResourceError):
                return

    async def _answer(
        self, conn: trio.socket.SocketType, request: Request, body: int, reader: Reader
    ) -> bool:
        if self.behaviour == SILENT:
            await trio.sleep_forever()
        if self.behaviour == DIE_MID_BODY:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await trio.sleep(0.05)
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            return False
        if self.behaviour == UPGRADE:
            await conn.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            pending = reader.trailing()
            if pending:
                await conn.send(pending)
            while data := await conn.recv(65536):
                await conn.send(data)
            return False
        lines = [b"%s: %s" % f for f in request.headers]
        payload = b"upstream %d\n%s %s body=%d\n%s\n" % (
            self.address[1],
            request.method,
            request.target,
            body,
            b"\n".join(lines),
        )
        await conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        return self.behaviour != CLOSE_AFTER


async def exchange(
    address: tuple[str, int], data: bytes, *, bytewise: bool = False, wait: float = 5.0
) -> tuple[bytes, bool]:
    """Send ``data`` (``bytewise``: one byte a send, in 64-byte pieces past the first 1 KiB)
    and read until the server closes: (what came back, closed by the server in time)."""
    sock = trio.socket.socket()
    await sock.connect(address)
    out = bytearray()
    with sock:
        try:
            if bytewise:
                i = 0
                while i < len(data):
                    step = 1 if i < 1024 else 64
                    await sock.send(data[i : i + step])
                    i += step
            else:
                await sock.send(data)
        except OSError:
            pass  # the server may close before it has everything
        with trio.move_on_after(wait):
            try:
                while chunk := await sock.recv(65536):
                    out += chunk
            except OSError:
                pass
            return bytes(out), True
    return bytes(out), False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def header_of(response: bytes, name: bytes) -> bytes | None:
    head = response.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None
