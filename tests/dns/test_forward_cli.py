"""The forwarding flags of ``mesh dns``: validated with the flag named, and in effect in a
real process answering dig through a fake upstream."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from tests.conftest import require_tool
from tests.dns.cases import CLUSTER
from tests.dns.fake_upstream import FakeUpstream
from tests.test_cli_e2e import MESH, Proc


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--upstream-policy", "fastest", "Invalid value for '--upstream-policy'"),
        ("--max-fails", "-1", "Invalid value for '--max-fails'"),
        ("--health-check", "soon", "Invalid value for '--health-check'"),
        ("--max-forwards", "0", "Invalid value for '--max-forwards'"),
        ("--forward-cache-size", "-5", "Invalid value for '--forward-cache-size'"),
        ("--serve-stale", "-1", "Invalid value for '--serve-stale'"),
    ],
)
@pytest.mark.parametrize("command", ["dns", "up"])
def test_bad_forwarding_flags_are_one_sentence(
    tmp_path: Path, command: str, flag: str, value: str, message: str
) -> None:
    config = tmp_path / "dns.json"
    config.write_text(CLUSTER.model_dump_json())
    source = ["--config", str(config)] if command == "dns" else ["-f", str(tmp_path)]
    out = subprocess.run(
        [*MESH, command, *source, flag, value], capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


async def test_mesh_dns_forwards_with_its_flags(upstream: FakeUpstream, tmp_path: Path) -> None:
    require_tool("dig")
    config = tmp_path / "dns.json"
    config.write_text(CLUSTER.model_dump_json())
    args = ["dns", "--config", str(config), "--dns-listen", "127.0.0.1:0"]
    args += ["--admin-listen", "127.0.0.1:0", "--upstream", f"{upstream.host}:{upstream.port}"]
    args += ["--upstream", "127.0.0.1:9", "--upstream-policy", "sequential", "--max-fails", "1"]
    args += ["--serve-stale", "60", "--max-forwards", "8", "--forward-cache-size", "100"]
    args += ["--workers", "1"]  # one cache: every worker process has its own
    proc = await trio.to_thread.run_sync(lambda: Proc(args, {"dns"}))
    try:
        host, port = proc.addresses["dns"]

        def dig(name: str) -> str:
            cmd = ["dig", "+short", "+time=5", "+tries=1", "-p", str(port), f"@{host}", name]
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        for _ in range(2):  # the second from the cache
            out = await trio.to_thread.run_sync(dig, "ext.shop.svc.cluster.local.")
            assert out.split() == ["example.com.", "192.0.2.1"]
        assert upstream.asked("example.com.") == ["udp"]  # sequential: the first upstream
    finally:
        await trio.to_thread.run_sync(proc.stop)
