"""Local routes for IPv6 service ranges, in a network namespace the test creates (root): the
proxy's routes carry its own protocol number, so a route a killed run left is adopted and
removed by the next one, and a route someone else added is never removed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from mesh.proxy import netns
from mesh.proxy.local_routes import RTPROT_MESH, LocalRoutes
from tests.scratch_netns import in_namespace, scratch_namespace

RANGE = "fd00:96::/112"


@pytest.fixture
def namespace() -> Iterator[str]:
    with scratch_namespace("ip") as name:
        yield name


def ip(ns: str, *args: str) -> str:
    argv = netns.exec_argv(ns, ["ip", *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def local_route(ns: str) -> str:
    """The local-table line for RANGE ("" when there is none)."""
    lines = ip(ns, "-6", "route", "show", "table", "local").splitlines()
    return next((line for line in lines if line.startswith(f"local {RANGE} ")), "")


def test_a_route_left_by_a_killed_run_is_adopted_and_removed(namespace: str) -> None:
    killed = LocalRoutes([RANGE], privileged=True)
    in_namespace(namespace, killed.install)  # and never removed: what SIGKILL leaves
    assert f"proto {RTPROT_MESH}" in local_route(namespace)

    next_run = LocalRoutes([RANGE], privileged=True)
    in_namespace(namespace, next_run.install)
    assert next_run.added == [RANGE]
    assert next_run.routes("fd00:96::7")
    in_namespace(namespace, next_run.remove)
    assert local_route(namespace) == ""


def test_a_route_of_someone_else_is_used_but_never_removed(namespace: str) -> None:
    ip(
        namespace,
        "-6",
        "route",
        "add",
        "local",
        RANGE,
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        "static",
    )
    theirs = local_route(namespace)
    assert "proto static" in theirs
    routes = LocalRoutes([RANGE], privileged=True)
    in_namespace(namespace, routes.install)
    assert routes.added == []
    assert routes.routes("fd00:96::7")  # usable all the same
    in_namespace(namespace, routes.remove)
    assert local_route(namespace) == theirs


def test_a_route_of_ours_for_a_wider_range_is_not_mistaken_for_this_one(namespace: str) -> None:
    wider = LocalRoutes(["fd00:96::/64"], privileged=True)
    in_namespace(namespace, wider.install)
    routes = LocalRoutes([RANGE], privileged=True)
    in_namespace(namespace, routes.install)
    assert routes.added == [RANGE]  # its own route, beside the wider one
    in_namespace(namespace, routes.remove)
    assert local_route(namespace) == ""
    assert "fd00:96::/64" in ip(namespace, "-6", "route", "show", "table", "local")
