"""Building a ZoneIndex from a config, in full or from the previous index.

A new config is applied incrementally: the index keeps each Service's records (its
:class:`~mesh.dns.zone_parts.Part`, computed once per distinct Service) and which Services
contribute to each owner name. Building from the previous index reuses the parts of the
Services that did not change (the same object, as the control plane's translators reuse them,
or an equal one, as decoded from the config stream) and lets go of the nodes of the owner
names of the Services that changed, were added or went away (made again when asked); the
result answers as a full build's. A change of zone, TTL, pod mode, namespaces or (verified
mode) pods rebuilds in full.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.config.dns import DnsConfig, DnsService
from mesh.dns import names, zone_parts
from mesh.dns.part_wire import Templates
from mesh.dns.records import (
    SCHEMA_VERSION,
    TYPE_SOA,
    TYPE_TXT,
    Node,
    NodeBuilder,
    address,
    soa,
    txt,
)
from mesh.dns.zone_parts import Key, Part

Window = tuple[tuple[DnsService, ...], tuple[DnsService, ...]]  # (gone, came)


@dataclass(slots=True, eq=False)
class Built:
    """What a build makes (the index is a view of it), and what the next build starts from."""

    zone: str  # absolute, lower case
    ttl: int
    pod_mode: str
    namespaces: frozenset[str]
    pods: object  # the verified mode's pods, else ()
    nodes: dict[str, Node]  # the index's own names' nodes, and the part names' made so far
    owners: dict[str, tuple[Key, ...]]  # part name -> the Services that own it, config order
    shared: set[str]  # the names owned by several Services
    parts: dict[Key, Part]
    extra_names: frozenset[str]  # the index's own names
    services: tuple[DnsService, ...]  # in config order
    unique: bool  # each (namespace, name) once: the next build may use a window
    ns_counts: dict[str, int]  # Services by namespace
    pod_source: object  # the config's pods, and their namespaces
    pod_namespaces: frozenset[str]
    parts_built: int  # Services whose records were computed (tests pin the work)
    changed: frozenset[str] | None  # names that differ from the previous build's; None: all


class Builder:
    def __init__(self, config: DnsConfig, previous: Built | None) -> None:
        self.config = config
        self.zone = names.absolute(config.zone)
        self.templates = Templates(self.zone, config.ttl)
        self.previous = previous
        # names owned by several Services: the previous build's set, copied when one is added
        self.shared: set[str] = previous.shared if previous is not None else set()
        self.parts_built = 0  # Services whose records were computed (tests pin the work)
        self.unique = False  # each (namespace, name) once: the next build may use a window
        self.ns_counts: dict[str, int] = {}
        self.pod_namespaces: frozenset[str] = frozenset()

    def namespaces(self, window: Window | None) -> frozenset[str]:
        """Every namespace of the config; the Services' from the previous index's counts
        and the window's changes when there is one (no walk over every Service)."""
        config, prev = self.config, self.previous
        if window is not None and prev is not None:
            counts = self.ns_counts = dict(prev.ns_counts)
            for svc in window[0]:
                left = counts[svc.namespace] - 1
                if left:
                    counts[svc.namespace] = left
                else:
                    del counts[svc.namespace]
            for svc in window[1]:
                counts[svc.namespace] = counts.get(svc.namespace, 0) + 1
        else:
            self.ns_counts = dict(Counter(s.namespace for s in config.services))
        if prev is not None and prev.pod_source is config.pods:
            self.pod_namespaces = prev.pod_namespaces
        else:
            self.pod_namespaces = frozenset(p.namespace for p in config.pods)
        return frozenset(config.namespaces).union(self.ns_counts, self.pod_namespaces)

    def window(self) -> Window | None:
        """The Services gone and come between the previous config and this one: what lies
        between their common head and tail (the same objects, as a delta or the in-process
        plane keeps unchanged records; an identity test each, in C). None when a Service is
        defined twice, in either config (its key depends on the others: the walk decides)."""
        prev = self.previous
        if prev is None or not prev.unique:
            return None
        old, new = prev.services, self.config.services
        short = min(len(old), len(new))
        head = next(itertools.compress(itertools.count(), map(operator.is_not, old, new)), short)
        rest = short - head
        behind = map(operator.is_not, itertools.islice(reversed(old), rest), reversed(new))
        tail = next(itertools.compress(itertools.count(), behind), rest)
        gone = old[head : len(old) - tail]
        came = new[head : len(new) - tail]
        keys = {(s.namespace, s.name, 0) for s in came}
        if len(keys) != len(came):
            return None
        parts = prev.parts
        gone_keys = {(s.namespace, s.name, 0) for s in gone}
        if any(key in parts and key not in gone_keys for key in keys):
            return None  # a new Service of the name of one outside the window
        return gone, came

    def build(self) -> Built:
        config, zone, prev = self.config, self.zone, self.previous
        window = self.window()
        namespaces = self.namespaces(window)
        pods = config.pods if config.pod_mode == "verified" else ()
        if (
            prev is None
            or (prev.zone, prev.ttl, prev.pod_mode) != (zone, config.ttl, config.pod_mode)
            or prev.namespaces != namespaces
            or not (prev.pods is pods or prev.pods == pods)
        ):
            return self.full(namespaces, pods)
        if window is not None:
            return self.windowed(prev, window, namespaces, pods)
        owners = dict(prev.owners)
        parts: dict[Key, Part] = {}
        order: dict[Key, int] = {}
        touched: set[str] = set()
        old_parts = prev.parts
        for i, svc in enumerate(config.services):
            # The loop of every edit, once per Service: the usual key made inline, the same
            # Service (a delta or the in-process plane keeps unchanged ones) kept at once.
            key = (svc.namespace, svc.name, 0)
            if key in order:
                key = self.key(svc, order)
            order[key] = i
            old = old_parts.get(key)
            if old is not None and (old.service is svc or old.service == svc):
                parts[key] = old
                continue
            self.rebuild(key, svc, old, parts, owners, touched)
        for key in old_parts.keys() - parts.keys():
            self.unlink(key, old_parts[key], owners, touched)
        self.unique = all(key[2] == 0 for key in order)
        return self.finish(prev, owners, parts, touched, order, namespaces, pods)

    def windowed(
        self, prev: Built, window: Window, namespaces: frozenset[str], pods: object
    ) -> Built:
        """``build`` from the previous index and the Services of the window only."""
        gone, came = window
        old_parts = prev.parts
        parts = dict(old_parts)
        owners = dict(prev.owners)
        touched: set[str] = set()
        came_keys = {(s.namespace, s.name, 0): s for s in came}
        for svc in gone:
            key = (svc.namespace, svc.name, 0)
            if key not in came_keys:
                self.unlink(key, old_parts[key], owners, touched)
                del parts[key]
        for key, svc in came_keys.items():
            old = old_parts.get(key)
            if old is not None and (old.service is svc or old.service == svc):
                # the same records, maybe at another place in the config: the names it
                # shares with other Services are ordered again
                touched.update(n for n in old.owned if len(owners.get(n, ())) > 1)
                continue
            self.rebuild(key, svc, old, parts, owners, touched)
        self.unique = True
        return self.finish(prev, owners, parts, touched, None, namespaces, pods)

    def finish(
        self,
        prev: Built,
        owners: dict[str, tuple[Key, ...]],
        parts: dict[Key, Part],
        touched: set[str],
        order: dict[Key, int] | None,
        namespaces: frozenset[str],
        pods: object,
    ) -> Built:
        """The touched owner names' nodes let go (made again from their Services when
        asked), their owners put in config order."""
        zone = self.zone
        nodes = dict(prev.nodes)
        for name in touched:
            nodes.pop(name, None)
            keys = owners.get(name)
            if keys is not None and len(keys) > 1:
                if order is None:  # only names shared by several Services need it (rare)
                    order = {
                        (s.namespace, s.name, 0): i for i, s in enumerate(self.config.services)
                    }
                owners[name] = tuple(sorted(keys, key=order.__getitem__))
        if not self.shared.isdisjoint(touched):  # names no longer shared leave the set
            alone = {n for n in touched if len(owners.get(n, ())) < 2}
            if not alone.isdisjoint(self.shared):
                self.shared = self.shared - alone
        nodes[zone] = self.apex()
        touched.add(zone)
        return self.made(
            nodes, namespaces, parts, owners, self.shared, pods, prev.extra_names, touched
        )

    @staticmethod
    def key(svc: DnsService, seen: Mapping[Key, object]) -> Key:
        n = 0
        while (svc.namespace, svc.name, n) in seen:  # the same Service twice: both count
            n += 1
        return (svc.namespace, svc.name, n)

    def rebuild(
        self,
        key: Key,
        svc: DnsService,
        old: Part | None,
        parts: dict[Key, Part],
        owners: dict[str, tuple[Key, ...]],
        touched: set[str],
    ) -> None:
        """The part of a new or changed Service: built, its old names let go, its new
        names owned."""
        part = parts[key] = zone_parts.service_part(svc, self.zone, self.templates)
        self.parts_built += 1
        if old is not None:
            self.unlink(key, old, owners, touched)
        for name in part.owned:
            had = owners.get(name)
            if had:
                owners[name] = (*had, key)
                if name not in self.shared:
                    self.shared = {*self.shared, name}  # a copy: the previous build's stays
            else:
                owners[name] = (key,)
            touched.add(name)

    @staticmethod
    def unlink(key: Key, part: Part, owners: dict[str, tuple[Key, ...]], touched: set[str]) -> None:
        for name in part.owned:
            rest = tuple(k for k in owners.get(name, ()) if k != key)
            if rest:
                owners[name] = rest
            else:
                owners.pop(name, None)
            touched.add(name)

    def apex(self) -> Node:
        b = NodeBuilder()
        b.add(TYPE_SOA, soa(self.zone, self.config.version, self.config.ttl))
        return b.freeze()

    def full(self, namespaces: frozenset[str], pods: object) -> Built:
        config, zone = self.config, self.zone
        prev = self.previous
        same = prev is not None and prev.zone == zone and prev.ttl == config.ttl
        reuse = prev.parts if prev is not None and same else {}
        make, templates = zone_parts.service_part, self.templates
        parts: dict[Key, Part] = {}
        owners: dict[str, tuple[Key, ...]] = {}
        walk: list[str] = []  # names whose ancestors the index looks for (see below)
        shared: set[str] = set()
        for svc in config.services:
            key = (svc.namespace, svc.name, 0)
            if key in parts:
                key = self.key(svc, parts)
            old = reuse.get(key)
            if old is not None and old.service is svc:
                part = old  # same zone and TTL, same Service: the same records
            else:
                part = make(svc, zone, templates)
                self.parts_built += 1
            parts[key] = part
            owned = part.owned
            if owners.keys().isdisjoint(owned):  # names of its own (the usual): one tuple
                owners.update(dict.fromkeys(owned, (key,)))
            else:
                for name in owned:
                    had = owners.get(name)
                    if had is None:
                        owners[name] = (key,)
                    else:
                        owners[name] = (*had, key)
                        shared.add(name)
            if part.wire is None:
                walk.extend(owned)
        nodes = self.own_nodes(namespaces)
        # Empty non-terminals up to the zone. A template part's names reach up to its base
        # name (its own empty non-terminals), whose parent ``<ns>.svc.<zone>`` is one of the
        # index's names: only the index's names and the other parts' are walked.
        for name in [*nodes, *walk]:
            if not names.in_zone(name, zone):
                continue
            parent = name
            while parent != zone:
                parent = parent.split(".", 1)[1]
                if parent in nodes or parent in owners:
                    break
                nodes[parent] = _EMPTY_NODE
        self.unique = all(key[2] == 0 for key in parts)
        return self.made(nodes, namespaces, parts, owners, shared, pods, frozenset(nodes), None)

    def own_nodes(self, namespaces: frozenset[str]) -> dict[str, Node]:
        """The nodes of the names the index owns itself: the schema version's, the
        namespaces', verified pods' and the apex."""
        config, zone = self.config, self.zone
        extra: dict[str, NodeBuilder] = {}
        extra["dns-version." + zone] = b = NodeBuilder()
        b.add(TYPE_TXT, txt(SCHEMA_VERSION))
        for ns in namespaces:
            extra.setdefault(names.join(ns, "svc", zone), NodeBuilder())
            if config.pod_mode != "disabled":
                extra.setdefault(names.join(ns, "pod", zone), NodeBuilder())
        if config.pod_mode == "verified":
            for pod in config.pods:
                for ip in pod.ips:
                    rtype, rdata = address(ip)
                    owner = names.join(names.endpoint_label(ip), pod.namespace, "pod", zone)
                    extra.setdefault(owner, NodeBuilder()).add(rtype, rdata)
        nodes = {name: builder.freeze() for name, builder in extra.items()}
        nodes[zone] = self.apex()
        return nodes

    def made(
        self,
        nodes: dict[str, Node],
        namespaces: frozenset[str],
        parts: dict[Key, Part],
        owners: dict[str, tuple[Key, ...]],
        shared: set[str],
        pods: object,
        extra_names: frozenset[str],
        touched: set[str] | None,
    ) -> Built:
        config = self.config
        return Built(
            zone=self.zone,
            ttl=config.ttl,
            pod_mode=config.pod_mode,
            namespaces=namespaces,
            pods=pods,
            nodes=nodes,
            owners=owners,
            shared=shared,
            parts=parts,
            extra_names=extra_names,
            services=config.services,
            unique=self.unique,
            ns_counts=self.ns_counts,
            pod_source=config.pods,
            pod_namespaces=self.pod_namespaces,
            parts_built=self.parts_built,
            changed=None if touched is None else frozenset(touched),
        )


_EMPTY_NODE = NodeBuilder().freeze()
