"""What the README shows is what the program does: its config file examples load, its error
lines are the ones printed, and it asks for root without sudo."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.config.base import ComponentConfig
from mesh.config.dns import DnsConfig
from mesh.config.proxy import ProxyConfig
from mesh.feed import parse_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MESH = [sys.executable, "-m", "mesh.cli"]


def _yaml_blocks() -> list[str]:
    """The config file examples: YAML blocks that are not Kubernetes manifests."""
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    return [b for b in blocks if not re.search(r"^apiVersion:", b, flags=re.M)]


@pytest.mark.parametrize(("index", "config_type"), [(0, DnsConfig), (1, ProxyConfig)])
def test_config_file_examples_load(index: int, config_type: type[ComponentConfig]) -> None:
    config = parse_config(_yaml_blocks()[index], Path("example.yaml"), config_type)
    assert config.services  # type: ignore[attr-defined]


def test_no_sudo() -> None:
    assert "sudo" not in README


def _readme_line(start: str) -> str:
    (line,) = [line for line in README.splitlines() if re.match(start, line)]
    return line


def test_error_lines_are_what_is_printed(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "demo", tmp_path / "manifests")
    shop = tmp_path / "manifests" / "shop.yaml"
    shop.write_text(shop.read_text().replace("port: 80\n", "port: 80000\n", 1))
    # Only the parts whose lines are checked run: the node proxy and the gateway would bind the
    # demo's addresses (ClusterIPs stable per name, the Gateway's fixed 127.11.0.10:8081), and
    # a process elsewhere on the machine holding one of them adds its own line.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*MESH, "up", "-f", "manifests", "--log-format", "text", "--log-level", "error",
             "--dns-listen", f"127.0.0.1:{port}", "--control-listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--no-proxy", "--no-gateway"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert len(out.stderr.splitlines()) == 2, out.stderr
    logged, last = out.stderr.splitlines()
    stamp = r"\d\d:\d\d:\d\d "
    shown = _readme_line(stamp + "ERROR mesh.control.source: invalid manifest")
    assert re.sub(stamp, "", logged, count=1) == re.sub(stamp, "", shown, count=1)
    startup = _readme_line("mesh: cannot start the DNS server")
    assert last == startup.replace("127.0.0.1:10053", f"127.0.0.1:{port}")
