"""What a user reading the terminal sees when ``mesh up`` starts: the start's log lines, then
one title line and the table of addresses together (each row ``NAME HOST:PORT``), not rows
scattered among the log lines."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.test_cli_e2e import EXAMPLES, MESH, listen_anywhere

ROW = re.compile(r"^([\w-]+) +(\S+):(\d+)$")


def test_mesh_up_prints_its_addresses_together_after_the_start_logs(tmp_path: Path) -> None:
    args = ["up", "-f", str(EXAMPLES), "--no-proxy", "--upstream", "127.0.0.1:9",
            "--log-format", "text", *listen_anywhere()]  # fmt: skip
    # stdout and stderr into one pipe, as both go to one terminal
    proc = subprocess.Popen(
        [*MESH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while not (lines and lines[-1].startswith("admin ")):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stdout.readline().rstrip("\n"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    title = lines.index("mesh up is ready, listening on:")
    rows = [ROW.match(line) for line in lines[title + 1 :]]
    assert all(rows), lines[title:]
    names = [m.group(1) for m in rows if m]
    assert names == ["control", "dns", "gateway", "gateway-tls", "admin"]
    # every column starts at the same place
    assert (
        len({line.index(m.group(2)) for line, m in zip(lines[title + 1 :], rows, strict=True) if m})
        == 1
    )
    # the rows are not among the start's log lines: those all came before the title
    assert not any(ROW.match(line) for line in lines[:title])
    assert any("listening" in line and "server=admin" in line for line in lines[:title])
    assert lines[title - 1] == ""  # set apart by a blank line
