"""``mesh config dump dns --state`` shows the DNS server's live state, not its config again:
the config, whether the server is ready, and its counters (what its admin address serves)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from tests.test_cli_e2e import MESH, Proc, addresses, query

CONFIG = {
    "version": 7,
    "zone": "cluster.local",
    "services": [
        {"name": "web", "namespace": "shop", "kind": "ClusterIP", "cluster_ips": ["127.10.0.5"]}
    ],
}


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Proc]:
    path = tmp_path / "dns.json"
    path.write_text(json.dumps(CONFIG))
    proc = Proc(["dns", "--config", str(path), "--dns-listen", "127.0.0.1:0",
                 "--admin-listen", "127.0.0.1:0", "--workers", "1", "--no-forward"],
                {"dns", "admin"})  # fmt: skip
    yield proc
    proc.stop()


def _dump(admin: str, *args: str) -> Any:
    out = subprocess.run(
        [*MESH, "config", "dump", "dns", "--admin", admin, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_state_is_the_live_state(dns: Proc) -> None:
    name = "web.shop.svc.cluster.local"  # answered once the file is applied
    wait_for(lambda: addresses(query(dns.addresses["dns"], name)) == {"127.10.0.5"}, timeout=10)
    plain = _dump(dns.url("admin"))
    assert plain["version"] == 7 and plain["services"][0]["name"] == "web"

    state = _dump(dns.url("admin"), "--state")
    assert set(state) == {"config", "ready", "metrics"}
    assert state["config"] == plain and state["ready"] is True
    metrics = state["metrics"]
    assert metrics["mesh_dns_config_version"] == 7
    assert metrics["mesh_dns_config_applies_total"] == 1
    # the query above was answered from the zone: counted by kind of answer
    assert sum(v for k, v in metrics.items() if k.startswith("mesh_dns_request_duration")) >= 1
    assert not any(k.endswith(("_bucket", "_created")) for k in metrics)
