"""Helpers for kernel tests: who-servers and one-shot clients run inside pod namespaces.

Each helper is a small Python program started with ``ip netns exec`` (a subprocess whose PID
the test keeps and ends); the box's teardown also ends anything left in its namespaces.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Sequence

from mesh.proxy.cluster_box import BoxPod, ClusterBox

REJECT = "reject"

# Serves TCP and UDP on ip:port for every port given: answers "ip:port" (its identity).
WHO = r"""
import selectors, socket, sys
ip = sys.argv[1]
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[2:]):
    t = socket.socket(fam); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, port)); t.listen(128); sel.register(t, selectors.EVENT_READ, ("t", port))
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((ip, port))
    sel.register(u, selectors.EVENT_READ, ("u", port))
print("ready", flush=True)
while True:
    for key, _ in sel.select(timeout=60):
        kind, port = key.data
        me = f"{ip}:{port}".encode()
        if kind == "t":
            conn, _ = key.fileobj.accept()
            try:
                conn.sendall(me + b"\n")
            finally:
                conn.close()
        else:
            data, peer = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(me, peer)
"""

# One flow: prints the identity that answered, or "reject".
ASK = r"""
import socket, sys
dest, port, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    if proto == "TCP":
        s = socket.create_connection((dest, port), timeout=timeout)
        print(s.makefile().readline().strip() or "reject")
    else:
        fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.connect((dest, port)); s.send(b"hi"); print(s.recv(2048).decode())
except OSError:
    print("reject")
"""


def unique_prefix() -> str:
    return f"mesh-test-{secrets.token_hex(3)}"


def start_who(
    box: ClusterBox, pod: str | BoxPod, ip: str, ports: Sequence[int]
) -> subprocess.Popen[str]:
    proc = box.popen(
        pod,
        [sys.executable, "-c", WHO, ip, *map(str, ports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the server prints once bound, or exits
    if line.strip() != "ready":
        stop([proc])
        raise RuntimeError(f"who server on {ip} did not start")
    return proc


def ask(
    box: ClusterBox, pod: str | BoxPod, dest: str, port: int, proto: str, timeout: float = 1.0
) -> str:
    argv = [sys.executable, "-c", ASK, dest, str(port), proto, str(timeout)]
    out = subprocess.run(
        box.exec_argv(pod, argv), capture_output=True, text=True, timeout=timeout + 10
    )
    return out.stdout.strip() or REJECT


def stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 3
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def nft(box: ClusterBox, *args: str) -> str:
    out = subprocess.run(box.node_argv(["nft", *args]), capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr
