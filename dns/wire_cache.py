"""The wire caches: whole replies keyed on the query's bytes after their 2-byte ID.

A hit costs one dict lookup and one bytes concatenation (the client's ID + the stored tail):
no parsing, no encoding. Only replies that are a function of the query bytes and the live
config go in (cluster answers), so the cache belongs to one config and is replaced wholesale
when the next one is applied. Bounded: when full it is emptied and refills with what is asked.
"""

from __future__ import annotations

REFRESH = 60.0  # seconds a full negative cache is kept before it is emptied to learn again

Label = tuple[str, str]  # (qtype, rcode): what a hit adds to the query counter
Entry = tuple[bytes, Label]  # (reply bytes after the ID, label)


class WireCache:
    __slots__ = ("entries", "max_entries")

    def __init__(self, max_entries: int = 65536) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, query_tail: bytes) -> Entry | None:
        return self.entries.get(query_tail)

    def put(self, query_tail: bytes, reply_tail: bytes, label: Label) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[query_tail] = (reply_tail, label)


class NegativeCache(WireCache):
    """NXDOMAIN replies of names the FastIndex walked label by label: the search-path
    expansions of dotted names (``example.com.<ns>.svc.<zone>``), which every lookup of that
    name asks again. Names under a known parent (a random-subdomain flood, a single label
    under a search domain) are made again from the index and never come here.

    Admitted while there is room, never evicted one by one: a flood of walked names fills it
    once and then costs nothing, and what it held stays. A cache that has been full for
    ``REFRESH`` seconds is emptied, so it learns the names asked now; a config empties it too
    (the SOA serial). The UDP loop asks ``room`` once per batch and puts inline."""

    __slots__ = ("full_since",)

    def __init__(self, max_entries: int = 65536) -> None:
        super().__init__(max_entries)
        self.full_since: float | None = None

    def room(self, now: float) -> int:
        """How many replies may be put now (0: full)."""
        free = self.max_entries - len(self.entries)
        if free > 0:
            self.full_since = None
            return free
        if self.full_since is None:
            self.full_since = now
        elif now - self.full_since >= REFRESH and self.max_entries > 0:
            self.entries.clear()
            self.full_since = None
            return self.max_entries
        return 0
