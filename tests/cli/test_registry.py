"""Adding a component is one registration: the plane translates its kind, a feed finds its
config type, the CLI offers its command and messages use its title."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from mesh import registry
from mesh.config.base import ComponentConfig
from mesh.control.plane import ControlPlane, default_translators
from mesh.feed import config_type_for
from mesh.registry import PlaneSettings, Registration


class EchoConfig(ComponentConfig):
    services: int = 0
    node: str = ""


def _translator(settings: PlaneSettings) -> Any:
    def translate(snap: Any) -> EchoConfig:
        return EchoConfig(services=len(snap.list("Service")), node=settings.node_name)

    return translate


@click.command("echo")
def echo_command() -> None:
    """Run the echo component alone."""
    click.echo("echo runs")


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Registration:
    reg = Registration("echo", "echo server", EchoConfig, _translator, echo_command)
    registry.registrations()  # the built-in ones first
    monkeypatch.setitem(registry._REGISTRY, "echo", reg)
    return reg


def test_builtin_components() -> None:
    assert [(r.name, r.title) for r in registry.registrations()] == [
        ("dns", "DNS server"),
        ("ingress", "ingress gateway"),
        ("proxy", "node proxy"),
    ]
    assert set(default_translators()) == {"dns", "ingress", "proxy"}


def test_one_registration_reaches_every_place(echo: Registration) -> None:
    assert set(default_translators()) == {"dns", "echo", "ingress", "proxy"}
    plane = ControlPlane(node_name="node-7")
    plane.translate(plane.store.snapshot())
    assert plane.current("echo") == EchoConfig(node="node-7", version=0)

    class Component:
        name = "echo"

    assert config_type_for(Component()) is EchoConfig  # type: ignore[arg-type]
    assert registry.title("echo") == "echo server"
    with pytest.raises(ValueError, match="registered already"):
        registry.register(echo)


def test_cli_offers_registered_commands(echo: Registration) -> None:
    from mesh.cli import main

    listed = CliRunner().invoke(main, ["--help"]).output
    commands = listed.split("Commands:")[1].split()
    assert {"dns", "echo", "proxy", "up", "get"} <= set(commands)
    assert CliRunner().invoke(main, ["echo"]).output == "echo runs\n"


def test_unknown_component() -> None:
    with pytest.raises(KeyError, match="no component named 'nope'"):
        registry.lookup("nope")
