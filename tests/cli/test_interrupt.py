"""Ctrl-C at any moment of a long-running command ends it quietly: no traceback, no
"Aborted!". Before it serves, the process ends as an unhandled interrupt does (killed by
SIGINT: the shell's status 130); once it serves, it stops cleanly and exits 0.

The signal goes to the whole process group, as a terminal's Ctrl-C does (``mesh dns`` runs
worker processes that get it too)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MESH = [sys.executable, "-m", "mesh.cli"]
DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")
ANY_PORT = "127.0.0.1:0"

COMMANDS = {
    "up": ["up", "-f", DEMO, "--control-listen", ANY_PORT, "--dns-listen", ANY_PORT,
           "--admin-listen", ANY_PORT, "--gateway-listen", ANY_PORT,
           "--gateway-tls-listen", ANY_PORT, "--no-proxy", "--no-forward"],
    "control": ["control", "-f", DEMO, "--control-listen", ANY_PORT, "--admin-listen", ANY_PORT],
    "dns": ["dns", "--control", "127.0.0.1:1", "--dns-listen", ANY_PORT,
            "--admin-listen", ANY_PORT, "--no-forward", "--workers", "2"],
}  # fmt: skip

# The interpreter's own start (its streams, its site module) and the import system's search
# for the package, before any line of mesh runs, are a window no program can guard: an
# interrupt there is Python's own error. A sample that lands there tests nothing of ours and
# is taken again a little later. OURS: a frame of the project's own code (its virtualenv's
# files are not).
OURS = re.compile(rf'File "{re.escape(str(Path(__file__).resolve().parents[2]))}/(?!\.venv/)')


# What the interpreter prints when the interrupt lands in its own start. The interrupt does
# not always surface as KeyboardInterrupt there: raised inside the frozen ``io`` module while
# the site module loads, it comes out as "Fatal Python error: init_import_site" over an
# unrelated TypeError; raised while site runs a .pth file's import line, it is reported as
# "Error processing line ..." and the interpreter goes on, the interrupt lost.
PYTHON_OWN = (
    "KeyboardInterrupt",
    "Fatal Python error",
    "Could not import runpy module",
    "Error processing line",
)


def _before_mesh(stderr: str) -> bool:
    """Whether the interrupt came before the first line of mesh ran: Python's own error
    ("Fatal Python error: init_...", "Could not import runpy module", an import system
    traceback) with no frame of ours."""
    return any(mark in stderr for mark in PYTHON_OWN) and not OURS.search(stderr)


def _interrupt_at(args: list[str], delay: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [*MESH, *args, "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Still running: the interrupt was lost. That is Python's own doing when it landed
        # in the site module's .pth processing, which reports the error and goes on (the
        # caller takes another sample); anything else is a hang of ours.
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not _before_mesh(err):  # pragma: no cover - only when the test fails
            pytest.fail(f"still running 30 s after the interrupt: {err[-2000:]}")
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test fails
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("delay_ms", [0, 10, 30, 60, 150, 400, 1500])
def test_ctrl_c_at_any_moment_is_quiet(command: str, delay_ms: int) -> None:
    delay = delay_ms / 1000
    for attempt in range(30):
        done = _interrupt_at(COMMANDS[command], delay)
        if not _before_mesh(done.stderr):
            break
        # A loaded machine starts the interpreter slowly: step later, by more each time.
        delay += 0.003 * (attempt + 1)
    else:  # pragma: no cover
        pytest.fail(f"every sample landed in the interpreter's own start: {done.stderr[-1500:]}")
    assert "Traceback" not in done.stderr
    assert "Aborted!" not in done.stderr
    # Nothing but log records on stderr.
    for line in done.stderr.splitlines():
        assert isinstance(json.loads(line), dict), line
    # 0: stopped by its serving loop (or the DNS supervisor, which stops its workers).
    assert done.returncode in (0, -signal.SIGINT), (done.returncode, done.stderr[-2000:])
