"""The userspace proxy with real sockets on loopback: relay semantics, UDP sessions, config
swaps, churn under load, rejects, bind errors, and a real client."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import trio

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.httpserve import Request, Response
from mesh.proxy.userspace import UserspaceProxy
from tests.conftest import require_tool
from tests.proxy.servers import (
    REJECT,
    ask_tcp,
    ask_udp,
    connect_from,
    eventually,
    read_line,
    tcp_sink,
    tcp_who,
    udp_who,
)

PORT = 10080
CLIENT = "127.0.0.21"


def service(
    name: str, vip: str, *endpoints: str, protocol: Literal["TCP", "UDP"] = "TCP", **kw: Any
) -> ProxyService:
    eps = tuple(
        ProxyEndpoint(address=a.split(":")[0], ports={"": int(a.split(":")[1])}) for a in endpoints
    )
    return ProxyService(
        namespace="default",
        name=name,
        cluster_ips=(vip,),
        ports=(ProxyPort(port=PORT, protocol=protocol),),
        endpoints=eps,
        **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(*services: ProxyService, version: int = 1) -> ProxyConfig:
    return ProxyConfig(version=version, services=services)


async def start(
    nursery: trio.Nursery, cfg: ProxyConfig, *, ready: bool = True, **kw: Any
) -> UserspaceProxy:
    proxy = UserspaceProxy(**kw)
    proxy.apply(cfg)
    await nursery.start(proxy.run)
    assert proxy.ready is ready
    return proxy


def sample(proxy: UserspaceProxy, name: str, **labels: str) -> float:
    value = proxy.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def recv_all(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while chunk := await sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- TCP relay -------------------------------------------------------------------------------


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
async def test_half_close_both_ways(nursery: trio.Nursery, splice: bool) -> None:
    got: list[bytes] = []
    done = trio.Event()

    async def banner_then_read(conn: trio.socket.SocketType) -> None:
        with conn:
            await conn.send(b"banner")
            conn.shutdown(socket.SHUT_WR)  # the server is done talking, not listening
            got.append(await recv_all(conn))
            done.set()

    async def read_then_reply(conn: trio.socket.SocketType) -> None:
        with conn:
            request = await recv_all(conn)  # until the client's EOF
            await conn.send(b"reply to " + request)

    await nursery.start(tcp_sink, "127.0.2.1", 28080, banner_then_read)
    await nursery.start(tcp_sink, "127.0.2.2", 28080, read_then_reply)
    cfg = config(
        service("banner", "127.10.1.1", "127.0.2.1:28080"),
        service("reply", "127.10.1.2", "127.0.2.2:28080"),
    )
    await start(nursery, cfg, splice=splice)

    sock = await connect_from(CLIENT, ("127.10.1.1", PORT))
    with sock:
        assert await recv_all(sock) == b"banner"  # server's EOF reached the client
        await sock.send(b"after the server's EOF")
        sock.shutdown(socket.SHUT_WR)
        with trio.fail_after(10):
            await done.wait()
    assert got == [b"after the server's EOF"]

    sock = await connect_from(CLIENT, ("127.10.1.2", PORT))
    with sock:
        await sock.send(b"question")
        sock.shutdown(socket.SHUT_WR)  # client's EOF reaches the server, the reply still comes
        assert await recv_all(sock) == b"reply to question"


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
async def test_large_transfer_integrity(nursery: trio.Nursery, splice: bool) -> None:
    await nursery.start(tcp_who, "127.0.2.3", 28080)
    proxy = await start(
        nursery, config(service("bulk", "127.10.1.3", "127.0.2.3:28080")), splice=splice
    )
    payload = random.Random(7).randbytes(24 * 1024 * 1024)
    sock = await connect_from(CLIENT, ("127.10.1.3", PORT))
    received = hashlib.sha256()
    count = 0
    with sock, trio.fail_after(60):
        assert await read_line(sock) == b"127.0.2.3:28080\n"

        async def send() -> None:
            view = memoryview(payload)
            while view:
                view = view[await sock.send(view[: 1 << 20]) :]
            sock.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            while chunk := await sock.recv(1 << 20):
                received.update(chunk)
                count += len(chunk)
    assert count == len(payload)
    assert received.digest() == hashlib.sha256(payload).digest()
    assert sample(proxy, "mesh_proxy_bytes_total", direction="to_endpoint") == len(payload)


@pytest.mark.parametrize("size", [100, 60_000, 3 * 65536 + 7])
async def test_reply_then_close_reaches_a_slow_client_whole(
    nursery: trio.Nursery, size: int
) -> None:
    """A reply and the FIN right behind it (sent together when the reply fits one read) get
    to a client that is not reading yet: nothing lost, the EOF last."""
    reply = random.Random(size).randbytes(size)

    async def reply_and_close(conn: trio.socket.SocketType) -> None:
        with conn:
            await conn.recv(100)
            await conn.send(reply)

    await nursery.start(tcp_sink, "127.0.2.12", 28080, reply_and_close)
    await start(nursery, config(service("slow", "127.10.1.12", "127.0.2.12:28080")))
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the proxy's send falls short
    await sock.bind((CLIENT, 0))
    await sock.connect(("127.10.1.12", PORT))
    with sock, trio.fail_after(10):
        await sock.send(b"request")
        await trio.sleep(0.2)  # the reply and the FIN reach the proxy meanwhile
        assert await recv_all(sock) == reply


async def test_no_endpoint_resets_at_once(nursery: trio.Nursery) -> None:
    proxy = await start(nursery, config(service("empty", "127.10.1.4")))
    with pytest.raises(OSError) as info, trio.fail_after(10):
        # the listener accepts and resets: no FIN, no hanging. The reset can come before the
        # client has seen its connect complete, so it may surface there already.
        sock = await connect_from(CLIENT, ("127.10.1.4", PORT))
        with sock:
            await sock.recv(1)
    assert info.value.errno == errno.ECONNRESET
    assert sample(proxy, "mesh_proxy_rejects_total", protocol="TCP") == 1


async def test_connect_failure_tries_the_next_endpoint(nursery: trio.Nursery) -> None:
    await nursery.start(tcp_who, "127.0.2.6", 28080)
    dead = "127.0.2.5:28080"  # listed, nothing listening: connection refused
    proxy = await start(nursery, config(service("s", "127.10.1.5", dead, "127.0.2.6:28080")))
    answers = [await ask_tcp(CLIENT, ("127.10.1.5", PORT)) for _ in range(4)]
    assert answers == ["127.0.2.6:28080"] * 4
    assert sample(proxy, "mesh_proxy_endpoint_connect_errors_total") >= 2
    only_dead = config(service("s", "127.10.1.5", dead), version=2)
    proxy.apply(only_dead)
    assert await ask_tcp(CLIENT, ("127.10.1.5", PORT)) == REJECT


async def test_connect_attempts_are_bounded(nursery: trio.Nursery) -> None:
    dead = [f"127.0.2.{i}:28080" for i in range(20, 24)]  # nothing listens: refused
    proxy = await start(nursery, config(service("s", "127.10.1.6", *dead)), connect_attempts=2)
    assert await ask_tcp(CLIENT, ("127.10.1.6", PORT)) == REJECT
    assert sample(proxy, "mesh_proxy_endpoint_connect_errors_total") == 2
    assert sample(proxy, "mesh_proxy_rejects_total", protocol="TCP") == 1
    assert sample(proxy, "mesh_proxy_active_connections", protocol="TCP") == 0


async def test_endpoint_reset_resets_the_client(nursery: trio.Nursery) -> None:
    async def reset_after_hello(conn: trio.socket.SocketType) -> None:
        await conn.send(b"hello\n")
        await conn.recv(100)  # the client's ping
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    await nursery.start(tcp_sink, "127.0.2.7", 28080, reset_after_hello)
    proxy = await start(nursery, config(service("rst", "127.10.1.7", "127.0.2.7:28080")))
    sock = await connect_from(CLIENT, ("127.10.1.7", PORT))
    with sock, trio.fail_after(10):
        assert await read_line(sock) == b"hello\n"
        await sock.send(b"ping\n")
        with pytest.raises(OSError) as info:
            await recv_all(sock)  # the endpoint's reset is passed on, not turned into EOF
        assert info.value.errno == errno.ECONNRESET
    await eventually(lambda: sample(proxy, "mesh_proxy_active_connections", protocol="TCP") == 0)
    assert sample(proxy, "mesh_proxy_connections_total", protocol="TCP") == 1


async def test_flows_are_counted_and_closed(nursery: trio.Nursery) -> None:
    await nursery.start(tcp_who, "127.0.2.8", 28080)
    proxy = await start(nursery, config(service("count", "127.10.1.8", "127.0.2.8:28080")))
    for _ in range(5):
        assert await ask_tcp(CLIENT, ("127.10.1.8", PORT)) == "127.0.2.8:28080"
    await eventually(lambda: sample(proxy, "mesh_proxy_active_connections", protocol="TCP") == 0)
    assert sample(proxy, "mesh_proxy_connections_total", protocol="TCP") == 5
    labels = {"namespace": "default", "service": "count", "endpoint": "127.0.2.8:28080"}
    assert sample(proxy, "mesh_proxy_endpoint_picks_total", **labels) == 5
    assert sample(proxy, "mesh_proxy_bytes_total", direction="to_client") > 0


@contextlib.asynccontextmanager
async def unanswered(ip: str, port: int) -> AsyncIterator[None]:
    """An endpoint whose connects never complete: a listener that never accepts, its queue
    full, so further SYNs go unanswered."""
    full = socket.socket()
    full.bind((ip, port))
    full.listen(0)
    with full, contextlib.ExitStack() as stack:
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex((ip, port))
        await trio.sleep(0.2)
        yield


async def test_connect_timeout_tries_the_next_endpoint(nursery: trio.Nursery) -> None:
    await nursery.start(tcp_who, "127.0.2.10", 28080)
    async with unanswered("127.0.2.9", 28080):
        cfg = config(service("slow", "127.10.1.9", "127.0.2.9:28080", "127.0.2.10:28080"))
        proxy = await start(nursery, cfg, connect_timeout=0.3)
        with trio.fail_after(10):
            answers = [await ask_tcp(CLIENT, ("127.10.1.9", PORT)) for _ in range(2)]
        assert answers == ["127.0.2.10:28080"] * 2
        assert sample(proxy, "mesh_proxy_endpoint_connect_errors_total") >= 1


async def test_shutdown_resets_connects_in_progress(nursery: trio.Nursery) -> None:
    async with unanswered("127.0.2.11", 28080):
        proxy = UserspaceProxy(connect_timeout=30)
        proxy.apply(config(service("stuck", "127.10.1.11", "127.0.2.11:28080")))
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await proxy.run(task_status=task_status)

        await nursery.start(run)
        sock = await connect_from(CLIENT, ("127.10.1.11", PORT))
        with sock, trio.fail_after(10):
            await eventually(
                lambda: sample(proxy, "mesh_proxy_active_connections", protocol="TCP") == 1
            )
            scope.cancel()  # the proxy stops while its connect is in progress
            with pytest.raises(OSError) as info:
                await sock.recv(1)
        assert info.value.errno == errno.ECONNRESET
        assert sample(proxy, "mesh_proxy_active_connections", protocol="TCP") == 0


# --- UDP -------------------------------------------------------------------------------------


async def test_udp_session_per_client_and_idle_timeout(nursery: trio.Nursery) -> None:
    for ip in ("127.0.3.1", "127.0.3.2"):
        await nursery.start(udp_who, ip, 28080)
    svc = service("dns", "127.10.2.1", "127.0.3.1:28080", "127.0.3.2:28080", protocol="UDP")
    proxy = await start(nursery, config(svc), udp_idle_timeout=0.2)
    dest = ("127.10.2.1", PORT)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((CLIENT, 0))
    with sock:
        assert await ask_udp(CLIENT, dest, sock) == "127.0.3.1:28080"
        assert await ask_udp(CLIENT, dest, sock) == "127.0.3.1:28080"  # same session
        assert await ask_udp(CLIENT, dest) == "127.0.3.2:28080"  # another client port
        assert sample(proxy, "mesh_proxy_connections_total", protocol="UDP") == 2
        # both sessions end once idle
        await eventually(
            lambda: sample(proxy, "mesh_proxy_active_connections", protocol="UDP") == 0
        )
        assert await ask_udp(CLIENT, dest, sock) == "127.0.3.1:28080"  # a new session: next pick
        assert sample(proxy, "mesh_proxy_connections_total", protocol="UDP") == 3


# --- config swaps ----------------------------------------------------------------------------


async def test_config_swap_keeps_established_connections(nursery: trio.Nursery) -> None:
    for ip in ("127.0.4.1", "127.0.4.2"):
        await nursery.start(tcp_who, ip, 28080)
    a = service("a", "127.10.3.1", "127.0.4.1:28080")
    b = service("b", "127.10.3.2", "127.0.4.2:28080")
    proxy = await start(nursery, config(a))
    sock = await connect_from(CLIENT, ("127.10.3.1", PORT))
    with sock:
        assert await read_line(sock) == b"127.0.4.1:28080\n"
        for version, cfg in enumerate(
            [
                config(b, version=2),  # a's listener goes away
                config(
                    service("a", "127.10.3.1", "127.0.4.2:28080"), b, version=3
                ),  # a is back, elsewhere
            ],
            start=2,
        ):
            proxy.apply(cfg)
            assert sample(proxy, "mesh_proxy_config_version") == version
            await sock.send(b"still there\n")
            assert await read_line(sock) == b"still there\n"  # untouched, same endpoint
            if version == 2:
                assert await ask_tcp(CLIENT, ("127.10.3.1", PORT)) == REJECT  # refused
            else:
                assert await ask_tcp(CLIENT, ("127.10.3.1", PORT)) == "127.0.4.2:28080"
            assert await ask_tcp(CLIENT, ("127.10.3.2", PORT)) == "127.0.4.2:28080"
    assert [f"{ip}:{port}" for _, ip, port, _ in proxy.listening()] == [
        "127.10.3.1:10080",
        "127.10.3.2:10080",
    ]


async def test_endpoint_churn_under_load(nursery: trio.Nursery) -> None:
    stable = ["127.0.5.1:28080", "127.0.5.2:28080"]
    flapping = "127.0.5.3:28080"
    dead = "127.0.5.4:28080"  # comes and goes in the config, never listens
    for ep in [*stable, flapping]:
        ip, port = ep.split(":")
        await nursery.start(tcp_who, ip, int(port))
    vip = ("127.10.4.1", PORT)
    proxy = await start(nursery, config(service("churn", vip[0], *stable, flapping)))
    results: list[str] = []

    async def client(n: int) -> None:
        for _ in range(40):
            sock = await connect_from(f"127.0.0.{30 + n}", vip)
            with sock:
                who = (await read_line(sock)).decode().strip()
                await sock.send(b"ping\n")
                assert await read_line(sock) == b"ping\n"
            results.append(who)

    async def churn() -> None:
        shapes = [[*stable], [*stable, flapping], [*stable, dead], [*stable, flapping, dead]]
        for version in range(2, 60):
            proxy.apply(config(service("churn", vip[0], *shapes[version % 4]), version=version))
            await trio.sleep(0.002)

    with trio.fail_after(60):
        async with trio.open_nursery() as load:
            for n in range(6):
                load.start_soon(client, n)
            load.start_soon(churn)
    assert len(results) == 240  # every connection succeeded
    assert set(results) <= {*stable, flapping}
    assert set(stable) <= set(results)
    assert sample(proxy, "mesh_proxy_rejects_total", protocol="TCP") == 0


# --- errors and the admin view ---------------------------------------------------------------


async def test_bind_errors_are_reported_and_isolated(nursery: trio.Nursery) -> None:
    await nursery.start(tcp_who, "127.0.6.1", 28080)
    squatter = socket.socket()
    squatter.bind(("127.10.5.2", PORT))
    squatter.listen()
    with squatter:
        cfg = config(
            service("good", "127.10.5.1", "127.0.6.1:28080"),
            service("taken", "127.10.5.2", "127.0.6.1:28080"),
            service("foreign", "192.0.2.10", "127.0.6.1:28080"),  # not a local address
        )
        proxy = await start(nursery, cfg, ready=False)
        assert await ask_tcp(CLIENT, ("127.10.5.1", PORT)) == "127.0.6.1:28080"
        assert sample(proxy, "mesh_proxy_sync_errors_total") == 1
        errors = proxy.config_json()["bind_errors"]
        assert set(errors) == {"127.10.5.2:10080/TCP", "192.0.2.10:10080/TCP"}


def is_ready(proxy: UserspaceProxy) -> bool:
    return proxy.ready  # a call, so the type checker does not narrow it between awaits


async def test_a_listener_that_cannot_bind_makes_the_proxy_not_ready(
    nursery: trio.Nursery,
) -> None:
    from mesh.admin import AdminServer

    squatter = socket.socket()
    squatter.bind(("127.10.5.12", PORT))
    squatter.listen()
    with squatter:
        cfg = config(
            service("ok", "127.10.5.11", "127.0.6.1:28080"),
            service("taken", "127.10.5.12", "127.0.6.1:28080"),
        )
        proxy = await start(nursery, cfg, ready=False, bind_retry=0.05)
        admin = AdminServer(("127.0.0.1", 0), [proxy])
        assert not proxy.ready
        assert admin.not_ready() == [
            "proxy (cannot listen on 127.10.5.12:10080/TCP: Address already in use)"
        ]
        response = await admin.handle(Request("GET", "/ready", "/ready"))
        assert isinstance(response, Response)
        assert response.status == 503
        assert response.body == (
            b"not ready: proxy (cannot listen on 127.10.5.12:10080/TCP: Address already in use)\n"
        )
    # The address is free again: the retry binds it and the proxy becomes ready.
    for _ in range(250):  # up to 5 s
        if proxy.not_ready_reason() is None:
            break
        await trio.sleep(0.02)
    assert (proxy.not_ready_reason(), is_ready(proxy)) == (None, True)
    assert proxy.listening()[-1] == ("vip", "127.10.5.12", PORT, "TCP")


async def test_admin_view(nursery: trio.Nursery) -> None:
    import json

    proxy = UserspaceProxy()
    readiness = [proxy.ready]
    proxy.apply(config(service("web", "127.10.6.1", "127.0.7.1:28080"), version=7))
    readiness.append(proxy.ready)  # configured, not listening yet
    await nursery.start(proxy.run)
    readiness.append(proxy.ready)
    assert readiness == [False, False, True]
    view = json.loads(json.dumps(proxy.config_json()))
    assert view["config"]["version"] == 7
    assert view["listeners"] == ["127.10.6.1:10080/TCP"]
    assert view["table"]["backends"][0]["endpoints"] == ["127.0.7.1:28080"]


async def test_curl_through_a_virtual_ip(nursery: trio.Nursery) -> None:
    require_tool("curl")

    async def http(conn: trio.socket.SocketType) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            body = b"hello from 127.0.8.1\n"
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            await conn.send(head.encode() + body)

    await nursery.start(tcp_sink, "127.0.8.1", 28080, http)
    await start(nursery, config(service("web", "127.10.7.1", "127.0.8.1:28080")))
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "10", f"http://127.10.7.1:{PORT}/"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from 127.0.8.1\n"


async def test_standalone_runner_serves_admin(tmp_path: Path) -> None:
    cfg = config(service("web", "127.10.8.1", "127.0.9.1:28080"), version=5)
    path = tmp_path / "proxy.json"
    path.write_text(cfg.model_dump_json())
    admin = ("127.0.0.1", free_port())
    cmd = [sys.executable, "-m", "mesh.cli", "proxy", "--config", str(path)]
    cmd += ["--admin-listen", f"{admin[0]}:{admin[1]}", "--log-level", "warning"]
    proc = await trio.lowlevel.open_process(cmd)
    try:

        async def get(path: str) -> bytes:
            sock = await connect_from("127.0.0.1", admin)
            with sock:
                await sock.send(
                    f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                return await recv_all(sock)

        for _ in range(200):  # bounded: until the admin port answers
            with contextlib.suppress(OSError):
                ready = await get("/ready")
                break
            await trio.sleep(0.05)
        assert ready.startswith(b"HTTP/1.1 200")
        assert b"mesh_proxy_config_version 5.0" in await get("/metrics")
        assert b'"127.10.8.1:10080/TCP"' in await get("/config")
    finally:
        proc.terminate()
        await proc.wait()
