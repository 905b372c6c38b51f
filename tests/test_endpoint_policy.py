"""The shared endpoint policy: tables of endpoints -> what a consumer may use."""

from __future__ import annotations

from typing import Any

import pytest

from mesh import endpoint_policy
from mesh.endpoint_policy import PolicyEndpoint, from_slices, targets, usable
from mesh.objects import EndpointSlice


def ep(
    address: str,
    *,
    node: str | None = None,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    ports: tuple[tuple[str, int], ...] = (("http", 8080),),
) -> PolicyEndpoint:
    return PolicyEndpoint(
        address, node, ready, ready if serving is None else serving, terminating, ports
    )


A = ep("10.0.0.1", node="n1")
B = ep("10.0.0.2", node="n2")
C_NOT_READY = ep("10.0.0.3", node="n1", ready=False)
D_TERMINATING = ep("10.0.0.4", node="n1", ready=False, serving=True, terminating=True)
E_TERMINATING = ep("10.0.0.5", node="n2", ready=False, serving=True, terminating=True)
F_GONE = ep("10.0.0.6", node="n2", ready=False, serving=False, terminating=True)

USABLE = [
    ("ready ones only", [A, B, C_NOT_READY, D_TERMINATING], False, [A, B]),
    (
        "no ready: serving and terminating",
        [C_NOT_READY, D_TERMINATING, F_GONE],
        False,
        [D_TERMINATING],
    ),
    ("nothing usable", [C_NOT_READY, F_GONE], False, []),
    ("local: this node's ready ones", [A, B, D_TERMINATING], True, [A]),
    ("local: fallback within the node", [B, D_TERMINATING, E_TERMINATING], True, [D_TERMINATING]),
    ("local: none on this node", [B, E_TERMINATING], True, []),
]


@pytest.mark.parametrize(
    ("endpoints", "local", "want"), [c[1:] for c in USABLE], ids=[c[0] for c in USABLE]
)
def test_usable(endpoints: list[PolicyEndpoint], local: bool, want: list[PolicyEndpoint]) -> None:
    assert usable(endpoints, local_only=local, node_name="n1") == want


def test_local_without_a_node_name_keeps_nothing() -> None:
    assert usable([A, B], local_only=True, node_name="") == []


def test_targets_take_the_port_by_name_per_endpoint() -> None:
    web = ep("10.0.0.1", ports=(("http", 8080), ("metrics", 9090)))
    other = ep("10.0.0.2", ports=(("http", 8081),))
    not_serving_it = ep("10.0.0.3", ports=(("metrics", 9091),))
    assert targets([web, other, not_serving_it], "http") == (("10.0.0.1", 8080), ("10.0.0.2", 8081))
    assert targets([web, other, not_serving_it], "metrics") == (
        ("10.0.0.1", 9090),
        ("10.0.0.3", 9091),
    )
    # An endpoint without the port is never the ready one that blocks the fallback.
    term = ep("10.0.0.4", ready=False, serving=True, terminating=True)
    assert targets([not_serving_it, term], "http") == (("10.0.0.4", 8080),)


def slice_(
    name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]]
) -> EndpointSlice:
    return EndpointSlice.model_validate(
        {
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }
    )


def test_from_slices_merges_addresses_and_matches_ports_by_name_and_protocol() -> None:
    first = slice_(
        "web-a",
        [
            {"addresses": ["10.0.0.2"], "nodeName": "n1"},
            {"addresses": ["10.0.0.1"], "conditions": {"ready": False}},
        ],
        [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
    )
    second = slice_(
        "web-b",
        [{"addresses": ["10.0.0.2"], "conditions": {"ready": False}}],
        [{"name": "metrics", "port": 9090}, {"name": "dns", "port": 5353, "protocol": "TCP"}],
    )
    got = from_slices([("http", "TCP"), ("metrics", "TCP"), ("dns", "UDP")], [second, first])
    assert got == (
        PolicyEndpoint("10.0.0.1", None, False, False, False, (("dns", 53), ("http", 8080))),
        # Conditions from the first slice by name (web-a), ports from both.
        PolicyEndpoint(
            "10.0.0.2", "n1", True, True, False, (("dns", 53), ("http", 8080), ("metrics", 9090))
        ),
    )


def test_publish_not_ready_makes_every_endpoint_ready() -> None:
    sl = slice_(
        "web-a", [{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}], [{"port": 80}]
    )
    (one,) = from_slices([("", "TCP")], [sl], publish_not_ready=True)
    assert one.ready and one.serving and one.port("") == 80


def test_fqdn_slices_are_skipped_and_addresses_sort_numerically() -> None:
    fqdn = EndpointSlice.model_validate(
        {
            "metadata": {"name": "web-f"},
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["db.example"]}],
        }
    )
    sl = slice_(
        "web-a",
        [{"addresses": ["10.0.0.10"]}, {"addresses": ["10.0.0.9"]}],
        [{"port": 80}],
    )
    got = from_slices([("", "TCP")], [fqdn, sl])
    assert [e.address for e in got] == ["10.0.0.9", "10.0.0.10"]


def test_dns_publishes_ready_or_everyone() -> None:
    assert endpoint_policy.published(True, False)
    assert not endpoint_policy.published(False, False)
    assert endpoint_policy.published(False, True)


@pytest.mark.parametrize(
    ("family", "want"),
    [(4, ["127.0.0.1", "10.0.0.1"]), (6, ["::1", "fd00::a", "::ffff:10.0.0.2"])],
)
def test_of_family_keeps_one_family_in_order(family: int, want: list[str]) -> None:
    addresses = ["127.0.0.1", "::1", "10.0.0.1", "fd00::a", "::ffff:10.0.0.2"]
    eps = [PolicyEndpoint(a, None, True, True, False, ()) for a in addresses]
    assert [e.address for e in endpoint_policy.of_family(eps, family)] == want
    assert {endpoint_policy.family_of(a) for a in want} == {family}
