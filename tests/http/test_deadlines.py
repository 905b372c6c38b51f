"""The deadline tick (mesh.http.pool.Deadlines): however many servers start it, one task
ticks; when that one ends the next takes over, so waits still time out."""

from __future__ import annotations

import socket

import pytest
import trio

from mesh.http.pool import Deadlines, Timeout


async def test_one_task_ticks_however_many_are_started() -> None:
    d = Deadlines(tick=0.01)
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def run_first() -> None:
            with first:
                await d.run()

        nursery.start_soon(run_first)
        nursery.start_soon(d.run)
        nursery.start_soon(d.run)
        await trio.sleep(0.2)
        assert d.running == 3
        # one tick task: about 20 ticks in 0.2 s, never the 40 or 60 of two or three
        assert 5 <= d.ticks <= 25
        first.cancel()  # its server stopped: another task takes over
        await trio.lowlevel.checkpoint()
        before = d.ticks
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            with pytest.raises(Timeout):
                await d.wait(a, 0.05, float("inf"), False)
        assert d.ticks > before
        await trio.sleep(0.1)
        assert d.running == 2
        nursery.cancel_scope.cancel()
    assert d.running == 0
    assert d._ticking is None


async def test_a_tick_left_from_an_earlier_run_does_not_block_this_one() -> None:
    d = Deadlines(tick=0.01)
    d._ticking = (object(), trio.Event())  # type: ignore[assignment]
    with trio.move_on_after(0.1):
        await d.run()
    assert d.ticks >= 3
