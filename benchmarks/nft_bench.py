"""Node proxy benchmark, nftables mode, in a cluster in a box (root).

Two measurements, both inside network namespaces this script creates and removes:

- sync time: render a ProxyConfig of N Services (``--endpoints`` each) and apply it with one
  ``nft -f`` transaction in the node namespace: the first sync (table replaced), an update
  sync (one endpoint changed: incremental, only its chain and elements are rewritten) and a
  full resync (the table replaced again, as after an error and every hour), for each N in
  ``--services`` (default 1000 and 10000);
- throughput: iperf3 (one TCP stream, ``--seconds``, median of ``--repeat``) from a client pod
  to a backend pod, direct to the pod IP and through the Service's virtual IP (DNAT by our
  table), with the client and server pinned to different CPUs by taskset.

    python benchmarks/nft_bench.py [--services 1000 10000] [--endpoints 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy import cluster_box
from mesh.proxy.cluster_box import BoxPod, ClusterBox
from mesh.proxy.nft_render import RenderOptions, render
from mesh.proxy.nft_runner import SubprocessNftRunner
from mesh.proxy.nft_sync import Syncer

IPERF_PORT = 15201
VIP = "198.19.0.1"


def many_services(n: int, endpoints: int, bump: int = 0) -> ProxyConfig:
    services = []
    for i in range(n):
        eps = tuple(
            ProxyEndpoint(
                address=f"198.18.{10 + (i * endpoints + j) // 250}.{(i * endpoints + j) % 250 + 1}",
                ports={"http": 8080 + (bump if i == 0 and j == 0 else 0)},
            )
            for j in range(endpoints)
        )
        services.append(
            ProxyService(
                namespace="bench",
                name=f"svc-{i}",
                cluster_ips=(f"198.19.{100 + i // 250}.{i % 250 + 1}",),
                ports=(ProxyPort(name="http", port=80),),
                endpoints=eps,
            )
        )
    return ProxyConfig(version=1 + bump, services=tuple(services))


def bench_sync(box: ClusterBox, n: int, endpoints: int) -> dict[str, float]:
    opts = RenderOptions(pod_cidr=str(box.pod_net))
    runner = SubprocessNftRunner(box.node)
    syncer = Syncer(runner, opts)
    config = many_services(n, endpoints)
    bumped = many_services(n, endpoints, bump=1)
    t0 = time.perf_counter()
    ruleset = render(config, opts)
    render_s = time.perf_counter() - t0
    seconds = []
    for cfg, full in ((config, True), (bumped, False), (config, True)):
        t0 = time.perf_counter()
        result = syncer.sync(cfg, full=full)
        seconds.append(time.perf_counter() - t0)
        if not result.ok:
            raise RuntimeError(result.error)
    runner.apply(f"delete table ip {opts.table}\n")
    return {
        "services": n,
        "rules": ruleset.rules,
        "render_s": round(render_s, 3),
        "first_sync_s": round(seconds[0], 3),
        "update_sync_s": round(seconds[1], 3),
        "full_resync_s": round(seconds[2], 3),
    }


def iperf(box: ClusterBox, client: BoxPod, dest: str, seconds: int, cpu: int) -> float:
    argv = ["taskset", "-c", str(cpu), "iperf3", "-c", dest, "-p", str(IPERF_PORT)]
    argv += ["-t", str(seconds), "-J"]
    out = subprocess.run(
        box.exec_argv(client, argv), capture_output=True, text=True, timeout=seconds + 30
    )
    data = json.loads(out.stdout)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def bench_throughput(box: ClusterBox, seconds: int, repeat: int) -> dict[str, float]:
    server = box.add_pod("bench", "iperf-server", "198.18.1.1")
    client = box.add_pod("bench", "iperf-client", "198.18.1.2")
    svc = ProxyService(
        namespace="bench",
        name="iperf",
        cluster_ips=(VIP,),
        ports=(ProxyPort(port=IPERF_PORT),),
        endpoints=(ProxyEndpoint(address=server.ip, ports={"": IPERF_PORT}),),
    )
    syncer = Syncer(SubprocessNftRunner(box.node), RenderOptions(pod_cidr=str(box.pod_net)))
    if not syncer.sync(ProxyConfig(version=1, services=(svc,))).ok:
        raise RuntimeError("sync failed")
    argv = ["taskset", "-c", "0", "iperf3", "-s", "-B", server.ip, "-p", str(IPERF_PORT)]
    proc = box.popen(server, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        runs: dict[str, list[float]] = {"direct": [], "nftables": []}
        for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
            runs["direct"].append(iperf(box, client, server.ip, seconds, 1))
            runs["nftables"].append(iperf(box, client, VIP, seconds, 1))
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    direct = statistics.median(runs["direct"])
    nft = statistics.median(runs["nftables"])
    return {"direct_gbps": round(direct, 2), "nftables_gbps": round(nft, 2),
            "ratio": round(nft / direct, 3)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--endpoints", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for tool in ("nft", "ip", "iperf3", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        box = cluster_box.up(state_dir=state)
        try:
            for n in args.services:
                print(json.dumps({"sync": bench_sync(box, n, args.endpoints)}), flush=True)
            result = bench_throughput(box, min(args.seconds, 5), args.repeat)
            print(json.dumps({"throughput": result}), flush=True)
        finally:
            cluster_box.down(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
