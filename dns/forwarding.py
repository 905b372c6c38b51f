"""From an upstream's answer to the client's reply: the wire relay and the ExternalName chase.

The server's trio shell calls these for queries it forwards. ``relay`` copies the upstream's
answer into a reply to the client's bytes (``layout.relay``: no decoding) and, over UDP, keeps
that reply in the answer cache the UDP loop answers from, for as long as the upstream's answer
may be kept, once the question was asked before (its answer came from the question cache).
Reverse names are never kept there: a config can make one the cluster's, and the UDP loop
consults the answer cache before the zone. ``chase`` follows an ExternalName's target outside
the zone (``chase.chase``) and encodes the whole chain.
"""

from __future__ import annotations

from collections.abc import Callable

from dnslib import DNSRecord

from mesh.dns import layout
from mesh.dns.chase import chase
from mesh.dns.forward_cache import ForwardCache, Label, lower_question, query_key
from mesh.dns.metrics import DnsMetrics
from mesh.dns.names import REVERSE_WIRE_SUFFIXES
from mesh.dns.packet import FORMERR, SERVFAIL, encode_reply, qtype_label, rcode_label
from mesh.dns.responder import Forward, Reply, Responder
from mesh.dns.upstream import Answer, Forwarder


class ForwardPath:
    def __init__(
        self,
        forwarder: Forwarder,
        answers: ForwardCache,
        metrics: DnsMetrics,
        *,
        max_udp: int,
        clock: Callable[[], float],
    ) -> None:
        self.forwarder = forwarder  # replaced by the server once its upstreams are known
        self.answers = answers
        self.metrics = metrics
        self.max_udp = max_udp
        self.clock = clock
        self._labels: dict[int, Label] = {}

    def question_end(self, data: bytes) -> int:
        """Where the question of ``data`` ends; 0 when it is a label type dnslib let through
        (the caller replies FORMERR)."""
        qend = layout.skip_name(data, layout.HEADER, len(data)) + 4
        return qend if layout.HEADER + 5 <= qend <= len(data) else 0

    async def relay(self, fwd: Forward, data: bytes, responder: Responder, *, tcp: bool) -> Reply:
        """The upstream's answer copied into a reply to ``data`` (no decoding); over UDP the
        reply goes into the answer cache for as long as the upstream's answer may be kept."""
        qend = self.question_end(data)
        if not qend:
            return responder.failure(fwd.query, FORMERR, tcp=tcp)
        got = await self.forwarder.resolve(data[layout.HEADER : qend], bool(data[3] & 0x10))
        return self.reply(fwd, data, qend, got, responder, tcp=tcp)

    def reply(
        self,
        fwd: Forward,
        data: bytes,
        qend: int,
        got: Answer | None,
        responder: Responder,
        *,
        tcp: bool,
    ) -> Reply:
        """The reply to ``data`` from the upstream's answer ``got`` (None: SERVFAIL)."""
        if not tcp:
            wire, label = self.reply_udp(fwd, data, qend, got, responder)
            return Reply(wire, label)
        if got is None:
            return responder.failure(fwd.query, SERVFAIL, tcp=tcp)
        limit = responder.limit(fwd, tcp)
        relayed = layout.relay(
            data, qend, got.wire, got.layout, edns=fwd.edns, limit=limit, advertise=self.max_udp
        )
        if relayed is None:  # a shape we do not copy (an OPT in the middle): decode, encode
            return self._decoded(fwd, got, responder, tcp=tcp)
        # the answer cache holds UDP replies: the UDP loop answers from it
        return Reply(relayed[0], self._label(fwd.qtype, got.layout.rcode))

    def reply_udp(
        self, fwd: Forward, data: bytes, qend: int, got: Answer | None, responder: Responder
    ) -> tuple[bytes, Label]:
        """``reply`` over UDP as a plain pair (wire, label), no Reply object (one per
        forwarded query); the reply goes into the answer cache while the answer may be kept,
        from the second time its question is asked (``got`` from the question cache): most
        forwarded names are asked once, and an entry for each would cost them a put, an
        eviction and an object to track, for nothing."""
        if got is None:
            failure = responder.failure(fwd.query, SERVFAIL, tcp=False)
            return failure.wire, failure.label
        relayed = layout.relay(
            data,
            qend,
            got.wire,
            got.layout,
            edns=fwd.edns,
            limit=min(fwd.payload, responder.max_udp),
            advertise=self.max_udp,
        )
        if relayed is None:  # a shape we do not copy (an OPT in the middle): decode, encode
            failure = self._decoded(fwd, got, responder, tcp=False)
            return failure.wire, failure.label
        wire, cut = relayed
        qtype, rcode = fwd.qtype, got.layout.rcode
        label = self._labels.get((qtype << 16) | rcode) or self._label(qtype, rcode)
        self.metrics.cache_misses["answer"] += 1
        name = fwd.wire_name  # known (lower case, plain labels) when classified from bytes
        remaining = got.remaining
        if (
            not got.cached
            or remaining <= 0
            or (name.endswith(REVERSE_WIRE_SUFFIXES) if name else fwd.reverse)
        ):
            return wire, label
        if name:
            end = qend - 4
            key: bytes | None = data[2:12] + name + data[end:]
            stored: bytes | None = wire[:12] + name + wire[end:]
        else:
            key, stored = query_key(data), lower_question(wire)
        if key and stored:
            ttls = got.ttls  # in offset order: usually every one was kept
            if ttls and ttls[-1][0] >= cut:
                ttls = tuple(t for t in ttls if t[0] < cut)
            self.answers.put(key, stored, ttls, qend, ttl=remaining, now=self.clock(), label=label)
        return wire, label

    def _decoded(self, fwd: Forward, got: Answer, responder: Responder, *, tcp: bool) -> Reply:
        """The reply re-encoded from the upstream's decoded answer; SERVFAIL, counted as
        ``malformed``, when dnslib cannot decode it (a label that is no text, say: ``scan``
        checks the shape of a message, not what its labels hold). The upstream's fault, not
        ours: never an internal error."""
        try:
            record = DNSRecord.parse(got.wire)
        except Exception:  # dnslib's errors on hostile bytes are of several classes
            self.metrics.forward_errors["malformed"] += 1
            return responder.failure(fwd.query, SERVFAIL, tcp=tcp)
        return responder.relay(fwd.query, record, 0, tcp=tcp)

    def _label(self, qtype: int, rcode: int) -> Label:
        """The query counter's label, made once per (qtype, rcode): no two lookups and no
        new tuple per forwarded query."""
        label = self._labels.get((qtype << 16) | rcode)
        if label is None:
            label = self._labels[(qtype << 16) | rcode] = (qtype_label(qtype), rcode_label(rcode))
        return label

    async def chase(self, reply: Reply, responder: Responder, *, tcp: bool) -> Reply:
        """The chain ``reply`` stopped at, followed through the upstream and encoded."""
        assert reply.chase is not None
        query, first = reply.chase.query, reply.chase.answer
        index = responder.index
        if index is None:
            return responder.failure(query, SERVFAIL, tcp=tcp)
        cd = bool(query.record.header.cd)
        found = await chase(index, first, query.qtype, query.qclass, cd, self._ask)
        wire = encode_reply(
            query,
            found.rcode,
            answer=found.answer,
            authority=found.authority,
            limit=responder.limit(query, tcp),
            advertise=self.max_udp,
        )
        return Reply(wire, (qtype_label(query.qtype), rcode_label(found.rcode)))

    async def _ask(self, question: bytes, cd: bool) -> Answer | None:
        return await self.forwarder.resolve(question, cd)
