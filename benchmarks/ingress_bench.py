"""The whole ingress gateway (``mesh ingress``: routing plan, filters, metrics, forward) against
nginx as a reverse proxy, in front of the same upstream, with wrk; one core each.

gateway_bench.py measures the engine alone (a fixed decision); this measures what a request
costs through the component users run: the route lookup and plan of a compiled GatewayConfig,
a header filter each way, the per-request metrics, then the engine. Same method and caveats as
gateway_bench.py (req/s moves with the machine's other load; CPU per request much less).

The engine remembers what it made of a request or response head it saw before (wrk sends
the same head every time; so do pollers and many API clients): ``--vary-head`` gives every
request a head of its own, the cost when nothing repeats.

    python benchmarks/ingress_bench.py [--seconds 5] [--connections 32] [--rounds 1]
        [--vary-head]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import (
    TARGETS,
    UPSTREAM,
    nginx_proxy_conf,
    upstream_conf,
    vary_head_script,
    wrk,
)
from proxy_bench import Processes, pinned, wait_listening

GATEWAY = ("127.0.0.74", 18180)


def gateway_config(path: Path) -> Path:
    from mesh.config.gateway import (
        GatewayBackend,
        GatewayEndpoint,
        GatewayListener,
        HeaderEdits,
        Match,
        PathMatch,
        Policy,
        Route,
        ServedGatewayConfig,
        WeightedBackend,
    )

    name = "bench/upstream:80"
    config = ServedGatewayConfig(
        version=1,
        listeners=(GatewayListener(name="ingress-http", wildcard="one-label"),),
        routes=(
            Route(
                name="ingress/bench/web",
                listeners=("ingress-http",),
                matches=(Match(path=PathMatch(kind="Prefix", value="/")),),
                policy=Policy(
                    request_headers=HeaderEdits(set=(("x-bench", "1"),)),
                    response_headers=HeaderEdits(add=(("x-served-by", "mesh"),)),
                ),
                backends=(WeightedBackend(backend=name),),
            ),
        ),
        backends=(
            GatewayBackend(
                name=name, endpoints=(GatewayEndpoint(ip=UPSTREAM[0], port=UPSTREAM[1]),)
            ),
        ),
    )
    path.write_text(config.model_dump_json())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--backend-cpu", type=int, default=1)
    parser.add_argument(
        "--vary-head",
        action="store_true",
        help="every request head differs (an X-N field): nothing remembered of repeated heads",
    )
    args = parser.parse_args()
    targets = {"gateway": GATEWAY, "nginx": TARGETS["nginx"]}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ingress-bench-") as tmp:
        d = Path(tmp)
        procs = Processes(d)
        try:
            p, b = args.proxy_cpu, args.backend_cpu
            procs.start("upstream", pinned(b, "nginx", "-c", str(upstream_conf(d)), "-e", "stderr"))
            wait_listening(*UPSTREAM)
            nginx = ["nginx", "-c", str(nginx_proxy_conf(d)), "-e", "stderr"]
            gateway = [
                sys.executable, "-m", "mesh.cli", "ingress",
                "--config", str(gateway_config(d / "gateway.json")),
                "--gateway-listen", "{}:{}".format(*GATEWAY),
                "--gateway-tls-listen", "127.0.0.74:0",
                "--admin-listen", "127.0.0.74:0", "--log-level", "warning",
            ]  # fmt: skip
            pids = {
                "nginx": procs.start("nginx", pinned(p, *nginx)).pid,
                "gateway": procs.start("gateway", pinned(p, *gateway)).pid,
            }
            for addr in targets.values():
                wait_listening(*addr)
            for _ in range(args.rounds):
                for name, addr in targets.items():
                    for mode, close in (("keepalive", False), ("new-conn", True)):
                        row = wrk(
                            b, addr, args.seconds, close, args.connections, pids[name],
                            script=vary_head_script(d) if args.vary_head else None,
                        )  # fmt: skip
                        results.setdefault((name, mode), []).append(row)
        finally:
            procs.stop_all()
    print(f"{'proxy':<10}{'mode':<11}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")
    for mode in ("keepalive", "new-conn"):
        for name in targets:
            rows = results[(name, mode)]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(
                f"{name:<10}{mode:<11}{med['rps']:>10.0f}{med['p50_ms']:>9.2f}"
                f"{med['p99_ms']:>9.2f}{med['cpu_us']:>12.1f}"
            )


if __name__ == "__main__":
    main()
