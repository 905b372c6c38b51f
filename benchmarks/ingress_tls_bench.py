"""TLS termination through the whole ingress gateway (``mesh ingress`` on its
``--gateway-tls-listen``) against nginx (``listen ... ssl``) and HAProxy (``bind ... ssl crt``),
in front of the same upstream, with the same certificate; each proxy alone on one core.

The certificate (EC P-256 by default, as the gateway's generated one; ``--key rsa`` for RSA
2048) is generated at run time into a temporary directory. The gateway gets it as a
kubernetes.io/tls Secret in its config, named for the host ``localhost`` as an Ingress
``spec.tls`` entry would; nginx and HAProxy read the same PEM files. TLS 1.2 and 1.3 are
allowed everywhere, cipher suites are each server's defaults, and every client here
negotiates TLS 1.3 (a check before the run prints what was agreed, whether the bench
certificate was served and whether a session resumes). Session resumption: the gateway and
HAProxy keep their defaults (an in-process cache and tickets); nginx gets ingress-nginx's
defaults, ``ssl_session_cache shared:SSL:10m``, ``ssl_session_timeout 10m``,
``ssl_session_tickets off`` (TLS 1.3 resumption then goes through the server cache).

Modes, each measured against the same processes:

- ``https keepalive``: wrk over kept-alive connections (the record layer's cost);
- ``https new-conn``: wrk with ``Connection: close``. wrk keeps its OpenSSL object across
  reconnects (``SSL_clear``), so the session stays and every reconnect offers it: these are
  resumed handshakes (TLS 1.3 PSK with a fresh X25519 exchange, no certificate signature),
  not full ones. The client spends about as much CPU per handshake as the proxy, so on two
  cores wrk, not the proxy, bounds this req/s: the proxy's CPU per request is the figure;
- ``https full-hs``: full handshakes, each on a new connection with one GET, from 8 client
  threads of this process that keep no session; the client is the bound here too (it costs
  about what the server does), the proxy's CPU per connection is the figure;
- with ``--plain``, keepalive and new-conn over plain HTTP on the same processes, and what TLS
  adds to each proxy's CPU per request.

Figures as gateway_bench.py: req/s and p50/p99 from wrk, the proxy's CPU time per request
from /proc (steadier than req/s on a shared machine), both as ratios to nginx.

    python benchmarks/ingress_tls_bench.py [--seconds 5] [--connections 32] [--rounds 1]
        [--key ec|rsa] [--plain] [--targets gateway,nginx,haproxy]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import UPSTREAM, cpu_seconds, haproxy_conf, nginx_proxy_conf, upstream_conf, wrk
from ingress_bench import gateway_config
from proxy_bench import Processes, pinned, wait_listening

PLAIN_PORT = 18180
HOSTS = {"gateway": "127.0.0.76", "nginx": "127.0.0.77", "haproxy": "127.0.0.78"}  # plain HTTP
# TLS: on 127.0.0.1 so that wrk can be given the name "localhost", which it sends as SNI (it
# sends the URL's host, an IP literal otherwise, and the gateway, as ingress-nginx, serves a
# Secret's certificate only to the names it covers, its generated default to the rest).
SNI = "localhost"
TLS_PORTS = {"gateway": 18443, "nginx": 18444, "haproxy": 18445}
SECRET = "bench/bench-tls"
MODES = (("keepalive", False), ("new-conn", True))
HS_CLIENTS = 8  # concurrent connections of the full-handshake client


def certificate(d: Path, key_type: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key as PEM files (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNI)]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_gateway_config(d: Path, cert: Path, key: Path) -> Path:
    """ingress_bench's config plus the ``ingress-https`` listener serving the Secret."""
    from mesh.config.gateway import (
        CertificateRef,
        GatewayListener,
        ServedGatewayConfig,
        TlsSecret,
    )

    base = ServedGatewayConfig.model_validate_json(gateway_config(d / "plain.json").read_text())
    https = GatewayListener(
        name="ingress-https",
        protocol="HTTPS",
        wildcard="one-label",
        certificates=(CertificateRef(secret=SECRET, hosts=(SNI,)),),  # as an Ingress spec.tls
    )
    routes = tuple(
        r.model_copy(update={"listeners": (*r.listeners, https.name)}) for r in base.routes
    )
    secret = TlsSecret(name=SECRET, cert_pem=cert.read_text(), key_pem=key.read_text())
    config = base.model_copy(
        update={"listeners": (*base.listeners, https), "routes": routes, "secrets": (secret,)}
    )
    path = d / "gateway-tls.json"
    path.write_text(config.model_dump_json())
    return path


def nginx_tls_conf(d: Path, cert: Path, key: Path) -> Path:
    host = HOSTS["nginx"]
    return nginx_proxy_conf(
        d,
        listen=f"""listen {host}:{PLAIN_PORT} backlog=4096;
        listen 127.0.0.1:{TLS_PORTS["nginx"]} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 10m;
        ssl_session_tickets off;""",
    )


def haproxy_tls_conf(d: Path, cert: Path, key: Path) -> Path:
    host = HOSTS["haproxy"]
    # HAProxy reads the key from the crt file itself, or from <crt>.key beside it.
    (d / "cert.pem.key").write_bytes(key.read_bytes())
    return haproxy_conf(
        d,
        bind=f"bind {host}:{PLAIN_PORT}\n"
        f"    bind 127.0.0.1:{TLS_PORTS['haproxy']} ssl crt {cert} alpn http/1.1 ssl-min-ver TLSv1.2",
    )


def tls_check(port: int, cert: Path) -> str:
    """What a TLS client gets on ``port``: version, cipher, whether the certificate is the
    bench's and whether a second connection resumes the first one's session."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    session = None
    reused = False
    for _ in range(2):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=SNI, session=session) as tls,
        ):
            served = tls.getpeercert(binary_form=True)
            version, cipher = tls.version(), (tls.cipher() or ("?",))[0]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):  # read to the end: TLS 1.3 tickets come after the handshake
                pass
            reused = bool(tls.session_reused)
            session = tls.session
    ours = ssl.PEM_cert_to_DER_cert(cert.read_text()) == served
    return (
        f"{version} {cipher}, {'the bench certificate' if ours else 'ANOTHER certificate'}, "
        f"session {'resumed' if reused else 'NOT resumed'}"
    )


def full_handshakes(cpu: int, port: int, seconds: int, pid: int) -> dict[str, float]:
    """Full handshakes, each on a new connection with one GET, from HS_CLIENTS threads of this
    process (moved onto ``cpu`` meanwhile; OpenSSL runs without the GIL). No session is kept,
    so every handshake is a full one (openssl s_time -new would do the same, but sends no
    SNI). The client side costs about as much CPU as the server side, so the rate is the
    client's; the server's CPU per connection is the figure."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + seconds

    def client() -> list[float]:
        took: list[float] = []
        while time.monotonic() < deadline and len(took) < 1_000_000:
            begin = time.monotonic()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=SNI) as tls,  # no session: a full handshake
            ):
                tls.sendall(request)
                while tls.recv(65536):
                    pass
            took.append(time.monotonic() - begin)
        return took

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        used, begin = cpu_seconds(pid), time.monotonic()
        with ThreadPoolExecutor(HS_CLIENTS) as pool:
            runs = [pool.submit(client) for _ in range(HS_CLIENTS)]
            took = sorted(t for run in runs for t in run.result())
        used, wall = cpu_seconds(pid) - used, time.monotonic() - begin
    finally:
        os.sched_setaffinity(0, affinity)
    if not took:
        raise RuntimeError(f"no TLS connection completed on port {port}")
    return {
        "rps": len(took) / wall,
        "p50_ms": took[len(took) // 2] * 1e3,
        "p99_ms": took[len(took) * 99 // 100] * 1e3,
        "cpu_us": used / len(took) * 1e6,
    }


def start(args: argparse.Namespace, d: Path, procs: Processes) -> dict[str, int]:
    p, b = args.proxy_cpu, args.backend_cpu
    cert, key = certificate(d, args.key)
    procs.start("upstream", pinned(b, "nginx", "-c", str(upstream_conf(d)), "-e", "stderr"))
    wait_listening(*UPSTREAM)
    pids: dict[str, int] = {}
    if "nginx" in args.targets:
        cmd = ["nginx", "-c", str(nginx_tls_conf(d, cert, key)), "-e", "stderr"]
        pids["nginx"] = procs.start("nginx", pinned(p, *cmd)).pid
    if "haproxy" in args.targets:
        cmd = ["haproxy", "-f", str(haproxy_tls_conf(d, cert, key))]
        pids["haproxy"] = procs.start("haproxy", pinned(p, *cmd)).pid
    if "gateway" in args.targets:
        host = HOSTS["gateway"]
        gateway = [
            sys.executable, "-m", "mesh.cli", "ingress",
            "--config", str(tls_gateway_config(d, cert, key)),
            "--gateway-listen", f"{host}:{PLAIN_PORT}",
            "--gateway-tls-listen", f"127.0.0.1:{TLS_PORTS['gateway']}",
            "--admin-listen", f"{host}:0", "--log-level", "warning",
        ]  # fmt: skip
        pids["gateway"] = procs.start("gateway", pinned(p, *gateway)).pid
    for name in args.targets:
        wait_listening(HOSTS[name], PLAIN_PORT)
        wait_listening("127.0.0.1", TLS_PORTS[name])
    # A server that could not bind (another run holds the address) has exited by now, and
    # wait_listening may have found the other run's: measure nothing then.
    for name, proc in procs.procs:
        if proc.poll() is not None:
            log = (d / f"{name}.log").read_text()[-2000:]
            sys.exit(f"{name} exited (is another benchmark using its address?):\n{log}")
    for name in args.targets:
        print(f"{name:<8} {tls_check(TLS_PORTS[name], cert)}", flush=True)
    return pids


def measure(
    args: argparse.Namespace, pids: dict[str, int]
) -> dict[tuple[str, str], list[dict[str, float]]]:
    b = args.backend_cpu
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    schemes = ("https", "http") if args.plain else ("https",)
    for _ in range(args.rounds):
        for name in args.targets:
            for scheme in schemes:
                addr = (SNI, TLS_PORTS[name]) if scheme == "https" else (HOSTS[name], PLAIN_PORT)
                for mode, close in MODES:
                    row = wrk(b, addr, args.seconds, close, args.connections, pids[name], scheme)
                    results.setdefault((name, f"{scheme} {mode}"), []).append(row)
            row = full_handshakes(b, TLS_PORTS[name], args.seconds, pids[name])
            results.setdefault((name, "https full-hs"), []).append(row)
    return results


def report(
    args: argparse.Namespace, results: dict[tuple[str, str], list[dict[str, float]]]
) -> None:
    med = {
        key: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for key, rows in results.items()
    }
    print(
        f"\n{'proxy':<9}{'mode':<16}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'vs nginx':>10}"
        f"{'CPU us/req':>12}{'CPU vs nginx':>14}"
    )
    modes = ["https keepalive", "https new-conn", "https full-hs"]
    if args.plain:
        modes += ["http keepalive", "http new-conn"]
    for mode in modes:
        base = med.get(("nginx", mode))
        for name in args.targets:
            row = med[(name, mode)]
            ratio = f"{row['rps'] / base['rps']:.2f}x" if base else "-"
            # nginx's CPU per request over ours: the req/s ratio each would reach alone on a core
            cpu_ratio = f"{base['cpu_us'] / row['cpu_us']:.2f}x" if base else "-"
            print(
                f"{name:<9}{mode:<16}{row['rps']:>9.0f}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
                f"{ratio:>10}{row['cpu_us']:>12.1f}{cpu_ratio:>14}"
            )
    if args.plain:
        print("\nCPU us per request that TLS adds (https minus http, same process):")
        for name in args.targets:
            added = [
                med[(name, f"https {m}")]["cpu_us"] - med[(name, f"http {m}")]["cpu_us"]
                for m, _ in MODES
            ]
            print(f"  {name:<9} keepalive {added[0]:8.1f}   new-conn (resumed) {added[1]:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--key", choices=("ec", "rsa"), default="ec", help="P-256 or RSA 2048")
    parser.add_argument("--plain", action="store_true", help="also plain HTTP, for the TLS cost")
    parser.add_argument("--targets", default="gateway,nginx,haproxy")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--backend-cpu", type=int, default=1)
    args = parser.parse_args()
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(HOSTS)
    if unknown:
        sys.exit(f"unknown target {', '.join(sorted(unknown))}; known: {', '.join(HOSTS)}")
    for tool in ("taskset", "wrk", "nginx", "haproxy", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk nginx-light haproxy openssl)")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory(prefix="ingress-tls-bench-") as tmp:
        d = Path(tmp)
        procs = Processes(d)
        try:
            pids = start(args, d, procs)
            results = measure(args, pids)
        finally:
            procs.stop_all()
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    report(args, results)


if __name__ == "__main__":
    main()
