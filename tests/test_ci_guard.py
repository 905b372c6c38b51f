"""The CI guard itself: under CI=true a skipped test is reported as failed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_skip_fails_under_ci(tmp_path: Path) -> None:
    conftest = Path(__file__).with_name("conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_skips():
                pytest.skip("no tool")
            """
        )
    )
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    ci = subprocess.run(base, capture_output=True, text=True, env={"CI": "true", "PATH": ""})
    local = subprocess.run(base, capture_output=True, text=True, env={"CI": "", "PATH": ""})
    assert ci.returncode == 1, ci.stdout
    assert "1 failed" in ci.stdout
    assert local.returncode == 0, local.stdout
    assert "1 skipped" in local.stdout
