"""``-f`` as kubectl takes it: a file, a directory, or several of either; files given by name
are watched as the directory source watches its files (edits applied, deletion deletes)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{port: {port}}}]}}
"""


def _service(name: str, ip: str, port: int = 80) -> str:
    return SERVICE.format(name=name, ip=ip, port=port)


def _get(control: str) -> dict[str, str]:
    """Service name -> its PORT(S) column, as mesh get prints it."""
    out = subprocess.run(
        [*MESH, "get", "svc", "-n", "shop", "--control", control],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return {row.split()[0]: row.split()[4] for row in out.stdout.splitlines()[1:]}


@pytest.fixture
def started() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop()


def _control(started: list[Proc], *sources: Path) -> str:
    args = ["control", "--control-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    for source in sources:
        args += ["-f", str(source)]
    proc = Proc(args, {"control", "admin"})
    started.append(proc)
    return proc.url("control")


def test_a_file_is_the_cluster_and_its_edits_apply(tmp_path: Path, started: list[Proc]) -> None:
    (tmp_path / "other.yaml").write_text(_service("other", "127.10.0.51"))  # not given: unread
    path = tmp_path / "cluster.manifest"  # any name, as kubectl reads a file given by name
    path.write_text(_service("web", "127.10.0.50"))
    control = _control(started, path)
    assert _get(control) == {"web": "80/TCP"}

    path.write_text(_service("web", "127.10.0.50", 8080) + "---\n" + _service("db", "127.10.0.52"))
    wait_for(lambda: _get(control) == {"web": "8080/TCP", "db": "80/TCP"}, timeout=10)

    # An editor's save: write a new file and rename it over the old one.
    tmp = tmp_path / ".cluster.manifest.swp"
    tmp.write_text(_service("db", "127.10.0.52", 5432))
    os.replace(tmp, path)
    wait_for(lambda: _get(control) == {"db": "5432/TCP"}, timeout=10)

    path.unlink()
    wait_for(lambda: _get(control) == {}, timeout=10)


def test_repeated_f_takes_files_and_directories(tmp_path: Path, started: list[Proc]) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(_service("a", "127.10.0.60"))
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "b.yaml").write_text(_service("b", "127.10.0.61"))
    control = _control(started, one, folder)
    assert _get(control) == {"a": "80/TCP", "b": "80/TCP"}

    (folder / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": '
        '"shop"}, "spec": {"clusterIP": "127.10.0.62", "ports": [{"port": 90}]}}'
    )
    one.write_text(_service("a", "127.10.0.60", 81))
    wait_for(lambda: _get(control) == {"a": "81/TCP", "b": "80/TCP", "c": "90/TCP"}, timeout=10)


@pytest.mark.parametrize(
    ("args", "last_line"),
    [
        (["-f", "/nonexistent/x.yaml"],
         "Error: Invalid value for '-f' / '--filename': Path '/nonexistent/x.yaml' does not exist."),
        ([], "Error: Missing option '-f' / '--filename'."),
    ],
)  # fmt: skip
def test_a_missing_file_is_one_sentence(args: list[str], last_line: str) -> None:
    out = subprocess.run([*MESH, "control", *args], capture_output=True, text=True, timeout=30)
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == last_line
    assert out.returncode == 2
