"""--service-cidr and --pod-cidr: one range or two of different families, validated where the
flag is parsed (usage error naming the flag, exit status 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mesh.cidrs import parse_cidrs

MESH = [sys.executable, "-m", "mesh.cli"]

# (value, what the message says)
BAD = [
    ("garbage", "'garbage' is not a CIDR range"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not a CIDR range"),
    ("", "at least one"),
    ("10.96.0.0/31", "range 10.96.0.0/31 is too small"),
    ("fd00::/127", "range fd00::/127 is too small"),
    ("10.96.0.0/16,fd00::/112,10.97.0.0/16", "at most two"),
    ("10.96.0.0/16,10.97.0.0/16", "two IPv4"),
    ("fd00:1::/112,fd00:2::/112", "two IPv6"),
    ("10.96.0.0/16,", "'' is not a CIDR range"),
]

# Commands and flags: parsing stops at the bad value, before anything starts.
FLAGS = [
    (["up", "-f", "."], "--service-cidr"),
    (["control", "-f", "."], "--service-cidr"),
    (["up", "-f", "."], "--pod-cidr"),
]


@pytest.mark.parametrize(("value", "message"), BAD, ids=[v or "empty" for v, _ in BAD])
@pytest.mark.parametrize(("command", "flag"), FLAGS, ids=[f"{c[0]} {f}" for c, f in FLAGS])
def test_bad_values_are_usage_errors(
    command: list[str], flag: str, value: str, message: str
) -> None:
    proc = subprocess.run(
        [*MESH, *command, flag, value], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{flag}'" in proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_pod_range_needs_ipv4() -> None:
    proc = subprocess.run(
        [*MESH, "up", "-f", ".", "--pod-cidr", "fd00:18::/64"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Invalid value for '--pod-cidr'" in proc.stderr
    assert "an IPv4 pod range is required" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("value", "canonical", "versions"),
    [
        ("127.96.0.0/16", "127.96.0.0/16", [4]),
        ("127.96.0.0/16,fd00:96::/112", "127.96.0.0/16,fd00:96::/112", [4, 6]),
        ("fd00:96::/112, 127.96.0.0/16", "fd00:96::/112,127.96.0.0/16", [6, 4]),  # v6 primary
        ("127.96.0.1/16", "127.96.0.0/16", [4]),  # host bits dropped, as the API server does
    ],
)
def test_good_values_keep_their_order(value: str, canonical: str, versions: list[int]) -> None:
    ranges = parse_cidrs(value)
    assert list(ranges) == versions
    assert ",".join(map(str, ranges.values())) == canonical


def test_help_names_dual_stack() -> None:
    proc = subprocess.run([*MESH, "up", "--help"], capture_output=True, text=True, timeout=30)
    assert "IPv6 range" in proc.stdout
