"""Waiting, bounded, for something a test started to happen."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], object], timeout: float = 5.0, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


async def until(check: Callable[[], object], seconds: float = 10.0) -> None:
    """In a trio test: poll ``check`` until it is true (kernel state, which no event tells
    of); fail the test after ``seconds``."""
    import trio

    with trio.fail_after(seconds):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.02)
