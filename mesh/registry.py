"""The component registry: adding a data-plane component is one :func:`register` call.

A registration names everything the rest of the program needs to know about a component:

- ``name``: its config kind on the config stream, its CLI command (``mesh NAME``), the
  ``component.name`` it reports and its ``/config/NAME`` admin page;
- ``title``: how messages call it ("cannot start the DNS server on ...");
- ``config_type``: the pydantic model of its config (config files, the stream client);
- ``translator``: builds the pure function ``Snapshot -> config`` from the control plane's
  settings (the plane runs one per registered kind);
- ``command``: the click command that runs it alone;
- ``status`` (optional): builds ``Snapshot -> objects`` whose status the plane writes back.

The built-in components register in :mod:`mesh.components`, imported on first use, so this
module stays import-light and free of cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept out of the import path of mesh get and mesh --version
    import click

    from mesh.config.base import ComponentConfig

BUILTIN = "mesh.components"


@dataclass(frozen=True, slots=True)
class PlaneSettings:
    """What translators may depend on besides the snapshot."""

    node_name: str = ""
    zone: str = "cluster.local"
    ttl: int = 5
    pod_mode: str = "insecure"
    gateway_cidr: str = "127.11.0.0/16"  # Gateway addresses not pinned by spec.addresses
    ingress_addresses: tuple[str, ...] = ("127.0.0.1",)  # Ingress status.loadBalancer
    privileged: bool = False  # may bind ports below 1024


Translator = Callable[[Any], "ComponentConfig"]  # Snapshot -> config
StatusWriter = Callable[[Any], list[Any]]  # Snapshot -> objects whose status is to be written


@dataclass(frozen=True, slots=True)
class Registration:
    name: str
    title: str
    config_type: type[ComponentConfig]
    translator: Callable[[PlaneSettings], Translator]
    command: click.Command | None = None
    # The status this component's objects get from the control plane (Ingress addresses,
    # Gateway API conditions): the plane writes back what this returns after each translation.
    status: Callable[[PlaneSettings], StatusWriter] | None = None


_REGISTRY: dict[str, Registration] = {}


def register(registration: Registration) -> Registration:
    if registration.name in _REGISTRY:
        raise ValueError(f"a component named {registration.name!r} is registered already")
    _REGISTRY[registration.name] = registration
    return registration


def registrations() -> list[Registration]:
    """Every registered component, the built-in ones included, by name."""
    importlib.import_module(BUILTIN)
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def lookup(name: str) -> Registration:
    """The registration of ``name``; KeyError naming the known ones otherwise."""
    importlib.import_module(BUILTIN)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"no component named {name!r} (known: {known})") from None


def title(name: str) -> str:
    importlib.import_module(BUILTIN)
    reg = _REGISTRY.get(name)
    return reg.title if reg is not None else name
