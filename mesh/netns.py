"""Opening sockets inside another network namespace.

A socket belongs to the namespace it was created in, whatever the creating thread does later.
So a process in the host's namespace can serve inside a namespace it made by switching the
calling thread in (setns), creating and binding the socket, and switching back — with no
await in between, so no other trio task runs while the thread is elsewhere.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread in namespace ``name`` (None: stay where it is)."""
    if name is None:
        yield
        return
    # Imported here: pyroute2 takes a third of a second to import, and only the cluster
    # in a box serves inside a namespace.
    from pyroute2 import netns as _netns

    _netns.pushns(name)
    try:
        yield
    finally:
        _netns.popns()


def socket_maker(name: str) -> Callable[[int], socket.socket]:
    """A maker of non-blocking TCP sockets inside namespace ``name`` (mesh.http.pool's
    ``new_socket`` for a gateway that runs in the cluster in a box)."""

    def make(family: int) -> socket.socket:
        with inside(name):
            return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)

    return make
