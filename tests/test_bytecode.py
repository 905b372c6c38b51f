"""The byte-code .ci/setup compiles for the project's packages: every package folder gets
it, a start reads it even where the interpreter may not write byte-code, and an edited
source is never run from a stale file (checked-hash: not even with its size and mtime kept)."""

from __future__ import annotations

import compileall
import os
import py_compile
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_compiles_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = set(config["package-dir"].values())
    setup = (ROOT / ".ci" / "setup").read_text()
    line = re.search(r"compileall -q --invalidation-mode checked-hash ([^\\\n]+)", setup)
    assert line is not None
    assert set(line[1].split()) == folders


def _run(where: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-v", "-c", "import probe; print(probe.VALUE)"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def test_pyc_read_without_writing_and_never_stale(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("VALUE = 'aaa'\n")
    assert compileall.compile_file(
        str(source), quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
    )
    first = _run(tmp_path)
    assert first.stdout == "aaa\n"
    assert "probe.cpython" in first.stderr and "matches" in first.stderr  # the .pyc was used
    # An edit of the same size that keeps the mtime: a timestamp .pyc would still match.
    stat = source.stat()
    source.write_text("VALUE = 'bbb'\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    second = _run(tmp_path)
    assert second.stdout == "bbb\n"
