"""The whole nftables table as the merge of per-Service pieces, kept up to date in place.

Theory of operation. The renderer renders each Service as a piece of its own (its chains,
map and set elements, affinity sets, dispatch slots, UDP targets). :class:`TableState`
merges the pieces into the table's content and, on an edit, swaps the pieces of the changed
Services only, recording what that changed in a :class:`Delta`: the work of an edit is
proportional to the Services it touched, not to the size of the table.

Two Services may claim one map key (the same address and port): the first by
namespace/name wins, as when rendering straight into one table. Every key therefore keeps
the sorted list of its claimants; removing the winner hands the key to the next one. The
``cluster-ips`` set follows ``service-ips``: a key is in it when the Service that won the
key in ``service-ips`` has it in its own ``cluster-ips``. The hairpin set is a union: an
endpoint address stays while any Service still reaches it.

The state is mutated in place: a ruleset rendered from it is current until the next render
from it (``generation`` tells), after which only its plain fields (counts, marker, the
delta it carried) stay meaningful.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from mesh.config.proxy import ProxyService
from mesh.proxy.nft_names import CLUSTER_IPS_SET, HAIRPIN_SET, MAPS, SERVICE_IPS_MAP, SETS

# A Service's place in the merge order: namespace, name, and its occurrence (a Service
# given twice in one config gets 1 for its second copy; such a state is never updated).
ServiceKey = tuple[str, str, int]
UdpKey = tuple[str, int]
UdpTargets = frozenset[tuple[str, int]]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Change = tuple[V | None, V | None]  # (before, after); None: absent


class Piece(Protocol):
    """What the renderer made of one Service (a nft_service.ServicePiece)."""

    chains: dict[str, str]
    affinity: dict[str, int]
    elements: dict[str, dict[str, str]]
    slots: dict[str, tuple[int, int]]
    udp: dict[UdpKey, UdpTargets]
    hairpin: set[str]  # "ip . ip" elements of the hairpin set
    rules: int
    endpoints: int
    reusable: bool


@dataclass(slots=True)
class Delta:
    """What one render changed in the table: per name, (before, after), None for absent."""

    chains: dict[str, Change[str]] = field(default_factory=dict)
    elements: dict[str, dict[str, Change[str]]] = field(default_factory=dict)
    affinity: dict[str, Change[int]] = field(default_factory=dict)
    udp: dict[UdpKey, Change[UdpTargets]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.chains or self.elements or self.affinity or self.udp)


def diff_dicts(before: dict[K, V], after: dict[K, V]) -> dict[K, Change[V]]:
    """(before, after) of every key whose value differs (two whole tables: O(size))."""
    out: dict[K, Change[V]] = {}
    for k, v in before.items():
        w = after.get(k)
        if w != v:
            out[k] = (v, w)
    for k, w in after.items():
        if k not in before:
            out[k] = (None, w)
    return out


# Who claims a key: one Service (the common case, stored as its key: no list to allocate)
# or a list of them sorted in merge order, the first being the winner.
Claim = ServiceKey | list[ServiceKey]


def _claim(claims: dict[Any, Claim], key: Any, owner: ServiceKey) -> None:
    who = claims.get(key)
    if who is None:
        claims[key] = owner
    elif type(who) is list:
        bisect.insort(who, owner)
    else:
        claims[key] = sorted((who, owner))  # type: ignore[arg-type]


def _unclaim(claims: dict[Any, Claim], key: Any, owner: ServiceKey) -> None:
    who = claims[key]
    if type(who) is list:
        who.remove(owner)
        if len(who) == 1:
            claims[key] = who[0]
    else:
        del claims[key]


def _winner(who: Claim | None) -> ServiceKey | None:
    if who is None or type(who) is not list:
        return who  # type: ignore[return-value]
    return who[0]


@dataclass(slots=True)
class TableState:
    """The merged content of every piece, plus who claims what."""

    made_for: Any  # (node name, options, shared dispatch): pieces depend on it
    pieces: dict[ServiceKey, tuple[ProxyService, Piece]] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(
        default_factory=lambda: {m: {} for m in (*MAPS, *SETS)}
    )
    claims: dict[str, dict[str, Claim]] = field(
        default_factory=lambda: {m: {} for m in (*MAPS, *SETS)}
    )
    chains: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, int] = field(default_factory=dict)
    slots: dict[str, tuple[int, int]] = field(default_factory=dict)
    udp: dict[UdpKey, UdpTargets] = field(default_factory=dict)
    udp_claims: dict[UdpKey, Claim] = field(default_factory=dict)
    rules: int = 0
    endpoints: int = 0
    service_ports: int = 0
    # The next free dispatch slot. Never lowered before a full render: a slot an update
    # retired lingers in the kernel until the next sync (see nft_script.LATE_DELETE), and
    # adding it again with another value would fail the transaction.
    next_slot: int = 1
    by_id: dict[int, ServiceKey] = field(default_factory=dict)  # id of each piece's record
    unreusable: set[ServiceKey] = field(default_factory=set)  # pieces to render every time
    generation: int = 0
    updatable: bool = True  # False: a Service given twice; the next render starts over

    # --- a render from nothing: pieces in merge order, the first claim wins ------------

    def append(self, key: ServiceKey, svc: ProxyService, piece: Piece) -> None:
        """Add a piece that sorts after every piece already added (a full render)."""
        self.pieces[key] = (svc, piece)
        self.by_id[id(svc)] = key
        if not piece.reusable:
            self.unreusable.add(key)
        self.rules += piece.rules
        self.endpoints += piece.endpoints
        self.service_ports += len(svc.ports)
        self.chains.update(piece.chains)
        if piece.affinity:
            self.affinity.update(piece.affinity)
        if piece.slots:
            self.slots.update(piece.slots)
        for target, eps in piece.udp.items():
            _claim(self.udp_claims, target, key)
            self.udp.setdefault(target, eps)
        won_all = True
        elements, all_claims = self.elements, self.claims
        for name, elems in piece.elements.items():
            if name == CLUSTER_IPS_SET:
                continue
            mine, claims = elements[name], all_claims[name]
            if mine.keys().isdisjoint(elems):  # keys rarely collide: add them in one go
                mine.update(elems)
                claims.update(dict.fromkeys(elems, key))
                continue
            for k, v in elems.items():
                if k in mine:
                    _claim(claims, k, key)  # after the winner: merged in order
                    if name == SERVICE_IPS_MAP:
                        won_all = False
                else:
                    claims[k] = key
                    mine[k] = v
        cluster = piece.elements.get(CLUSTER_IPS_SET)
        if cluster:
            # A key is in cluster-ips when its service-ips verdict is this Service's.
            if won_all:
                elements[CLUSTER_IPS_SET].update(cluster)
            else:
                owners = all_claims[SERVICE_IPS_MAP]
                for k in cluster:
                    if _winner(owners[k]) == key:
                        elements[CLUSTER_IPS_SET][k] = ""
        hairpin, hclaims = elements[HAIRPIN_SET], all_claims[HAIRPIN_SET]
        if hairpin.keys().isdisjoint(piece.hairpin):
            hairpin.update(dict.fromkeys(piece.hairpin, ""))
            hclaims.update(dict.fromkeys(piece.hairpin, key))
            return
        for k in piece.hairpin:
            if k in hairpin:
                _claim(hclaims, k, key)
            else:
                hclaims[k] = key
                hairpin[k] = ""

    # --- an edit: swap the pieces of the changed Services ------------------------------

    def replace(
        self, key: ServiceKey, new: tuple[ProxyService, Piece] | None, delta: Delta
    ) -> None:
        """Swap the piece of ``key`` for ``new`` (None: the Service is gone), recording
        every change of the merged content in ``delta``."""
        old = self.pieces.pop(key, None)
        if old is not None:
            self.by_id.pop(id(old[0]), None)
            self.unreusable.discard(key)
        if new is not None:
            self.pieces[key] = new
            self.by_id[id(new[0])] = key
            if not new[1].reusable:
                self.unreusable.add(key)
        old_piece = old[1] if old else None
        new_piece = new[1] if new else None
        if old is not None:
            self._count(old[0], old[1], -1)
        if new is not None:
            self._count(new[0], new[1], 1)
        self._swap_named(
            self.chains,
            old_piece.chains if old_piece else {},
            new_piece.chains if new_piece else {},
            delta.chains,
        )
        self._swap_named(
            self.affinity,
            old_piece.affinity if old_piece else {},
            new_piece.affinity if new_piece else {},
            delta.affinity,
        )
        for chain in old_piece.slots if old_piece else ():
            self.slots.pop(chain, None)
        if new_piece is not None:
            self.slots.update(new_piece.slots)
        self._swap_udp(key, old_piece, new_piece, delta)
        touched: dict[tuple[str, str], None] = {}  # ordered: the same script every time
        for piece, claim in ((old_piece, _unclaim), (new_piece, _claim)):
            if piece is None:
                continue
            for name, elems in piece.elements.items():
                if name == CLUSTER_IPS_SET:  # follows service-ips (see _settle)
                    touched.update(dict.fromkeys((name, k) for k in elems))
                    continue
                claims = self.claims[name]
                for k in elems:
                    claim(claims, k, key)
                    touched[name, k] = None
            hclaims = self.claims[HAIRPIN_SET]
            for k in piece.hairpin:
                claim(hclaims, k, key)
                touched[HAIRPIN_SET, k] = None
        for name, k in touched:
            self._settle(name, k, delta)

    def _count(self, svc: ProxyService, piece: Piece, sign: int) -> None:
        self.rules += sign * piece.rules
        self.endpoints += sign * piece.endpoints
        self.service_ports += sign * len(svc.ports)

    @staticmethod
    def _swap_named(
        merged: dict[str, V],
        old: dict[str, V],
        new: dict[str, V],
        changes: dict[str, Change[V]],
    ) -> None:
        """Names are the Service's own (its identity is in them): no claims needed."""
        for name in old:
            if name not in new:
                _record(changes, name, merged.pop(name, None), None)
        for name, value in new.items():
            was = merged.get(name)
            if was != value:
                merged[name] = value
                _record(changes, name, was, value)

    def _swap_udp(
        self, key: ServiceKey, old: Piece | None, new: Piece | None, delta: Delta
    ) -> None:
        targets: dict[UdpKey, None] = {}
        if old is not None:
            for t in old.udp:
                _unclaim(self.udp_claims, t, key)
                targets[t] = None
        if new is not None:
            for t in new.udp:
                _claim(self.udp_claims, t, key)
                targets[t] = None
        for t in targets:
            who = _winner(self.udp_claims.get(t))
            after = self.pieces[who][1].udp[t] if who else None
            before = self.udp.get(t)
            if after != before:
                _record(delta.udp, t, before, after)
                if after is None:
                    del self.udp[t]
                else:
                    self.udp[t] = after

    def _settle(self, name: str, k: str, delta: Delta) -> None:
        """Give key ``k`` of ``name`` the value of its first claimant (or remove it)."""
        who = _winner(self.claims[name].get(k))
        if name in (CLUSTER_IPS_SET, SERVICE_IPS_MAP):
            if name == SERVICE_IPS_MAP:
                self._settle_value(name, k, who, delta)
            owner = _winner(self.claims[SERVICE_IPS_MAP].get(k))
            present = False
            if owner:
                present = k in self.pieces[owner][1].elements.get(CLUSTER_IPS_SET, {})
            self._set(CLUSTER_IPS_SET, k, "" if present else None, delta)
            return
        if name == HAIRPIN_SET:
            self._set(name, k, "" if who else None, delta)
            return
        self._settle_value(name, k, who, delta)

    def _settle_value(self, name: str, k: str, who: ServiceKey | None, delta: Delta) -> None:
        value = self.pieces[who][1].elements[name][k] if who else None
        self._set(name, k, value, delta)

    def _set(self, name: str, k: str, value: str | None, delta: Delta) -> None:
        mine = self.elements[name]
        before = mine.get(k)
        if before == value:
            return
        if value is None:
            del mine[k]
        else:
            mine[k] = value
        _record(delta.elements.setdefault(name, {}), k, before, value)


def _record(changes: dict[Any, Change[V]], key: Any, before: V | None, after: V | None) -> None:
    """Keep the first ``before`` of a key changed twice in one render; drop no-ops."""
    if key in changes:
        before = changes[key][0]
    if before == after:
        changes.pop(key, None)
    else:
        changes[key] = (before, after)


def changed_services(
    state: TableState, services: Sequence[ProxyService]
) -> tuple[list[tuple[ServiceKey, ProxyService]], list[ServiceKey]] | None:
    """The Services whose record is not their piece's (new ones included), and the keys of
    the pieces whose Service is gone; None when a Service is given twice. The config
    stream keeps unchanged records as the same objects, so the unchanged ones are found by
    identity with set operations, at C speed: only the others are looked at one by one."""
    objects = dict(zip(map(id, services), services, strict=True))
    if len(objects) != len(services):
        return None  # one record given twice
    by_id = state.by_id
    changed: list[tuple[ServiceKey, ProxyService]] = []
    keys: set[ServiceKey] = set()
    for i in objects.keys() - by_id.keys():
        svc = objects[i]
        key = (svc.namespace, svc.name, 0)
        if key in keys:
            return None  # two records of one Service
        keys.add(key)
        was = state.pieces.get(key)
        if was is not None and id(was[0]) in objects:
            return None  # two records of one Service: the old one stays
        if was is None or not was[1].reusable or was[0] != svc:
            changed.append((key, svc))
        else:  # an equal record, not the same object: keep the piece, follow the object
            del by_id[id(was[0])]
            state.pieces[key] = (svc, was[1])
            by_id[i] = key
    gone = [by_id[i] for i in by_id.keys() - objects.keys()]
    gone = [key for key in gone if key not in keys]
    skip = keys.union(gone)
    unreusable = [(key, state.pieces[key][0]) for key in state.unreusable if key not in skip]
    return changed + unreusable, gone
