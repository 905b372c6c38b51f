"""lastTransitionTime on the status the control plane writes (carry_transitions, pure): the
time a condition last changed status, kept while it does not, so that an unchanged status is
an unchanged object."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.control.translate.conditions import carry_transitions
from mesh.objects import Gateway, HTTPRoute

T0, NOW = "2026-01-01T00:00:00Z", "2026-01-02T03:04:05Z"


def cond(type_: str, status: str, when: str = "", reason: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason or type_, "lastTransitionTime": when}


def gateway(
    conditions: list[dict[str, Any]], listeners: dict[str, list[dict[str, Any]]]
) -> Gateway:
    return Gateway.model_validate(
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"gatewayClassName": "mesh", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
            "status": {
                "conditions": conditions,
                "listeners": [{"name": n, "conditions": c} for n, c in listeners.items()],
            },
        }
    )  # fmt: skip


def times(gw: Gateway) -> dict[str, str]:
    out = {c.type: c.last_transition_time for c in gw.status.conditions}
    for lis in gw.status.listeners:
        out |= {f"{lis.name}/{c.type}": c.last_transition_time for c in lis.conditions}
    return out


OLD = gateway(
    [cond("Accepted", "True", T0), cond("Programmed", "True", T0)],
    {"http": [cond("Programmed", "True", T0)]},
)


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        # Unchanged: every time kept.
        (
            gateway([cond("Accepted", "True"), cond("Programmed", "True")],
                    {"http": [cond("Programmed", "True")]}),
            {"Accepted": T0, "Programmed": T0, "http/Programmed": T0},
        ),
        # A flipped status is a transition; a new reason or message with the same status is not.
        (
            gateway([cond("Accepted", "True", reason="Other"), cond("Programmed", "False")],
                    {"http": [cond("Programmed", "False")]}),
            {"Accepted": T0, "Programmed": NOW, "http/Programmed": NOW},
        ),
        # A condition or a listener not there before starts now; a time the writer set stays.
        (
            gateway([cond("Accepted", "True"), cond("Programmed", "True"),
                     cond("ResolvedRefs", "True")],
                    {"http": [cond("Programmed", "True")],
                     "https": [cond("Programmed", "True", "2025-05-05T05:05:05Z")]}),
            {"Accepted": T0, "Programmed": T0, "ResolvedRefs": NOW, "http/Programmed": T0,
             "https/Programmed": "2025-05-05T05:05:05Z"},
        ),
    ],
)  # fmt: skip
def test_times_are_carried_while_the_status_stays(new: Gateway, expected: dict[str, str]) -> None:
    assert times(carry_transitions(OLD, new, NOW)) == expected


def test_an_unchanged_status_gives_an_equal_object_and_a_new_object_times_now() -> None:
    unchanged = gateway(
        [cond("Accepted", "True"), cond("Programmed", "True")],
        {"http": [cond("Programmed", "True")]},
    )
    assert carry_transitions(OLD, unchanged, NOW) == OLD  # the store sees no change
    assert set(times(carry_transitions(None, unchanged, NOW)).values()) == {NOW}


def test_route_parents_are_matched_by_their_reference() -> None:
    def route(parents: list[tuple[str, str, str]]) -> HTTPRoute:
        return HTTPRoute.model_validate(
            {
                "metadata": {"name": "r", "namespace": "default"},
                "spec": {"parentRefs": [{"name": p} for p, _, _ in parents]},
                "status": {
                    "parents": [
                        {"parentRef": {"name": p}, "controllerName": "mesh.dev/gateway",
                         "conditions": [cond("Accepted", status, when)]}
                        for p, status, when in parents
                    ]
                },
            }
        )  # fmt: skip

    old = route([("a", "True", T0), ("b", "False", T0)])
    # Listed the other way round: each parent keeps its own time (b flipped: now).
    new = carry_transitions(old, route([("b", "True", ""), ("a", "True", "")]), NOW)
    got = {p.parent_ref.name: p.conditions[0].last_transition_time for p in new.status.parents}
    assert got == {"a": T0, "b": NOW}
