"""The cache of upstream answers, positive and negative (RFC 2308), with an injected clock.

An answer is kept for the smallest TTL of its answer records, a negative one (NXDOMAIN, or
NOERROR with no answer) for min(SOA TTL, SOA minimum) of the SOA in its authority section;
both capped. Without an SOA a negative answer is not cached, nor is SERVFAIL, REFUSED, a
truncated answer or a zero TTL. A hit returns the answer and its age, by which the caller
lowers the TTLs it sends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord

Key = tuple[str, int, int]  # (lower-case absolute name, qtype, qclass)

TYPE_SOA: int = QTYPE.SOA
TYPE_OPT: int = QTYPE.OPT
NOERROR: int = RCODE.NOERROR
NXDOMAIN: int = RCODE.NXDOMAIN


@dataclass(frozen=True, slots=True)
class Entry:
    record: DNSRecord
    stored: float
    expires: float


def cache_ttl(record: DNSRecord, *, max_ttl: int, max_negative_ttl: int) -> int | None:
    """How long ``record`` may be cached (seconds), or None when it must not be."""
    header = record.header
    if header.tc or header.rcode not in (NOERROR, NXDOMAIN):
        return None
    answers = [rr for rr in record.rr if rr.rtype != TYPE_OPT]
    if header.rcode == NOERROR and answers:
        ttl = min(int(rr.ttl) for rr in answers)
        return min(ttl, max_ttl) if ttl > 0 else None
    soas = [rr for rr in record.auth if rr.rtype == TYPE_SOA]
    if not soas:
        return None
    ttl = min(int(soas[0].ttl), int(soas[0].rdata.times[4]))
    return min(ttl, max_negative_ttl) if ttl > 0 else None


class ForwardCache:
    def __init__(
        self, max_entries: int = 10_000, *, max_ttl: int = 3600, max_negative_ttl: int = 300
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> tuple[DNSRecord, int] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.record, int(now - entry.stored)

    def put(self, key: Key, record: DNSRecord, now: float) -> bool:
        ttl = cache_ttl(record, max_ttl=self.max_ttl, max_negative_ttl=self.max_negative_ttl)
        if ttl is None:
            return False
        self._entries[key] = Entry(record, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def clear(self) -> None:
        self._entries.clear()
