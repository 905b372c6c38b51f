"""A listening socket of the userspace proxy (proxy/userspace.py) and its key: which virtual
address (a Service's IP:port) or NodePort it serves, and how logs name it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal

import trio

from mesh.proxy.tcp_relay import Relay
from mesh.proxy.udp_relay import UdpListener

ListenKey = tuple[Literal["vip", "node"], str, int, str]  # kind, ip, port, protocol


@dataclass(eq=False)
class Listener:
    """A listening socket: TCP ones are watched by the relay, UDP ones have a task."""

    key: ListenKey
    sock: socket.socket  # non-blocking
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    udp: UdpListener | None = None  # UDP: its own task; TCP: watched by the relay
    relay: Relay | None = None

    def close(self) -> None:
        self.scope.cancel()
        if self.relay is not None:
            self.relay.unwatch(self.sock.fileno())
        else:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


def listen_name(key: ListenKey) -> str:
    """How logs and reasons name a listener: ``ip:port/protocol``."""
    _, ip, port, proto = key
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}/{proto}"
