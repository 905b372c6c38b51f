"""Arbitrary bytes and mutated queries against the packet path and the running server: never
an exception, a reply only where a header can be read, and the next valid query answered."""

from __future__ import annotations

import dns.message
import dns.rcode
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.dns.responder import Drop, Forward, Reply, Responder
from mesh.dns.zone import ZoneIndex
from tests.dns.cases import CASES, CLUSTER, query
from tests.dns.serving import HOST, running

RESPONDER = Responder(ZoneIndex.build(CLUSTER))
COLD = Responder(None)
VALID = [query(c, use_edns=e).to_wire() for c in CASES[:12] for e in (False, 0)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i]
    return bytes(data)


packets = st.one_of(st.binary(max_size=600), mutated())


def check_outcome(data: bytes, outcome: Reply | Forward | Drop) -> None:
    readable = len(data) >= 12 and not data[2] & 0x80
    if isinstance(outcome, Drop):
        assert not readable
        return
    assert readable
    if isinstance(outcome, Reply):
        assert outcome.wire[:2] == data[:2]
        assert outcome.wire[2] & 0x80  # QR
        dns.message.from_wire(outcome.wire)  # a well-formed message


@settings(max_examples=400, deadline=None)
@given(packets)
def test_packet_path_never_fails(data: bytes) -> None:
    for responder in (RESPONDER, COLD):
        for tcp in (False, True):
            check_outcome(data, responder.handle(data, tcp=tcp))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets, min_size=1, max_size=8))
def test_server_survives_garbage(batch: list[bytes]) -> None:
    trio.run(_throw_at_server, batch)


async def _throw_at_server(batch: list[bytes]) -> None:
    valid = dns.message.make_query("web.shop.svc.cluster.local.", "A")
    async with running(CLUSTER, tcp_idle_timeout=0.5) as server:
        with trio.fail_after(10):
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                await sock.connect((HOST, server.port))
                for data in batch:
                    await sock.send(data)
                await sock.send(valid.to_wire())
                # replies to the garbage may come first; the valid one is among the next few
                for _ in range(len(batch) + 1):
                    reply = dns.message.from_wire(await sock.recv(65535))
                    if reply.id == valid.id and reply.question:
                        break
                assert reply.id == valid.id and reply.rcode() == dns.rcode.NOERROR
            # framed garbage on one TCP connection, raw garbage on another
            for framed in (True, False):
                stream = await trio.open_tcp_stream(HOST, server.port)
                async with stream:
                    try:  # the server may close a connection that sent no query
                        for data in batch:
                            prefix = len(data).to_bytes(2, "big") if framed else b""
                            await stream.send_all(prefix + data)
                    except trio.BrokenResourceError:
                        pass
            stream = await trio.open_tcp_stream(HOST, server.port)
            async with stream:
                wire = valid.to_wire()
                await stream.send_all(len(wire).to_bytes(2, "big") + wire)
                buf = b""
                while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    chunk = await stream.receive_some(65535)
                    assert chunk
                    buf += chunk
                reply = dns.message.from_wire(buf[2:])
                assert reply.id == valid.id and reply.rcode() == dns.rcode.NOERROR
