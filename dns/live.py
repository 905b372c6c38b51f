"""What the DNS server answers from, swapped as one object at a config apply (:class:`Live`),
and the general answer path over it (:func:`handle`), shared by the UDP loop and TCP."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.config.dns import DnsConfig
from mesh.dns.fast_index import FastIndex
from mesh.dns.packet import SERVFAIL, header_reply
from mesh.dns.responder import Drop, Forward, Reply, Responder
from mesh.dns.wire_cache import NegativeCache, WireCache

log = logging.getLogger("mesh.dns.server")


@dataclass(frozen=True, slots=True)
class Live:
    """Everything that changes with a config, swapped as one object."""

    config: DnsConfig | None
    responder: Responder
    cache: WireCache
    fast: FastIndex | None = None  # standard questions of cluster names, in wire form
    pods: Mapping[str, str] = field(default_factory=dict)  # pod IP -> namespace (autopath)
    # NXDOMAIN replies of the fast path that are worth keeping: apart, so made-up names never
    # touch the wire cache of names that exist
    negative: NegativeCache = field(default_factory=lambda: NegativeCache(0))


def handle(live: Live, data: bytes, *, tcp: bool, fast: bool = True) -> Reply | Forward | Drop:
    """The general path's answer to ``data``: the FastIndex's (unless ``fast`` is False: the
    caller tried it), else the Responder's; a bug costs this one query (SERVFAIL or a drop)."""
    try:
        if fast and live.fast is not None:
            reply = live.fast.answer(data, tcp=tcp)
            if reply is not None:
                return reply
        return live.responder.handle(data, tcp=tcp)
    except Exception:  # a bug must cost one query, never the server
        log.exception("query failed")
        if len(data) < 12 or data[2] & 0x80:
            return Drop("error")
        return Reply(header_reply(data, SERVFAIL), ("other", "SERVFAIL"))
