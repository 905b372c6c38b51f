"""What every data-plane component offers the process that runs it.

A component applies whole config snapshots (``apply`` swaps one immutable object; a request in
flight finishes on the config it started with), serves until cancelled (``run``), and exposes
its state to the admin endpoint: ``ready`` once its first config is applied, ``registry`` with
its Prometheus metrics (names prefixed ``mesh_<name>_``), ``config_json`` for ``/config``.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import trio
from prometheus_client import CollectorRegistry

from mesh.config.base import ComponentConfig

C = TypeVar("C", bound=ComponentConfig, contravariant=True)


class ConfigRejected(Exception):
    """A component refused a config (it keeps running on the previous one)."""


@runtime_checkable
class Component(Protocol[C]):
    name: str  # "dns", "proxy", ...: also the config-stream kind it consumes
    registry: CollectorRegistry

    @property
    def ready(self) -> bool: ...

    def apply(self, config: C) -> None:
        """Swap in a new config. Raises ConfigRejected and keeps the old one if it cannot."""

    def config_json(self) -> Any:
        """The live config as JSON-ready data (None before the first one), or a dict holding
        it under ``"config"`` beside derived state worth showing. ``mesh config dump`` prints
        the config part, which ``--config FILE`` reads back."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Open sockets, call ``task_status.started()`` once listening, serve until cancelled."""
