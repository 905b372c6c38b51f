"""``POST /v1/reports/{kind}`` on the config stream server, over real sockets: a report
lands in the Gateway's status and leaves it when its lease ends; two instances are kept
apart; bad requests get a status and one sentence; the reporter of ``mesh ingress
--control`` posts on change, retries with backoff while the plane is away, and re-posts on
a reconnection."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio

from mesh.config.gateway import ListenerFailure
from mesh.control.plane import ControlPlane
from mesh.control.stream import ConfigServer
from mesh.control.translate.gateway_served import WAITING_FOR_GATEWAY
from mesh.objects import Gateway
from mesh.report_client import Reporter
from mesh.stream_client import Backoff, fetch_json
from tests.ingress.test_listener_failures import gateway_objects

IP, PORT = "127.11.79.1", 18081
L = f"gateway/default/web/{PORT}"
TAKEN = ListenerFailure(message=f"cannot listen on {IP}:{PORT}: Address already in use")


def listener_programmed(plane: ControlPlane) -> tuple[str, str, str]:
    gw = plane.store.get("Gateway", "default", "web")
    assert isinstance(gw, Gateway)
    (lis,) = gw.status.listeners
    (c,) = [c for c in lis.conditions if c.type == "Programmed"]
    return (c.status, c.reason, c.message)


async def start(
    nursery: trio.Nursery, port: int = 0, host: str = "127.0.0.1"
) -> tuple[ControlPlane, str]:
    plane = ControlPlane()
    for o in gateway_objects(IP, PORT):
        plane.apply(o)
    await nursery.start(plane.run)
    server = ConfigServer(plane, (host, port))
    await nursery.start(server.run)
    await plane.synced()
    return plane, f"http://{host}:{server.port}"


def report(instance: str, ttl: int, failures: dict[str, ListenerFailure]) -> dict[str, object]:
    listeners = {k: {"message": v.message} for k, v in failures.items()}
    return {"instance": instance, "ttlSeconds": ttl, "listeners": listeners}


async def until(check: Callable[[], bool]) -> None:
    for _ in range(250):  # at most about 5 s
        if check():
            return
        await trio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_report_is_written_into_status_until_its_lease_ends(
    nursery: trio.Nursery,
) -> None:
    plane, url = await start(nursery)
    # No gateway has taken the config yet: nothing is Programmed.
    assert listener_programmed(plane) == ("False", "Pending", WAITING_FOR_GATEWAY)
    status, answer = await fetch_json(url, "/v1/reports/ingress", report("gw-a/1", 60, {L: TAKEN}))
    assert status == 200, answer
    assert answer["instance"] == "gw-a/1" and answer["entries"] == 1
    assert listener_programmed(plane) == ("False", "Pending", TAKEN.message)  # at once
    # A second gateway binds the listener: it is served, whatever the first one says.
    status, _ = await fetch_json(url, "/v1/reports/ingress", report("gw-b/1", 60, {}))
    assert status == 200
    assert listener_programmed(plane) == ("True", "Programmed", "")
    status, live = await fetch_json(url, "/v1/reports/ingress")
    assert status == 200 and sorted(live) == ["gw-a/1", "gw-b/1"]
    assert live["gw-a/1"]["entries"] == [L] and live["gw-b/1"]["entries"] == []
    # gw-b's last word has a one-second lease, then it goes away without a word: the lease
    # ends, and the listener is nobody's again. (Its first lease is long: however slow this
    # run, the listing above cannot find it already gone.)
    await fetch_json(url, "/v1/reports/ingress", report("gw-b/1", 1, {}))
    await until(lambda: listener_programmed(plane)[:2] == ("False", "Pending"))
    _, live = await fetch_json(url, "/v1/reports/ingress")
    assert sorted(live) == ["gw-a/1"]
    # gw-a's last word has a one-second lease; when it ends, its failure goes too, and with
    # no gateway left nothing is Programmed.
    await fetch_json(url, "/v1/reports/ingress", report("gw-a/1", 1, {L: TAKEN}))
    await until(lambda: listener_programmed(plane) == ("False", "Pending", WAITING_FOR_GATEWAY))
    _, live = await fetch_json(url, "/v1/reports/ingress")
    assert live == {}


async def raw(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def post(path: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, ctype, len(body), body)
    )


async def test_bad_requests_get_a_status_and_one_sentence(nursery: trio.Nursery) -> None:
    plane, url = await start(nursery)
    good = json.dumps(report("gw/1", 30, {})).encode()
    cases = [
        (post(b"/v1/reports/ingress", b"{nope"), 400, b"not JSON"),
        (post(b"/v1/reports/ingress", b'{"instance": "gw/1"}'), 400, b'"listeners" is missing'),
        (post(b"/v1/reports/ingress", good, b"text/plain"), 415, b"application/json"),
        (post(b"/v1/reports/dns", good), 404, b"no component reports of kind 'dns'"),
        (post(b"/v1/reports/ingress", b"x" * 70_000), 413, b"too large"),
        (post(b"/v1/config/ingress", good), 405, b"method not allowed"),
        (post(b"/v1/reports", good), 405, b"method not allowed"),
        (
            b"DELETE /v1/reports/ingress HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
            b"method not allowed",
        ),
    ]
    for request, status, words in cases:
        got, body = await raw(url, request)
        assert (got, words in body) == (status, True), (request[:60], got, body)
        assert body.count(b"\n") == 1 and b"Traceback" not in body
    # A declared length over the bound is refused before the body is sent.
    got, body = await raw(
        url,
        b"POST /v1/reports/ingress HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n",
    )
    assert got == 413
    # An HTTP/1.1 client that asks for 100 Continue gets it, then its answer.
    request = post(b"/v1/reports/ingress", good).replace(
        b"Connection: close\r\n", b"Connection: close\r\nExpect: 100-continue\r\n"
    )
    head, _, rest = request.partition(b"\r\n\r\n")
    stream = await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))
    async with stream:
        await stream.send_all(head + b"\r\n\r\n")
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(rest)
        with trio.fail_after(5):
            final = await stream.receive_some(65536)
        assert final.startswith(b"HTTP/1.1 200 ")
    assert listener_programmed(plane) == ("True", "Programmed", "")


# The plane of the retry test listens where nothing listened a moment before. Not on
# 127.0.0.1: there the reporter's connects to the port nobody listens on yet could be given
# that very port as their source (a TCP self-connect, which Linux allows), and then hold it.
PLANE_IP = "127.11.79.2"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def test_the_reporter_retries_until_the_plane_is_up_then_follows_changes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port(PLANE_IP)
    url = f"http://{PLANE_IP}:{port}"
    reporter = Reporter(url, "ingress", "gw/1", ttl=30, backoff=Backoff(0.05, 0.2))
    reporter.update({L: TAKEN})  # before the plane is up: never blocks
    await nursery.start(reporter.run)
    # A refused try leaves its reason (waited for: under load the first try may take a while).
    await until(lambda: reporter.describe()["lastError"] != "")
    state = reporter.describe()
    assert state["posted"] == 0
    assert state["instance"] == "gw/1" and state["url"] == f"{url}/v1/reports/ingress"
    took: list[object] = []  # the posts of gw/1 the plane took, in order
    report_in_plane = ControlPlane.report

    def counted(self: ControlPlane, kind: str, report: Any, **kw: Any) -> None:
        if kw.get("instance") == "gw/1" and kw.get("expires") is not None:
            took.append(report)
        report_in_plane(self, kind, report, **kw)

    monkeypatch.setattr(ControlPlane, "report", counted)
    plane, _ = await start(nursery, port, PLANE_IP)
    await until(lambda: listener_programmed(plane)[:2] == ("False", "Pending"))
    # The plane writes the status while it answers the post: the reporter reads the answer
    # (and clears its error) a moment later.
    await until(lambda: reporter.describe()["lastError"] == "")
    reporter.update({})
    await until(lambda: listener_programmed(plane) == ("True", "Programmed", ""))
    # The plane forgets (as a restarted one would); a reconnection brings the report back.
    reporter.update({L: TAKEN})
    await until(lambda: listener_programmed(plane)[0] == "False")
    plane.report("ingress", {}, instance="gw/1", expires=None)
    assert listener_programmed(plane)[0] == "True"
    before = len(took)
    reporter.reconnected()
    await until(lambda: listener_programmed(plane)[0] == "False")
    assert len(took) > before
    # The reporter counts each post the plane took (once it has read the answer).
    await until(lambda: reporter.posted == len(took))


async def test_the_reporter_posts_again_every_third_of_its_lease(nursery: trio.Nursery) -> None:
    plane, url = await start(nursery)
    reporter = Reporter(url, "ingress", "gw/2", ttl=3)  # a post every second
    reporter.update({L: TAKEN})
    await nursery.start(reporter.run)
    await until(lambda: listener_programmed(plane)[0] == "False")
    plane.report("ingress", {}, instance="gw/2", expires=None)  # the plane forgets it
    assert listener_programmed(plane)[0] == "True"
    await until(lambda: listener_programmed(plane)[0] == "False")  # without a change
    # The plane takes the post before the reporter reads the answer and counts it.
    await until(lambda: reporter.posted >= 2)
