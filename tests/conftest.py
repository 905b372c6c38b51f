"""Shared test fixtures.

Tests that need root, a network namespace or an external program call :func:`require` and
friends. Outside CI a missing prerequisite skips the test; under ``CI=true`` it fails it, so a
CI run can never pass by skipping the kernel or real-client suites.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally; in CI the skip is turned into a failure (see below)."""
    pytest.skip(reason)


def require_tool(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            unavailable(f"{name} is not installed")


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    # Under CI=true every skip (a marker, pytest.skip, importorskip) becomes a failure, so a
    # run can never pass by skipping the kernel or real-client suites.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which forbids skips: {report.longrepr}"
    return None
