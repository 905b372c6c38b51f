"""A fake upstream DNS server on loopback, answering a few canned names over UDP and TCP
and recording what it was asked.

Some names misbehave on purpose: ``slow.example.`` is never answered, ``late.example.`` is
answered after ``LATE`` seconds, ``spoof.example.`` is preceded by forged replies (a wrong
ID from the right address, the right ID from another address), and ``half.example.`` is a
CNAME given without its target's records, as a non-recursive server would. ``down`` makes
the server drop everything.
"""

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
LATE = 0.3  # seconds before late.example. is answered
SPOOF_ADDRESS = "127.0.0.99"
FORGED = "203.0.113.66"  # what a forged reply claims
CNAMES = {  # name -> target, answered with the target's records when the target is known
    "www.example.": "example.com.",
    "gone.example.": "nothing.example.",
    "half.example.": "example.com.",
    "back.example.": "ring.shop.svc.cluster.local.",
}


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.77") -> None:
        self.host = host
        self.port = 0
        self.seen: list[tuple[str, str, str]] = []  # (transport, name, type)
        self.down = False
        self.forged = 0  # forged replies sent

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
        if name in CNAMES:
            target = CNAMES[name]
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", target))
            if name == "half.example.":
                return response
            if target == "example.com." and rdtype == "A":
                response.answer.append(dns.rrset.from_text(target, 120, "IN", "A", "192.0.2.1"))
            elif target == "nothing.example.":
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(
                    dns.rrset.from_text("example.", 3600, "IN", "SOA", NEGATIVE_SOA)
                )
        elif name in ("late.example.", "spoof.example.") and rdtype == "A":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.9"))
        elif name == "." and rdtype == "NS":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "NS", "a.root.example."))
        elif name == "fail.example.":
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
            async with trio.open_nursery() as nursery:
                while True:
                    data, addr = await sock.recvfrom(65535)
                    if not self.down:
                        nursery.start_soon(self._answer_udp, sock, data, addr)

    async def _answer_udp(self, sock: trio.socket.SocketType, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        response = self.reply(query, "udp")
        if response is None:
            return
        name = query.question[0].name.to_text().lower()
        if name == "late.example.":
            await trio.sleep(LATE)
        if name == "spoof.example.":
            await self._forge(sock, query, addr)
        await sock.sendto(response.to_wire(), addr)

    async def _forge(self, sock: trio.socket.SocketType, query: Any, addr: Any) -> None:
        forged = dns.message.make_response(query)
        name = query.question[0].name
        forged.answer.append(dns.rrset.from_text(name, 3600, "IN", "A", FORGED))
        forged.id = (query.id + 1) % 65536
        await sock.sendto(forged.to_wire(), addr)  # the right address, a wrong ID
        forged.id = query.id
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            await other.bind((SPOOF_ADDRESS, 0))
            await other.sendto(forged.to_wire(), addr)  # the right ID, another address
        self.forged += 2
        await trio.sleep(0.05)  # let the forgeries arrive first

    async def _tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.down:
                return
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
