"""TLS test servers on 127.0.0.1: a trio echo server over SSLStream, and a raw selectors loop
over :class:`~mesh.tls.session.TlsSession` that answers one HTTP request per connection."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import trio

from mesh.tls import TlsError, TlsTerminator


async def serve_echo(
    term: TlsTerminator, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Echo every byte back over TLS; reports the port it listens on."""

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, term.context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
            while data := await tls.receive_some():
                await tls.send_all(data)
        except trio.BrokenResourceError:
            pass  # a client that failed its handshake or left without close_notify
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


class _Conn:
    def __init__(self, sock: socket.socket, term: TlsTerminator) -> None:
        self.sock = sock
        self.tls = term.session()
        self.request = b""
        self.out = b""
        self.done = False


def _http_loop(listener: socket.socket, term: TlsTerminator, stop: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    deadline = time.monotonic() + 30  # bounded even if the test forgets to stop it
    while not stop.is_set() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            if key.data is None:
                sock, _addr = listener.accept()
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, _Conn(sock, term))
                continue
            conn: _Conn = key.data
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            try:
                conn.request += conn.tls.receive_data(data)
            except TlsError:
                conn.done = True
            if b"\r\n\r\n" in conn.request and not conn.out:
                body = f"{conn.tls.version} {conn.tls.alpn_protocol}\n".encode()
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                conn.tls.send(head.encode() + body)
                conn.tls.close()
                conn.out = b"sent"
                conn.done = True
            pending = conn.tls.data_to_send()
            if pending:
                conn.sock.setblocking(True)  # small replies: a blocking send keeps this simple
                conn.sock.sendall(pending)
                conn.sock.setblocking(False)
            if conn.done or not data:
                sel.unregister(conn.sock)
                conn.sock.close()
    sel.close()


@contextlib.contextmanager
def raw_https(term: TlsTerminator) -> Iterator[int]:
    """A non-blocking socket loop in a thread, TLS through TlsSession; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    stop = threading.Event()
    thread = threading.Thread(target=_http_loop, args=(listener, term, stop), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
