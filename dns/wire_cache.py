"""The wire cache: whole replies keyed on the query's bytes after its 2-byte ID.

A hit costs one dict lookup and one bytes concatenation (the client's ID + the stored tail):
no parsing, no encoding. Only replies that are a function of the query bytes and the live
config go in (cluster answers), so the cache belongs to one config and is replaced wholesale
when the next one is applied. Bounded: when full it is emptied and refills with what is asked.
"""

from __future__ import annotations

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
