"""The cyclic collector paused while a big set of long-lived objects is made, then those
objects moved out of its sight (``gc.freeze``).

A start-up makes hundreds of thousands of objects that all live (the store's 40,000 objects,
a DNS server's indexes): the collector's passes over them while they are made found nothing
to free and cost up to half of the start, and without the freeze the next young collection
would walk them all once more. Reference counting still frees them when they are replaced."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_then_frozen() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
