"""The cache of upstream answers in wire form: a hit is a copy, a few TTL writes and a send.

An entry is a whole DNS message as bytes plus the offset and original value of every TTL
field in it (found once by ``layout.scan``). A hit copies the client's ID and question (so its
case is echoed) around the stored bytes; when whole seconds have passed since the entry was
stored, the TTLs are rewritten with ``struct.pack_into`` on a copy, once per second of age,
not per hit. No parse, no encode. Answer-cache entries keep their question in lower case, so
a client asking in lower case (most do) costs one lookup and one concatenation, as a
wire-cache hit does; another case costs a second lookup and the question copied in.

Two caches of this kind serve the forwarding path:

- the answer cache, keyed by ``query_key``: the client's query after its ID with the name
  lower-cased (RFC 4343), holding the reply exactly as that client shape gets it. The UDP
  loop answers from it with no other work.
- the forwarder's question cache, keyed by the question alone, holding the upstream's own
  answer: shared by every client shape, the ExternalName chase and ``serve_stale``.

How long: a positive answer for its smallest answer TTL, a negative one (NXDOMAIN, NODATA)
for min(SOA TTL, SOA minimum) per RFC 2308, each capped; never errors, truncated answers or
a negative answer without an SOA. Bounded in entries and bytes, the least recently used
entry is evicted first (a hit refreshes an entry's place at most once a second: the LRU
order is exact to the second, and the hot path does not pay for it on every packet). With ``serve_stale`` (RFC 8767) an expired entry is kept that many
seconds more, for answering when every upstream fails.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Mapping

from mesh.dns.layout import Layout

Label = tuple[str, str]  # (qtype, rcode): what a hit adds to the query counter
Ttls = tuple[tuple[int, int], ...]  # (offset, ttl at store time)

STALE_TTL = 30  # RFC 8767 4: the TTL of an answer served stale
ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its message (objects, dict slot)
_TTL = struct.Struct(">I")


def lower_question(data: bytes) -> bytes | None:
    """``data`` with the question's name lower-cased (RFC 4343: ASCII letters only; length
    bytes are below 64 and never change); None when no name ends in the packet."""
    end = data.find(0, 12)
    if end < 0:
        return None
    return data[:12] + data[12:end].lower() + data[end:]


def query_key(data: bytes) -> bytes | None:
    """The answer cache's key of a query: its bytes after the ID, the name lower-cased.
    The reply stored under it must have its question lower-cased the same way."""
    lowered = lower_question(data)
    return None if lowered is None else lowered[2:]


def with_ttls(wire: bytes, ttls: Ttls, age: int, *, fixed: int | None = None) -> bytearray:
    """A copy of ``wire`` with every TTL lowered by ``age`` (not below 0), or set to
    ``fixed``."""
    out = bytearray(wire)
    pack = _TTL.pack_into
    for offset, ttl in ttls:
        pack(out, offset, fixed if fixed is not None else max(0, ttl - age))
    return out


class Entry:
    """One cached message. A plain slotted class, not a dataclass: two are made per forwarded
    query (the question cache's and the answer cache's), and a dataclass's ``__init__`` with
    defaults and a ``__post_init__`` costs twice the calls."""

    __slots__ = (
        "age",
        "expires",
        "head",
        "label",
        "qend",
        "refresh",
        "rest",
        "size",
        "stored",
        "tail",
        "ttls",
        "wire",
    )

    def __init__(
        self, wire: bytes, ttls: Ttls, qend: int, stored: float, expires: float, label: Label
    ) -> None:
        self.wire = wire  # the whole message; its ID means nothing
        self.ttls = ttls
        self.qend = qend  # end of the question section
        self.stored = stored
        self.expires = expires
        self.label = label
        # the hot path's memo: the message at ``age`` seconds (until ``refresh``), without
        # its ID; made by the first hit (``refresh`` starts due), not here: most forwarded
        # answers are never asked again, and the question cache's entries never use it
        self.age = 0
        self.refresh = stored
        self.tail = b""  # everything after the ID
        self.head = b""  # bytes 2..12: flags and counts
        self.rest = b""  # everything after the question
        self.size = len(wire) + ENTRY_OVERHEAD  # what the entry counts against ``max_bytes``

    def at(self, now: float) -> None:
        age = int(now - self.stored)
        self.age = age
        # never past ``expires``: a memo used before ``refresh`` is fresh (the UDP loop's test)
        self.refresh = min(self.stored + age + 1, self.expires)
        aged = bytes(with_ttls(self.wire, self.ttls, age)) if self.ttls else self.wire
        self.tail = aged[2:]
        self.head = aged[2:12]
        self.rest = aged[self.qend :]

    def message(self, now: float) -> bytes:
        """The whole message with its TTLs lowered for the time spent here."""
        age = int(now - self.stored)
        return bytes(with_ttls(self.wire, self.ttls, age)) if age else self.wire

    def remaining(self, now: float) -> float:
        return self.expires - now


class ForwardCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_bytes: int = 16 << 20,
        max_ttl: int = 3600,
        max_negative_ttl: int = 300,
        serve_stale: float = 0.0,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.serve_stale = serve_stale
        self.bytes = 0
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> Mapping[bytes, Entry]:
        """The entries by key, for the UDP loop's inline hit: an entry found by the client's
        bytes after the ID (so a lower-case question) whose ``refresh`` is ahead of now has
        its reply after the ID in ``tail`` (``answer`` does the rest)."""
        return self._entries

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def answer(self, data: bytes, key: bytes, now: float) -> tuple[bytes, Label] | None:
        """The hot path: the reply to query ``data`` (``key``: its bytes after the ID) from a
        fresh entry, or None."""
        entries = self._entries
        entry = entries.get(key)  # stored keys are lower case: a hit means the client's is
        lower = entry is not None
        if entry is None:
            end = data.find(0, 12)
            if end < 0:
                return None
            name = data[12:end]
            lowered = name.lower()
            if lowered == name:  # looked up as it is already: a miss (most queries)
                return None
            key = data[2:12] + lowered + data[end:]
            entry = entries.get(key)
            if entry is None:
                return None
        if now >= entry.expires:
            return None
        if now >= entry.refresh:
            entry.at(now)
            entries.move_to_end(key)
        if lower:
            return data[:2] + entry.tail, entry.label
        return data[:2] + entry.head + data[12 : entry.qend] + entry.rest, entry.label

    def get(self, key: bytes, now: float) -> Entry | None:
        """A fresh entry; an expired one is dropped unless it may still be served stale."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            if now >= entry.expires + self.serve_stale:
                self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def stale(self, key: bytes, now: float) -> Entry | None:
        """An expired entry still inside the ``serve_stale`` window (RFC 8767)."""
        entry = self._entries.get(key)
        if entry is None or now < entry.expires or now >= entry.expires + self.serve_stale:
            return None
        return entry

    def keep_for(self, layout: Layout) -> int:
        """How long to keep an answer of this layout, capped (0: do not keep)."""
        # ``layout.cache_ttl()`` inlined: once per forwarded query
        rcode = layout.rcode
        if layout.tc or layout.opt_ttl >> 24 or rcode not in (0, 3):
            return 0
        if rcode == 0 and layout.counts[0]:
            ttl = layout.answer_ttl
            return 0 if ttl is None else min(ttl, self.max_ttl)
        ttl = layout.negative_ttl
        return 0 if ttl is None else min(ttl, self.max_negative_ttl)

    def put(
        self,
        key: bytes,
        wire: bytes,
        ttls: Ttls,
        qend: int,
        *,
        ttl: float,
        now: float,
        label: Label = ("other", "NOERROR"),
    ) -> Entry | None:
        if ttl <= 0 or self.max_entries <= 0:
            return None
        entry = Entry(wire, ttls, qend, now, now + ttl, label)
        size = entry.size
        if size > self.max_bytes:
            return None
        entries = self._entries
        old = entries.pop(key, None)
        total = self.bytes + size - (old.size if old is not None else 0)
        entries[key] = entry
        while len(entries) > self.max_entries or total > self.max_bytes:
            total -= entries.popitem(last=False)[1].size
        self.bytes = total
        return entry

    def _remove(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
