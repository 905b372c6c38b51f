"""Fixtures shared by the DNS tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.dns.fake_upstream import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """The fake upstream on loopback, serving for the test's duration."""
    fake = FakeUpstream()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        yield fake
        nursery.cancel_scope.cancel()
