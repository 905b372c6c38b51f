"""Running a component from a config source.

A feed takes configs from a source (the in-process control plane, the config stream of a
remote one, or a file) and applies each to a component. A config the component rejects
(:class:`~mesh.component.ConfigRejected`) is logged and the previous one stays in force;
so does an unreadable or invalid config file. Nothing a source sends can crash the component.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import trio
import yaml

from mesh.component import Component, ConfigRejected
from mesh.config.base import ComponentConfig
from mesh.gcpause import paused_then_frozen
from mesh.stream_client import Backoff, stream_configs

log = logging.getLogger("mesh.feed")


class ConfigFileError(Exception):
    """A config file that cannot be used, and why."""


def apply_config(component: Component[Any], config: ComponentConfig) -> bool:
    """Apply one config; returns whether the component took it."""
    try:
        component.apply(config)
    except ConfigRejected as exc:
        log.error(
            "config rejected",
            extra={"component": component.name, "version": config.version, "error": str(exc)},
        )
        return False
    except Exception:
        log.exception(
            "config apply failed", extra={"component": component.name, "version": config.version}
        )
        return False
    log.info("config applied", extra={"component": component.name, "version": config.version})
    return True


async def feed(
    configs: AsyncIterator[ComponentConfig],
    component: Component[Any],
    *,
    quiet_first: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply every config from ``configs`` to ``component``, until cancelled.
    ``quiet_first``: no cyclic garbage collection while the first one is applied (the
    process tunes its collector, mesh/run.py)."""
    task_status.started()
    async with contextlib.AsyncExitStack() as stack:
        aclose = getattr(configs, "aclose", None)
        if aclose is not None:
            stack.push_async_callback(aclose)
        async for config in configs:
            if quiet_first:
                quiet_first = False
                with paused_then_frozen():
                    apply_config(component, config)
            else:
                apply_config(component, config)


def config_type_for(component: Component[Any]) -> type[ComponentConfig]:
    from mesh.registry import lookup

    try:
        return lookup(component.name).config_type
    except KeyError:
        raise ValueError(f"no config kind named {component.name!r}") from None


async def feed_from_plane(
    plane: Any,
    component: Component[Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed from an in-process :class:`~mesh.control.plane.ControlPlane`."""
    quiet = bool(getattr(plane, "tune_gc", False))  # the process's collector is the plane's
    await feed(plane.configs(component.name), component, quiet_first=quiet, task_status=task_status)


async def feed_from_control(
    url: str,
    component: Component[Any],
    *,
    config_type: type[ComponentConfig] | None = None,
    backoff: Backoff | None = None,
    idle_timeout: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed from a control plane's config stream at ``url`` (``http://HOST:PORT``)."""
    ctype = config_type or config_type_for(component)
    configs = stream_configs(url, component.name, ctype, backoff=backoff, idle_timeout=idle_timeout)
    await feed(configs, component, task_status=task_status)


# --- config files ----------------------------------------------------------------------


def load_config_file(path: Path, config_type: type[ComponentConfig]) -> ComponentConfig:
    """Read a JSON or YAML config file; raises ConfigFileError with the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc}") from exc
    return parse_config(text, path, config_type)


def _one_line(exc: Exception) -> str:
    """PyYAML's messages span lines (context, a caret drawing); keep the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.YAMLError) and problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def parse_config(text: str, path: Path, config_type: type[ComponentConfig]) -> ComponentConfig:
    try:
        if path.suffix == ".json" or text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: not valid JSON or YAML: {_one_line(exc)}") from exc
    try:
        return config_type.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise ConfigFileError(f"{path}: {where}: {first['msg']}") from exc


_RACY_NS = 2_000_000_000
_UNREAD = object()  # "no text seen yet", distinct from None (the file was unreadable)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def watch_config_file(
    path: Path, config_type: type[ComponentConfig], *, poll_interval: float = 0.25
) -> AsyncGenerator[ComponentConfig, None]:
    """The file's config now and after each change; invalid versions are logged (once per
    change) and skipped, so the consumer keeps the last good one."""
    seen: tuple[int, int, int] | None = None
    last_text: object = _UNREAD
    while True:  # one stat per round, until the consumer stops
        stamp = _stamp(path)
        # While the mtime is recent a rewrite may not change the stamp: compare the text.
        racy = stamp is not None and stamp[2] > time.time_ns() - _RACY_NS
        if stamp != seen or stamp is None or racy:
            seen = stamp
            config, last_text = _reload(path, config_type, last_text)
            if config is not None:
                yield config
        await trio.sleep(poll_interval)


def _reload(
    path: Path, config_type: type[ComponentConfig], last_text: object
) -> tuple[ComponentConfig | None, object]:
    text: str | None = None
    try:
        text = path.read_text(encoding="utf-8")
        if text == last_text:
            return None, last_text  # not changed
        config = parse_config(text, path, config_type)
    except (OSError, UnicodeDecodeError) as exc:
        if text is None and last_text is None:
            return None, None  # still unreadable: said so already
        log.error("cannot read config file", extra={"path": str(path), "error": str(exc)})
        return None, None
    except ConfigFileError as exc:
        log.error("invalid config file", extra={"path": str(path), "error": str(exc)})
        return None, text
    return config, text


async def feed_from_file(
    path: Path,
    component: Component[Any],
    *,
    config_type: type[ComponentConfig] | None = None,
    poll_interval: float = 0.25,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed from a config file of the component's kind, re-read when it changes."""
    ctype = config_type or config_type_for(component)
    configs = watch_config_file(path, ctype, poll_interval=poll_interval)
    await feed(configs, component, task_status=task_status)
