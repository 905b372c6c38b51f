"""Listeners the running gateway could not open, written into the Gateway's status: listener
Programmed False (Pending, the gateway's sentence), the Gateway's Programmed False when none
of its listeners is served (AddressNotUsable when the address is the cause); cleared when the
gateway reports them bound. The config the gateway gets keeps them (it keeps trying)."""

from __future__ import annotations

from mesh.config.gateway import ListenerFailure
from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.control.translate.gateway_served import StatusWriter
from mesh.objects import Gateway, GatewayStatus
from tests.routing.test_translate_gatewayapi import gateway, gclass, listener
from tests.routing.world import snapshot

ADDRESS = [{"type": "IPAddress", "value": "127.11.9.9"}]
TAKEN = ListenerFailure(message="cannot listen on 127.11.9.9:8080: Address already in use")
NOT_LOCAL = ListenerFailure(
    message="cannot listen on 10.9.9.9:8080: Cannot assign requested address",
    address_unusable=True,
)


def status(runtime: dict[str, ListenerFailure], *listeners: dict[str, object]) -> GatewayStatus:
    snap = snapshot(gclass(), gateway("gw", *listeners, addresses=ADDRESS))
    found = gateway_status(snap, ingress_addresses=(), runtime=runtime)
    return found.gateways[("default", "gw")]


def programmed(st: GatewayStatus) -> tuple[tuple[str, str, str], dict[str, tuple[str, str, str]]]:
    def of(conds: tuple[object, ...]) -> tuple[str, str, str]:
        (c,) = [c for c in conds if getattr(c, "type", "") == "Programmed"]
        return (c.status, c.reason, c.message)  # type: ignore[attr-defined]

    return of(st.conditions), {x.name: of(x.conditions) for x in st.listeners}


def test_nothing_reported_everything_programmed() -> None:
    gw, lis = programmed(status({}, listener("http", 8080), listener("other", 8081)))
    assert gw == ("True", "Programmed", "")
    assert lis == {"http": ("True", "Programmed", ""), "other": ("True", "Programmed", "")}


def test_one_listener_taken_the_other_served() -> None:
    runtime = {"gateway/default/gw/8080": TAKEN}
    gw, lis = programmed(status(runtime, listener("http", 8080), listener("other", 8081)))
    assert gw == ("True", "Programmed", "")  # one listener still serves
    assert lis["http"] == ("False", "Pending", TAKEN.message)
    assert lis["other"] == ("True", "Programmed", "")


def test_every_listener_failed_the_gateway_is_not_programmed() -> None:
    runtime = {"gateway/default/gw/8080": TAKEN}
    gw, lis = programmed(status(runtime, listener("http", 8080)))
    assert gw == ("False", "Pending", TAKEN.message)
    assert lis["http"] == ("False", "Pending", TAKEN.message)
    runtime = {"gateway/default/gw/8080": NOT_LOCAL}
    gw, _ = programmed(status(runtime, listener("http", 8080)))
    assert gw == ("False", "AddressNotUsable", NOT_LOCAL.message)


def test_two_listeners_on_one_port_share_the_failure() -> None:
    runtime = {"gateway/default/gw/8080": TAKEN}
    _, lis = programmed(
        status(
            runtime,
            listener("a", 8080, hostname="a.example.com"),
            listener("b", 8080, hostname="b.example.com"),
        )
    )
    assert lis == {
        "a": ("False", "Pending", TAKEN.message),
        "b": ("False", "Pending", TAKEN.message),
    }


def test_an_invalid_listener_keeps_its_own_reason() -> None:
    runtime = {"gateway/default/gw/80": TAKEN}
    _, lis = programmed(status(runtime, listener("low", 80), listener("http", 8080)))
    assert lis["low"] == ("False", "Invalid", "")  # PortUnavailable in Accepted says why


def test_the_config_keeps_a_failed_listener() -> None:
    snap = snapshot(gclass(), gateway("gw", listener("http", 8080), addresses=ADDRESS))
    assert [lis.name for lis in translate_gateway(snap).listeners][-1] == "gateway/default/gw/8080"


def test_the_status_writer_follows_the_reports() -> None:
    snap = snapshot(gclass(), gateway("gw", listener("http", 8080), addresses=ADDRESS))
    writer = StatusWriter(ingress_addresses=(), gateway_cidr="127.11.0.0/16")
    # Before any gateway reports, nothing is Programmed: the config is valid, not served.
    (waiting,) = [u for u in writer(snap) if isinstance(u, Gateway)]
    gw, lis = programmed(waiting.status)
    assert gw == lis["http"] == ("False", "Pending", "waiting for a gateway to take the config")
    assert [c.status for c in waiting.status.conditions if c.type == "Accepted"] == ["True"]
    assert writer.report({}) is True  # a gateway took the config
    assert writer.report({}) is False  # nothing new
    assert writer.report({}, live=False) is True  # it went away
    assert writer.report({"gateway/default/gw/8080": TAKEN}) is True
    assert writer.report({"gateway/default/gw/8080": TAKEN}) is False
    (written,) = [u for u in writer(snap) if isinstance(u, Gateway)]
    _, lis = programmed(written.status)
    assert lis["http"][:2] == ("False", "Pending")
    assert writer.report({}) is True  # bound now: the status is cleared
    snap2 = snapshot(gclass(), written)
    (cleared,) = [u for u in writer(snap2) if isinstance(u, Gateway)]
    _, lis = programmed(cleared.status)
    assert lis["http"] == ("True", "Programmed", "")
