"""A fake upstream DNS server on loopback, answering a few canned names over UDP and TCP
and recording what it was asked."""

from __future__ import annotations

import socket
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

NEGATIVE_SOA = "ns.example. host.example. 1 7200 900 86400 30"  # example. 3600 IN SOA
BIG_TXT = 20  # TXT records of big.example.: too long for UDP


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.77") -> None:
        self.host = host
        self.port = 0
        self.seen: list[tuple[str, str, str]] = []  # (transport, name, type)

    def asked(self, name: str) -> list[str]:
        return [t for t, n, _ in self.seen if n == name]

    def reply(self, query: dns.message.Message, transport: str) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.seen.append((transport, name, rdtype))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name == "slow.example.":
            return None
        if name == "fail.example.":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "example.com." and rdtype == "A":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
        elif name == "big.example." and rdtype == "TXT":
            if transport == "udp":
                response.flags |= dns.flags.TC
            else:
                texts = [f'"{i:02d}{"x" * 60}"' for i in range(BIG_TXT)]
                response.answer.append(dns.rrset.from_text_list(name, 60, "IN", "TXT", texts))
        elif name == "1.2.0.192.in-addr.arpa." and rdtype == "PTR":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "PTR", "host.example."))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(
                dns.rrset.from_text("example.", 3600, "IN", "SOA", NEGATIVE_SOA)
            )
        return response

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind((self.host, 0))
        self.port = udp.getsockname()[1]
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._udp, udp)
            nursery.start_soon(trio.serve_listeners, self._tcp, listeners)
            task_status.started((self.host, self.port))

    async def _udp(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                data, addr = await sock.recvfrom(65535)
                response = self.reply(dns.message.from_wire(data), "udp")
                if response is not None:
                    await sock.sendto(response.to_wire(), addr)

    async def _tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                chunk = await stream.receive_some(65535)
                if not chunk:
                    return
                buf += chunk
            query = dns.message.from_wire(buf[2 : 2 + int.from_bytes(buf[:2], "big")])
            response = self.reply(query, "tcp")
            if response is not None:
                wire = response.to_wire(max_size=65535)
                await stream.send_all(len(wire).to_bytes(2, "big") + wire)
