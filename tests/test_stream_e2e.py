"""Deltas on the config stream between real processes on loopback: ``mesh control`` feeding
``mesh dns``, and ``mesh dns`` fed by a control plane that sends a delta onto a version it
does not hold."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from mesh.config import delta
from mesh.config.dns import DnsConfig, DnsPort, DnsService
from tests.polling import wait_for
from tests.test_cli_e2e import FIXED, Proc, addresses, http_get, query

NAME = "fixed.shop.svc.cluster.local"


def stream_lines(admin: str) -> dict[str, float]:
    """The control plane's config stream lines sent for kind dns, by form."""
    status, body = http_get(admin + "/metrics")
    assert status == 200
    out = {"full": 0.0, "delta": 0.0}
    for line in body.decode().splitlines():
        if line.startswith("mesh_control_stream_sent_total{") and 'kind="dns"' in line:
            form = line.split('form="', 1)[1].split('"', 1)[0]
            out[form] = float(line.rsplit(" ", 1)[1])
    return out


def dns_proc(control_url: str) -> Proc:
    return Proc(
        [
            "dns",
            "--workers",
            "1",
            "--control",
            control_url,
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-forward",
        ],
        {"dns", "admin"},
    )


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "fixed.yaml").write_text(FIXED)
    args = ["control", "-f", str(manifests), "--control-listen", "127.0.0.1:0"]
    proc = Proc([*args, "--admin-listen", "127.0.0.1:0"], {"control", "admin"})
    yield proc, manifests
    proc.stop()


def set_ip(manifests: Path, ip: str) -> None:
    path = manifests / "fixed.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(FIXED.replace("127.10.0.20", ip))
    tmp.rename(path)


def test_edits_travel_as_deltas_and_a_late_subscriber_starts_whole(
    control: tuple[Proc, Path],
) -> None:
    plane, manifests = control
    admin = plane.url("admin")
    first = dns_proc(plane.url("control"))
    late: Proc | None = None
    try:
        wait_for(lambda: addresses(query(first.addresses["dns"], NAME)) == {"127.10.0.20"})
        assert stream_lines(admin) == {"full": 1, "delta": 0}
        set_ip(manifests, "127.10.0.33")
        wait_for(lambda: addresses(query(first.addresses["dns"], NAME)) == {"127.10.0.33"})
        after_edit = stream_lines(admin)
        assert after_edit["full"] == 1 and after_edit["delta"] >= 1
        late = dns_proc(plane.url("control"))
        wait_for(lambda: addresses(query(late.addresses["dns"], NAME)) == {"127.10.0.33"})
        assert stream_lines(admin)["full"] == 2  # the late subscriber's first line
        set_ip(manifests, "127.10.0.34")
        for proc in (first, late):
            server = proc.addresses["dns"]
            wait_for(lambda: addresses(query(server, NAME)) == {"127.10.0.34"})  # noqa: B023
        final = stream_lines(admin)
        assert final["full"] == 2 and final["delta"] >= after_edit["delta"] + 2
    finally:
        first.stop()
        if late is not None:
            late.stop()


def config(version: int, ip: str, *extra: str) -> DnsConfig:
    services = [
        DnsService(
            namespace="shop",
            name=name,
            kind="ClusterIP",
            cluster_ips=(ip if name == "fixed" else "127.10.0.99",),
            ports=(DnsPort(name="http", port=80),),
        )
        for name in ("fixed", *extra)
    ]
    return DnsConfig(version=version, services=tuple(services), namespaces=("shop",))


def delta_line(base: DnsConfig, new: DnsConfig) -> bytes:
    doc = delta.diff(base, new)
    assert doc is not None
    return delta.encode(doc)


class FakePlane(socketserver.ThreadingTCPServer):
    """A control plane that answers each watch with a scripted list of lines, one list per
    connection; an Event in the list means: wait until it is set."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: list[list[bytes | threading.Event]]) -> None:
        super().__init__(("127.0.0.1", 0), _Watch)
        self.script = script
        self.targets: list[str] = []
        self.stopping = threading.Event()


class _Watch(socketserver.StreamRequestHandler):
    server: FakePlane

    def handle(self) -> None:
        target = self.rfile.readline().decode().split(" ")[1]
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # the request's head
        plane = self.server
        plane.targets.append(target)
        lines = plane.script[min(len(plane.targets), len(plane.script)) - 1]
        self.wfile.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for line in lines:
            if isinstance(line, threading.Event):
                line.wait(10)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        plane.stopping.wait(30)  # hold the stream open, as a watch does


def test_a_delta_onto_a_version_the_component_lacks_leads_to_a_full_resync() -> None:
    v1, v2 = config(1, "127.10.0.20"), config(2, "127.10.0.21")
    # A version the component never got, and a delta from it that adds a name: it would fit
    # v2's shape, only the base version tells it apart.
    v3, v4 = config(3, "127.10.0.23"), config(4, "127.10.0.23", "wrong")
    v5 = config(5, "127.10.0.25")
    deltas, resync = threading.Event(), threading.Event()
    fake = FakePlane(
        [
            [v1.model_dump_json().encode() + b"\n", deltas, delta_line(v1, v2), delta_line(v3, v4)],
            [resync, v5.model_dump_json().encode() + b"\n"],
        ]
    )
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    proc = dns_proc(f"http://127.0.0.1:{fake.server_address[1]}")
    server = proc.addresses["dns"]
    try:
        wait_for(lambda: addresses(query(server, NAME)) == {"127.10.0.20"})
        deltas.set()  # the good delta, then the one from v3
        wait_for(lambda: addresses(query(server, NAME)) == {"127.10.0.21"})
        wait_for(lambda: len(fake.targets) == 2)  # it reconnected...
        time.sleep(0.2)
        # ... and until the full snapshot comes it serves v2, not v2 with v3's delta.
        assert addresses(query(server, NAME)) == {"127.10.0.21"}
        assert query(server, "wrong.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        resync.set()
        wait_for(lambda: addresses(query(server, NAME)) == {"127.10.0.25"})
        assert fake.targets == ["/v1/watch/dns?deltas=1"] * 2
    finally:
        proc.stop()
        deltas.set()
        resync.set()
        fake.stopping.set()
        fake.shutdown()
        fake.server_close()
