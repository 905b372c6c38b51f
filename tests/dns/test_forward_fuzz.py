"""Forwarding under hostile input: mutated queries for external names, and an upstream that
answers with mutated replies carrying the right ID. The server never hits its internal-error
path, answers what it can, and keeps answering."""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import dns.rrset
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.dns.layout import scan
from tests.dns.cases import CLUSTER
from tests.dns.serving import HOST, running


def _reply_for(query: bytes) -> bytes:
    msg = dns.message.from_wire(query)
    reply = dns.message.make_response(msg)
    name = msg.question[0].name
    reply.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "x.example."))
    reply.answer.append(dns.rrset.from_text("x.example.", 60, "IN", "A", "192.0.2.7"))
    reply.authority.append(dns.rrset.from_text("example.", 60, "IN", "NS", "ns.example."))
    return reply.to_wire()


@st.composite
def mutation(draw: st.DrawFn) -> list[tuple[str, int, bytes]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "cut", "insert"]),
                st.integers(0, 200),
                st.binary(min_size=1, max_size=4),
            ),
            max_size=4,
        )
    )


def mutate(data: bytes, steps: list[tuple[str, int, bytes]], keep: int) -> bytes:
    out = bytearray(data)
    for kind, at, extra in steps:
        if len(out) <= keep:
            break
        i = keep + at % (len(out) - keep)
        if kind == "flip":
            out[i] = extra[0]
        elif kind == "cut":
            del out[i:]
        else:
            out[i:i] = extra
    return bytes(out)


class HostileUpstream:
    """Answers each query with a mutated reply that keeps the ID and question intact."""

    def __init__(self, steps: list[list[tuple[str, int, bytes]]]) -> None:
        self.steps = steps
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.79", 0))
            self.port = sock.getsockname()[1]
            task_status.started(("127.0.0.79", self.port))
            n = 0
            while True:
                data, addr = await sock.recvfrom(65535)
                reply = _reply_for(data)
                qend = len(data) - 11  # the forwarder's question ends before its OPT
                await sock.sendto(mutate(reply, self.steps[n % len(self.steps)], qend), addr)
                n += 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation(), min_size=1, max_size=4), st.lists(mutation(), min_size=1, max_size=4))
def test_hostile_upstream_and_mutated_queries(
    upstream_steps: list[list[tuple[str, int, bytes]]],
    query_steps: list[list[tuple[str, int, bytes]]],
) -> None:
    trio.run(_exchange, upstream_steps, query_steps)


async def _exchange(
    upstream_steps: list[list[tuple[str, int, bytes]]],
    query_steps: list[list[tuple[str, int, bytes]]],
) -> None:
    hostile = HostileUpstream(upstream_steps)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(hostile.run)
        async with running(CLUSTER, upstreams=[address], forward_timeout=0.3) as server:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.connect((HOST, server.port))
                for i, steps in enumerate(query_steps):
                    query = dns.message.make_query(f"n{i}.Example.org.", "A", use_edns=0)
                    await sock.send(mutate(query.to_wire(), steps, 12))
                    with trio.move_on_after(0.5):  # a mutated query may get no answer
                        reply = await sock.recv(65535)
                        assert reply[2] & 0x80  # a response, never an echo
                valid = dns.message.make_query("valid.example.org.", "A")
                await sock.send(valid.to_wire())
                with trio.fail_after(5):
                    for _ in range(len(query_steps) + 1):
                        # late replies to mutated queries echo their (odd) questions
                        data = await sock.recv(65535)
                        if data[:2] == valid.id.to_bytes(2, "big"):
                            break
                # A well-formed message (every length fits, the types we know have their
                # shape). The hostile upstream may have turned a record's type into one whose
                # rdata only a parser knowing that type rejects (e.g. NS into AVC, 258): a
                # forwarder passes unknown types on opaque, as resolvers do.
                assert data[:2] == valid.id.to_bytes(2, "big")
                assert scan(data) is not None, data.hex()
                assert data[3] & 0xF in (
                    dns.rcode.NOERROR,
                    dns.rcode.SERVFAIL,
                    dns.rcode.FORMERR,
                    dns.rcode.NXDOMAIN,
                )
            errors = server.registry.get_sample_value(
                "mesh_dns_forward_errors_total", {"reason": "internal"}
            )
            assert errors is None or errors == 0
        nursery.cancel_scope.cancel()
