"""The in-process feed applies a plane's first config with the cyclic collector paused,
then frozen (mesh/feed.py), when the plane tunes the process's collector; only the first."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from mesh.config.dns import DnsConfig
from mesh.feed import feed


class Recorder:
    name = "dns"

    def __init__(self) -> None:
        self.collecting: list[bool] = []

    def apply(self, config: Any) -> None:
        self.collecting.append(gc.isenabled())


async def three() -> AsyncIterator[DnsConfig]:
    for version in range(3):
        yield DnsConfig(version=version)


@pytest.mark.parametrize("quiet", [True, False])
def test_only_the_first_apply_is_quiet(quiet: bool) -> None:
    component = Recorder()
    assert gc.isenabled()
    gc.unfreeze()
    try:
        trio.run(lambda: feed(three(), component, quiet_first=quiet))  # type: ignore[arg-type]
        # What the first apply made is out of the collector's sight when it was quiet.
        assert (gc.get_freeze_count() > 0) == quiet
    finally:
        gc.unfreeze()  # this test process's objects are the collector's again
    assert component.collecting == [not quiet, True, True]
    assert gc.isenabled()
