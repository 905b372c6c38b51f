"""The control plane at cluster scale: start-up, memory and edit latency for N Services.

For each N (default 1,000, 5,000 and 10,000) this script writes one manifest of N Services,
each selecting 3 ready Pods (all in one namespace, the worst case for selector matching),
then runs ``mesh up --no-proxy`` on it and prints:

- ready: seconds from starting the process to ``/ready`` answering 200 (interpreter start,
  imports, parsing, admission, the endpoints controller, translation, the DNS index), and
  the CPU seconds the process used until then (steadier on a shared machine), with those
  of the child that parses the manifest's documents ahead on the second core apart;
- rss: resident memory of that process once ready (VmRSS);
- edit: seconds from rewriting the manifest with one more Service to the first DNS answer
  for it (median of ``--edits``), i.e. the file watch, the re-read of the big file, one
  parse, one store write, the controller, the translators and the DNS server's swap.

With ``--stages`` it also prints the CPU seconds of each start-up stage inside one process
(the file read with parsing and validation, the store writes, the first full endpoints plan,
the first translation, the DNS indexes), then times one edit stage by stage (median of
``--edits``): the file read (stat, read, digest, the comparison with its last text and
the parse of the changed document), then the store writes, the endpoints controller, the
translators, the DNS index update from the previous index, and for a split deployment the
config stream's delta (made against the version before, applied onto the remote server's own
copy) and that server's index update (the full snapshot's encoding and decoding, which only
a new subscriber pays now, is shown for comparison), and the node proxy's service table
update from the previous table. With ``--nft`` (root) it also feeds the nftables node proxy through the whole pipeline and
times its syncs. With ``--split`` it also runs ``mesh control`` alone and ``mesh dns --control`` fed by it,
and prints the resident memory of each once ready (the issue's per-component budgets) and the
edit latency through the config stream (file edit to the changed DNS answer, as above).
Growth matters more than any single figure: start should be close to linear in N and an edit
flat. Figures on a shared machine are noisy; compare runs made side by side.

    python benchmarks/scale_bench.py [--services 1000 5000 10000] [--edits 5] [--split]
        [--stages] [--nft]
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dnslib import QTYPE, DNSRecord

HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
PODS_PER_SERVICE = 3


def service_doc(name: str) -> str:
    return (
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n"
        f"spec:\n  selector: {{app: {name}}}\n"
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n"
    )


def pod_doc(service: str, j: int, k: int) -> str:
    ip = f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
    return (
        f"---\napiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {service}-{j}, namespace: bench, labels: {{app: {service}}}}}\n"
        "spec: {containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}\n"
        f'status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}\n'
    )


def manifest(n: int, extra: int = 0) -> str:
    """N Services with 3 Pods each, then ``extra`` more Services (the edits)."""
    parts = []
    for i in range(n):
        name = f"svc-{i}"
        parts.append(service_doc(name))
        for j in range(PODS_PER_SERVICE):
            parts.append(pod_doc(name, j, 1 + i * PODS_PER_SERVICE + j))
    parts.extend(service_doc(f"probe-{e}") for e in range(extra))
    return "".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The direct children of a process (``mesh dns`` runs its workers as children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime + stime of a process (steadier than wall time on a shared machine), and of its
    reaped children (those that work ahead at start, mesh/ahead.py)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    return own, (int(fields[13]) + int(fields[14])) / TICKS


def wait_ready(proc: subprocess.Popen[bytes], admin: int, timeout: float) -> float:
    """Seconds until the admin server's /ready answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            last = err.splitlines()[-1] if err else ""
            raise SystemExit(f"the process exited with status {proc.returncode}: {last}")
        url = f"http://{HOST}:{admin}/ready"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return time.monotonic() - start
        time.sleep(0.02)
    raise SystemExit(f"not ready within {timeout:.0f} s")


def answers(port: int, name: str) -> bool:
    query = DNSRecord.question(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(query.pack(), (HOST, port))
        try:
            reply = DNSRecord.parse(s.recv(4096))
        except OSError:
            return False
    return any(rr.rtype == QTYPE.A for rr in reply.rr)


def edit_latency(path: Path, n: int, e: int, dns_port: int, timeout: float = 30.0) -> float:
    """Rewrite the manifest with Service probe-e added; seconds until DNS answers for it."""
    name = f"probe-{e}.bench.svc.cluster.local"
    text = manifest(n, e + 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    start = time.monotonic()
    tmp.rename(path)  # atomic, as editors and ConfigMap mounts replace files
    while time.monotonic() - start < timeout:
        if answers(dns_port, name):
            return time.monotonic() - start
        time.sleep(0.002)
    raise SystemExit(f"{name} not answered within {timeout:.0f} s")


@contextlib.contextmanager
def running(args: list[str], log_level: str = "warning") -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "mesh.cli", *args, "--log-level", log_level]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_up(n: int, edits: int, workdir: Path) -> None:
    path = workdir / "all.yaml"
    path.write_text(manifest(n))
    dns, admin, control = free_port(), free_port(), free_port()
    args = ["up", "--no-proxy", "-f", str(workdir), "--no-forward"]
    args += ["--dns-listen", f"{HOST}:{dns}", "--admin-listen", f"{HOST}:{admin}"]
    args += ["--control-listen", f"{HOST}:{control}"]
    with running(args) as proc:
        ready = wait_ready(proc, admin, timeout=60 + n / 20)
        cpu, child_cpu = cpu_seconds(proc.pid)
        rss = rss_mb(proc.pid)
        lat = [edit_latency(path, n, e, dns) for e in range(edits)]
    print(
        f"N={n:>6}  pods={n * PODS_PER_SERVICE:>6}  ready {ready:6.2f} s "
        f"(cpu {cpu:5.2f} s + {child_cpu:4.2f} s in a child)  "
        f"rss {rss:6.0f} MB  "
        f"edit->DNS median {statistics.median(lat) * 1000:6.0f} ms "
        f"(min {min(lat) * 1000:.0f}, max {max(lat) * 1000:.0f})",
        flush=True,
    )


# The start of ``mesh up`` as its own log tells it (JSON lines with a UTC timestamp): each
# event's first line, and what the time until the next one is spent on.
TIMELINE = [
    ("manifest loaded", "imports, reading, parsing (a child helps), validation"),
    ("endpoint slices reconciled", "store writes (admission, indexes), the endpoints plan"),
    ("control plane started", "status writers, the config stream server"),
    ("config published", "the DNS config's first translation"),
    ("config applied", "the DNS server's indexes"),
]


def run_timeline(n: int, workdir: Path) -> None:
    """Seconds from starting ``mesh up --no-proxy`` to each event of its start, then to
    ready, and the process's CPU seconds (a wall clock on a shared machine is noisy)."""
    import json
    import threading

    path = workdir / "all.yaml"
    path.write_text(manifest(n))
    dns, admin, control = free_port(), free_port(), free_port()
    args = ["up", "--no-proxy", "-f", str(workdir), "--no-forward", "--log-format", "json"]
    args += ["--dns-listen", f"{HOST}:{dns}", "--admin-listen", f"{HOST}:{admin}"]
    args += ["--control-listen", f"{HOST}:{control}"]
    seen: dict[str, float] = {}
    wall_start = time.time()

    def read(stream: Any) -> None:
        for line in stream:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = rec.get("msg", "")
            if msg in seen or (msg == "config published" and rec.get("kind") != "dns"):
                continue
            if msg == "config applied" and rec.get("component") != "dns":
                continue
            stamp = time.strptime(rec["ts"][:19], "%Y-%m-%dT%H:%M:%S")
            secs = calendar.timegm(stamp) + int(rec["ts"][20:23]) / 1000
            seen[msg] = secs - wall_start

    with running(args, log_level="info") as proc:
        reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
        reader.start()
        ready = wait_ready(proc, admin, timeout=60 + n / 20)
        cpu, child_cpu = cpu_seconds(proc.pid)
    parts = []
    last = 0.0
    for event, what in TIMELINE:
        at = seen.get(event)
        if at is None:
            continue
        parts.append(f"{at:5.2f} {event} (+{at - last:.2f}: {what})")
        last = at
    parts.append(f"{ready:5.2f} ready (+{ready - last:.2f})")
    print(
        f"N={n:>6}  mesh up timeline (s from start; log stamps have ms resolution): "
        + "; ".join(parts)
        + f"  [cpu {cpu:.2f} s + {child_cpu:.2f} s in a child]",
        flush=True,
    )


def run_split(n: int, edits: int, workdir: Path) -> None:
    path = workdir / "all.yaml"
    path.write_text(manifest(n))
    control, admin_c, dns, admin_d = free_port(), free_port(), free_port(), free_port()
    plane = ["control", "-f", str(workdir), "--control-listen", f"{HOST}:{control}"]
    plane += ["--admin-listen", f"{HOST}:{admin_c}"]
    with running(plane) as cproc:
        ready_c = wait_ready(cproc, admin_c, timeout=60 + n / 20)
        dns_args = ["dns", "--control", f"http://{HOST}:{control}", "--no-forward"]
        dns_args += ["--dns-listen", f"{HOST}:{dns}", "--admin-listen", f"{HOST}:{admin_d}"]
        with running(dns_args) as dproc:
            ready_d = wait_ready(dproc, admin_d, timeout=60 + n / 50)
            objects = n * (1 + PODS_PER_SERVICE)
            budget = 2 * (objects / 1000 + 54)
            # Each worker of ``mesh dns`` holds the whole index: the rule is per worker (the
            # supervisor, which holds none, is shown beside it).
            rss_c, rss_s = rss_mb(cproc.pid), rss_mb(dproc.pid)
            workers = [rss_mb(pid) for pid in children(dproc.pid)]
            rss_d = max(workers, default=rss_s)
            lat = [edit_latency(path, n, e, dns) for e in range(edits)]
            print(
                f"N={n:>6}  mesh control: ready {ready_c:6.2f} s, rss {rss_c:6.0f} MB"
                f"  |  mesh dns: ready {ready_d:5.2f} s after, rss {rss_d:5.0f} MB a worker"
                f" ({len(workers)} workers, supervisor {rss_s:.0f} MB;"
                f" budget 2x CoreDNS rule {budget:.0f} MB)  |  edit->DNS (split) median "
                f"{statistics.median(lat) * 1000:.0f} ms (min {min(lat) * 1000:.0f}, "
                f"max {max(lat) * 1000:.0f})",
                flush=True,
            )


def run_stages(n: int, edits: int, workdir: Path) -> None:
    from mesh.config import delta
    from mesh.config.dns import DnsConfig
    from mesh.config.proxy import ProxyConfig
    from mesh.control.plane import ControlPlane
    from mesh.dns.fast_index import FastIndex
    from mesh.dns.zone import ZoneIndex
    from mesh.proxy.table import ServiceTable
    from mesh.run import GC_YOUNG_THRESHOLD

    path = workdir / "all.yaml"
    path.write_text(manifest(n))
    # The kinds this process feeds (the DNS indexes, the proxy table), wanted from the start
    # as a ``mesh up`` component's are; ``mesh up --no-proxy`` above never builds the proxy's.
    plane = ControlPlane(workdir, service_cidr="10.96.0.0/12", wanted=["dns", "proxy"])
    source = plane.source
    assert source is not None
    gc.disable()  # as the plane's start does
    children = os.times()
    start = [time.process_time()]
    changes = source._read_changes()
    start.append(time.process_time())
    source._apply_changes(changes)
    start.append(time.process_time())
    plane.reconcile_endpoints()
    start.append(time.process_time())
    plane.translate(plane.store.snapshot())
    start.append(time.process_time())
    config = plane.current("dns")
    assert isinstance(config, DnsConfig)
    index = ZoneIndex.build(config)
    fast = FastIndex(index)
    start.append(time.process_time())
    after = os.times()
    child_cpu = after.children_user + after.children_system
    child_cpu -= children.children_user + children.children_system
    # The split deployment's DNS server: its own decoded copy, its own indexes.
    remote = DnsConfig.model_validate_json(plane.encoded(config))
    remote_fast = FastIndex(remote_index := ZoneIndex.build(remote))
    # The node proxy's service table (userspace mode), fed in process.
    proxy_config = plane.current("proxy")
    assert isinstance(proxy_config, ProxyConfig)
    proxy_table = ServiceTable.build(proxy_config)
    gc.freeze()
    names = ["read+parse+validate", "store", "endpoints", "translate", "dns index"]
    cpu = ", ".join(f"{k} {b - a:.2f}" for k, a, b in zip(names, start, start[1:], strict=False))
    print(
        f"N={n:>6}  start in process (CPU s): {cpu}; total {start[-1] - start[0]:.2f} "
        f"(+ {child_cpu:.2f} in the child that parses ahead)",
        flush=True,
    )
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    gc.enable()
    stages: dict[str, list[float]] = {}
    for e in range(edits):
        path.write_text(manifest(n, e + 1))
        marks = [time.perf_counter()]
        before = plane.store.revision
        changes = source._read_changes()
        marks.append(time.perf_counter())
        source._apply_changes(changes)
        marks.append(time.perf_counter())
        plane.reconcile_endpoints(plane._affected_since(before))
        marks.append(time.perf_counter())
        plane.translate(plane.store.snapshot(), plane._events_since(before))
        marks.append(time.perf_counter())
        prior, config = config, plane.current("dns")
        assert isinstance(config, DnsConfig)
        index = ZoneIndex.build(config, index)
        fast = FastIndex(index, previous=fast)
        marks.append(time.perf_counter())
        decoded = DnsConfig.model_validate_json(plane.encoded(config))
        marks.append(time.perf_counter())
        doc = delta.diff(prior, config)
        assert doc is not None
        remote = delta.decode_delta(remote, delta.encode(doc))
        marks.append(time.perf_counter())
        remote_index = ZoneIndex.build(remote, remote_index)
        remote_fast = FastIndex(remote_index, previous=remote_fast)
        marks.append(time.perf_counter())
        assert remote == decoded
        marks.append(time.perf_counter())  # the check above is not timed
        proxy_config = plane.current("proxy")
        assert isinstance(proxy_config, ProxyConfig)
        proxy_table = ServiceTable.build(proxy_config, proxy_table)
        marks.append(time.perf_counter())
        names = [
            "read",
            "store",
            "endpoints",
            "translate",
            "dns index",
            "full encode+decode",
            "delta encode+apply",
            "dns index (remote)",
            "",
            "proxy table",
        ]
        for name, a, b in zip(names, marks, marks[1:], strict=False):
            if name:
                stages.setdefault(name, []).append(b - a)
    med = {k: statistics.median(v) * 1000 for k, v in stages.items()}
    after = sum(med[k] for k in ("store", "endpoints", "translate", "dns index"))
    split = med["delta encode+apply"] + med["dns index (remote)"] - med["dns index"]
    detail = ", ".join(f"{k} {v:.0f}" for k, v in med.items())
    print(
        f"N={n:>6}  one edit in process (ms, median): file read {med['read']:.0f}; after the read "
        f"{after:.0f} in one process, {after + split:.0f} split  [{detail}]",
        flush=True,
    )
    gc.unfreeze()


def run_nft(n: int, workdir: Path) -> None:
    """The nftables sync of N Services fed through the whole pipeline (root): manifests ->
    source -> store -> endpoints controller -> proxy translator -> render -> ``nft -f`` in
    a node namespace this script creates and removes."""
    from mesh.config.proxy import ProxyConfig
    from mesh.control.plane import ControlPlane
    from mesh.objects import Pod
    from mesh.proxy import cluster_box
    from mesh.proxy.nft_render import RenderOptions
    from mesh.proxy.nft_runner import SubprocessNftRunner
    from mesh.proxy.nft_sync import Syncer, SyncResult
    from mesh.run import GC_YOUNG_THRESHOLD

    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)  # as the serving processes do
    (workdir / "all.yaml").write_text(manifest(n))
    plane = ControlPlane(
        workdir, service_cidr="198.19.0.0/16", node_name="node-1", wanted=["proxy"]
    )
    assert plane.source is not None
    t0 = time.perf_counter()
    plane.source.sync_once()
    plane.reconcile_endpoints()
    plane.translate(plane.store.snapshot())
    pipeline = time.perf_counter() - t0
    gc.freeze()  # as the plane does after its start
    first = plane.current("proxy")
    # One Pod turns not ready: the controller and the translator redo only its Service.
    before = plane.store.revision
    pod = plane.store.get("Pod", "bench", "svc-0-0")
    assert isinstance(pod, Pod)
    status = pod.status.model_copy(update={"phase": "Pending"})
    t0 = time.perf_counter()
    plane.apply(pod.model_copy(update={"status": status}))
    plane.reconcile_endpoints(plane._affected_since(before))
    plane.translate(plane.store.snapshot(), plane._events_since(before))
    edit = time.perf_counter() - t0
    second = plane.current("proxy")
    state = workdir / "box"
    box = cluster_box.up(prefix=f"scale{os.getpid() % 1000}", state_dir=state)
    try:
        syncer = Syncer(SubprocessNftRunner(box.node), RenderOptions(pod_cidr=str(box.pod_net)))
        results = []
        # The first sync (a render from nothing, the table replaced), the Pod not ready, ready
        # again (each an update: only that Service's chain and elements go to nft), the
        # same config again (it deletes what the update before retired), and a full resync.
        for config, full in (
            (first, True), (second, False), (first, False), (first, False), (first, True),
        ):  # fmt: skip
            assert isinstance(config, ProxyConfig)
            before = os.times()
            result = syncer.sync(config, full=full)
            after = os.times()
            if not result.ok:
                raise SystemExit(f"nft sync failed: {result.error}")
            # CPU seconds too (steadier on a shared machine): this process's, and nft's.
            own = max(0.0, after.user + after.system - before.user - before.system)
            nft = after.children_user + after.children_system
            nft -= before.children_user + before.children_system
            results.append((result, own, nft))
    finally:
        cluster_box.down(state)

    def shown(r: tuple[SyncResult, float, float]) -> str:
        result, own, nft = r
        return (
            f"{result.seconds * 1000:.0f} ms (render {result.render_seconds * 1000:.0f} + "
            f"nft {result.apply_seconds * 1000:.0f}; cpu {own * 1000:.0f} + {nft * 1000:.0f})"
        )

    print(
        f"N={n:>6}  nftables via the pipeline: load+plan+translate {pipeline:5.2f} s; "
        f"first sync {shown(results[0])}; one Pod not ready: plane {edit * 1000:.0f} ms + "
        f"sync {shown(results[1])}; ready again: sync {shown(results[2])}; "
        f"unchanged: sync {shown(results[3])}; full resync {shown(results[4])}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--split", action="store_true", help="also mesh control + mesh dns")
    parser.add_argument("--stages", action="store_true", help="also one edit stage by stage")
    parser.add_argument("--nft", action="store_true", help="also the nftables sync (root)")
    parser.add_argument(
        "--timeline", action="store_true", help="also the start of mesh up, event by event"
    )
    opts = parser.parse_args()
    for n in opts.services:
        with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
            run_up(n, opts.edits, Path(tmp))
        if opts.timeline:
            with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
                run_timeline(n, Path(tmp))
        if opts.split:
            with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
                run_split(n, opts.edits, Path(tmp))
        if opts.stages:
            with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
                run_stages(n, opts.edits, Path(tmp))
        if opts.nft:
            with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
                run_nft(n, Path(tmp))


if __name__ == "__main__":
    main()
