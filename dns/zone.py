"""The zone index: every owner name of a DnsConfig.

A new config is applied incrementally: the index keeps each Service's records (its
:class:`_Part`: owner name -> record operations, computed once per distinct Service) and
which Services contribute to each owner name. Building from the previous index reuses the
parts of the Services that did not change (the same object, as the control plane's
translators reuse them, or an equal one, as decoded from the config stream) and rebuilds
only the owner names of the Services that changed, were added or went away; the result is
the same index a full build makes. A change of zone, TTL, pod mode, namespaces or
(verified mode) pods rebuilds in full.

A query for a cluster name is one dict lookup (lower-cased absolute name -> Node). The only
names not stored are insecure-mode pod names (``a-b-c-d.<ns>.pod.<zone>``), which stand for any
address and are recognised by their shape instead.

Empty non-terminals (``svc.<zone>``, ``<ns>.svc.<zone>``, ``_tcp.web.<ns>.svc.<zone>`` ...) are
stored as empty nodes so they answer NODATA, not NXDOMAIN (RFC 8020). Reverse names
(``in-addr.arpa``, ``ip6.arpa``) are stored without their ancestors: the cluster owns single
PTR names there, not the reverse zones, so any other reverse name is forwarded.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from dnslib import DNSLabel

from mesh.config.dns import DnsConfig, DnsService
from mesh.dns import names
from mesh.dns.records import (
    SCHEMA_VERSION,
    TYPE_PTR,
    TYPE_SOA,
    TYPE_SRV,
    TYPE_TXT,
    Node,
    NodeBuilder,
    RData,
    address,
    ptr,
    soa,
    srv,
    txt,
)


def _name(name: str) -> Any:
    """A record's target as dnslib's label, made from the bytes of an ASCII name: what
    dnslib's own path (backslash escapes, then the IDNA codec) gives for such a name, at
    a fifth of its cost, for the 20,000 PTR and SRV targets of 10,000 Services. A name
    with a backslash or beyond ASCII takes dnslib's path."""
    if name.isascii() and "\\" not in name:
        return DNSLabel(name.encode())
    return name


class ZoneIndex:
    """The immutable lookup structure of one config."""

    __slots__ = (
        "_namespaces",
        "_nodes",
        "_ns_counts",
        "_owners",
        "_parts",
        "_pod_namespaces",
        "_pod_source",
        "_pod_suffix",
        "_pods",
        "_services",
        "_unique",
        "base_id",
        "build_id",
        "changed_names",
        "parts_built",
        "pod_mode",
        "soa",
        "ttl",
        "version",
        "zone",
    )

    def __init__(
        self,
        *,
        zone: str,
        ttl: int,
        version: int,
        pod_mode: str,
        nodes: Mapping[str, Node],
        namespaces: frozenset[str],
        parts: Mapping[_Key, _Part] | None = None,
        owners: Mapping[str, tuple[_Key, ...]] | None = None,
        pods: object = None,
    ) -> None:
        self.zone = zone  # absolute, lower case: "cluster.local."
        self.ttl = ttl
        self.version = version
        self.pod_mode = pod_mode
        self.soa: RData = soa(zone, version, ttl)
        self._nodes = nodes
        self._namespaces = namespaces
        self._pod_suffix = ".pod." + zone if pod_mode == "insecure" else None
        self._parts: Mapping[_Key, _Part] = parts or {}
        self._owners: Mapping[str, tuple[_Key, ...]] = owners or {}
        self._pods = pods
        self.parts_built = 0  # Services whose records were computed for it (tests pin it)
        # What the next build starts from: the Services in config order, whether each
        # (namespace, name) is there once, Services by namespace, the pods' namespaces.
        self._services: tuple[DnsService, ...] = ()
        self._unique = False
        self._ns_counts: dict[str, int] = {}
        self._pod_source: object = None
        self._pod_namespaces: frozenset[str] = frozenset()
        # For indexes derived from this one (the wire-form FastIndex): which build this is,
        # the build it was made from, and the owner names that differ from that one's
        # (None: a full build, anything may differ).
        self.build_id = next(_BUILD_IDS)
        self.base_id = -1
        self.changed_names: frozenset[str] | None = None

    def stored(self, name: str) -> Node | None:
        """The node stored for owner ``name`` (no synthesised pod names)."""
        return self._nodes.get(name)

    @classmethod
    def build(cls, config: DnsConfig, previous: ZoneIndex | None = None) -> ZoneIndex:
        """The index of ``config``; with ``previous`` (the index of an earlier config),
        only what changed is rebuilt."""
        return _Builder(config, previous).build()

    def __len__(self) -> int:
        return len(self._nodes)

    def owns(self, name: str) -> bool:
        """Whether this server is authoritative for absolute lower-case ``name``."""
        return names.in_zone(name, self.zone) or name in self._nodes

    def find(self, name: str) -> Node | None:
        node = self._nodes.get(name)
        if node is not None or self._pod_suffix is None or not name.endswith(self._pod_suffix):
            return node
        label, dot, namespace = name[: -len(self._pod_suffix)].partition(".")
        if not dot or "." in namespace or namespace not in self._namespaces:
            return None
        ip = names.pod_label_ip(label)
        if ip is None:
            return None
        rtype, rdata = address(ip)
        return Node(rrsets=MappingProxyType({rtype: (rdata,)}))

    @property
    def namespaces(self) -> frozenset[str]:
        return self._namespaces

    def items(self) -> Iterable[tuple[str, Node]]:
        """(name, node) of every stored owner name."""
        return self._nodes.items()

    def names(self) -> list[str]:
        return sorted(self._nodes)


# One record operation of a Service at an owner name:
# ("rr", rtype, rdata, text) | ("cname", target) | ("srv", port, target)
# | ("add", owner, rtype, rdata, text); ``text`` is the record's presentation form when it is
# known without asking dnslib (a canonical IPv4 address, a PTR target), else None.
_Op = tuple[Any, ...]
_Key = tuple[str, str, int]  # (namespace, name, n-th Service of that name in the config)
_Window = tuple[tuple[DnsService, ...], tuple[DnsService, ...]]  # (gone, came)


class _Part:
    """The records one Service contributes, by owner name (empty lists: the empty
    non-terminals between its names and its base name)."""

    __slots__ = ("names", "service")

    def __init__(self, service: DnsService, names_: dict[str, list[_Op]]) -> None:
        self.service = service
        self.names = names_


def _service_part(svc: DnsService, zone: str) -> _Part:
    out: dict[str, list[_Op]] = {}

    def at(name: str) -> list[_Op]:
        ops = out.get(name)
        if ops is None:
            ops = out[name] = []
        return ops

    # An address's record made once per Service: a cluster IP is in the base name's answer
    # and again in the additional section of every named port's SRV answer.
    made: dict[str, tuple[int, RData, str | None]] = {}

    def addr(ip: str) -> tuple[int, RData, str | None]:
        found = made.get(ip)
        if found is None:
            found = made[ip] = _address(ip)
        return found

    def add_srv(name: str | None, proto: str, port: int, ips: Iterable[str], target: str) -> None:
        if not name:  # unnamed ports have no SRV record (spec 2.3.2)
            return
        ops = at(f"_{name}._{proto.lower()}.{base}")
        ops.append(("srv", port, target))
        for ip in ips:
            ops.append(("add", target, *addr(ip)))

    base = names.join(svc.name, svc.namespace, "svc", zone)
    if svc.kind == "ExternalName":
        at(base).append(("cname", names.absolute(svc.external_name or "")))
    elif svc.kind == "ClusterIP":
        ops = at(base)
        for ip in svc.cluster_ips:
            ops.append(("rr", *addr(ip)))
            at(names.reverse_name(ip)).append(("rr", TYPE_PTR, ptr(_name(base)), base))
        if svc.cluster_ips:
            for port in svc.ports:
                add_srv(port.name, port.protocol, port.port, svc.cluster_ips, base)
    elif svc.endpoints:  # headless; with no endpoint published the name does not exist
        ops = at(base)
        for ep in svc.endpoints:
            if ep.hostname:
                targets = [(names.join(ep.hostname, base), ep.addresses)]
            else:
                targets = [(names.join(names.endpoint_label(a), base), (a,)) for a in ep.addresses]
            for target, addrs in targets:
                host = at(target)
                for a in addrs:
                    rr = ("rr", *addr(a))
                    ops.append(rr)
                    host.append(rr)
                    at(names.reverse_name(a)).append(("rr", TYPE_PTR, ptr(_name(target)), target))
                for port in ep.ports:
                    add_srv(port.name, port.protocol, port.port, addrs, target)
    # Empty non-terminals below the base name (``_tcp.<base>``); the ones above it (the
    # namespace's ``<ns>.svc.<zone>`` and up) are the index's own.
    suffix = "." + base
    for name in list(out):
        while name.endswith(suffix):
            name = name.split(".", 1)[1]
            if name in out:
                break
            out[name] = []
    return _Part(svc, out)


def _address(ip: str) -> tuple[int, RData, str | None]:
    rtype, rdata = address(ip)
    return rtype, rdata, ip if names.CANONICAL_V4.fullmatch(ip) else None


def _node(name: str, parts: Iterable[_Part]) -> Node:
    """The node of owner ``name`` from the parts that contribute to it, in config order."""
    b = NodeBuilder()
    srv_targets: dict[tuple[int, str], None] = {}
    for part in parts:
        for op in part.names[name]:
            tag = op[0]
            if tag == "rr":
                b.add(op[1], op[2], op[3])
            elif tag == "cname":
                b.cname = op[1]
            elif tag == "srv":
                srv_targets[(op[1], op[2])] = None
            else:
                b.add_additional(op[1], op[2], op[3], op[4])
    if srv_targets:
        weight = max(1, 100 // len(srv_targets))
        for port, target in srv_targets:
            rdata = srv(port, _name(target), weight=weight)
            b.add(TYPE_SRV, rdata, f"{port} {target}")
    return b.freeze()


class _Builder:
    def __init__(self, config: DnsConfig, previous: ZoneIndex | None) -> None:
        self.config = config
        self.zone = names.absolute(config.zone)
        self.previous = previous
        self.parts_built = 0  # Services whose records were computed (tests pin the work)
        self.unique = False  # each (namespace, name) once: the next build may use a window
        self.ns_counts: dict[str, int] = {}
        self.pod_namespaces: frozenset[str] = frozenset()

    def namespaces(self, window: _Window | None) -> frozenset[str]:
        """Every namespace of the config; the Services' from the previous index's counts
        and the window's changes when there is one (no walk over every Service)."""
        config, prev = self.config, self.previous
        if window is not None and prev is not None:
            counts = self.ns_counts = dict(prev._ns_counts)
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
        if prev is not None and prev._pod_source is config.pods:
            self.pod_namespaces = prev._pod_namespaces
        else:
            self.pod_namespaces = frozenset(p.namespace for p in config.pods)
        return frozenset(config.namespaces).union(self.ns_counts, self.pod_namespaces)

    def window(self) -> _Window | None:
        """The Services gone and come between the previous config and this one: what lies
        between their common head and tail (the same objects, as a delta or the in-process
        plane keeps unchanged records; an identity test each, in C). None when a Service is
        defined twice, in either config (its key depends on the others: the walk decides)."""
        prev = self.previous
        if prev is None or not prev._unique:
            return None
        old, new = prev._services, self.config.services
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
        parts = prev._parts
        gone_keys = {(s.namespace, s.name, 0) for s in gone}
        if any(key in parts and key not in gone_keys for key in keys):
            return None  # a new Service of the name of one outside the window
        return gone, came

    def build(self) -> ZoneIndex:
        config, zone, prev = self.config, self.zone, self.previous
        window = self.window()
        namespaces = self.namespaces(window)
        pods = config.pods if config.pod_mode == "verified" else ()
        if (
            prev is None
            or (prev.zone, prev.ttl, prev.pod_mode) != (zone, config.ttl, config.pod_mode)
            or prev._namespaces != namespaces
            or not (prev._pods is pods or prev._pods == pods)
        ):
            return self.full(namespaces, pods)
        if window is not None:
            return self.windowed(prev, window, namespaces, pods)
        nodes = dict(prev._nodes)
        owners = dict(prev._owners)
        parts: dict[_Key, _Part] = {}
        order: dict[_Key, int] = {}
        touched: set[str] = set()
        old_parts = prev._parts
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
        return self.finish(prev, nodes, owners, parts, touched, order, namespaces, pods)

    def windowed(
        self, prev: ZoneIndex, window: _Window, namespaces: frozenset[str], pods: object
    ) -> ZoneIndex:
        """``build`` from the previous index and the Services of the window only."""
        gone, came = window
        old_parts = prev._parts
        parts = dict(old_parts)
        owners = dict(prev._owners)
        nodes = dict(prev._nodes)
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
                touched.update(n for n in old.names if len(owners.get(n, ())) > 1)
                continue
            self.rebuild(key, svc, old, parts, owners, touched)
        self.unique = True
        return self.finish(prev, nodes, owners, parts, touched, None, namespaces, pods)

    def finish(
        self,
        prev: ZoneIndex,
        nodes: dict[str, Node],
        owners: dict[str, tuple[_Key, ...]],
        parts: dict[_Key, _Part],
        touched: set[str],
        order: dict[_Key, int] | None,
        namespaces: frozenset[str],
        pods: object,
    ) -> ZoneIndex:
        """The touched owner names' nodes made again from their Services, in config order."""
        zone = self.zone
        for name in touched:
            keys = owners.get(name)
            if not keys:
                nodes.pop(name, None)
                continue
            if len(keys) > 1:
                if order is None:  # only names shared by several Services need it (rare)
                    order = {
                        (s.namespace, s.name, 0): i for i, s in enumerate(self.config.services)
                    }
                keys = tuple(sorted(keys, key=order.__getitem__))
            owners[name] = keys
            nodes[name] = _node(name, (parts[k] for k in keys))
        nodes[zone] = self.apex()
        touched.add(zone)
        index = self.index(nodes, namespaces, parts, owners, pods)
        index.base_id = prev.build_id
        index.changed_names = frozenset(touched)
        return index

    @staticmethod
    def key(svc: DnsService, seen: Mapping[_Key, object]) -> _Key:
        n = 0
        while (svc.namespace, svc.name, n) in seen:  # the same Service twice: both count
            n += 1
        return (svc.namespace, svc.name, n)

    def rebuild(
        self,
        key: _Key,
        svc: DnsService,
        old: _Part | None,
        parts: dict[_Key, _Part],
        owners: dict[str, tuple[_Key, ...]],
        touched: set[str],
    ) -> None:
        """The part of a new or changed Service: built, its old names let go, its new
        names owned."""
        part = parts[key] = _service_part(svc, self.zone)
        self.parts_built += 1
        if old is not None:
            self.unlink(key, old, owners, touched)
        for name in part.names:
            owners[name] = (*owners.get(name, ()), key)
            touched.add(name)

    @staticmethod
    def unlink(
        key: _Key, part: _Part, owners: dict[str, tuple[_Key, ...]], touched: set[str]
    ) -> None:
        for name in part.names:
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

    def full(self, namespaces: frozenset[str], pods: object) -> ZoneIndex:
        config, zone = self.config, self.zone
        prev = self.previous
        reuse = prev._parts if prev is not None and prev.zone == zone else {}
        parts: dict[_Key, _Part] = {}
        owners: dict[str, list[_Key]] = {}
        for svc in config.services:
            key = self.key(svc, parts)
            old = reuse.get(key)
            if old is not None and old.service is svc:
                part = old  # same zone, same Service: the same records
            else:
                part = _service_part(svc, zone)
                self.parts_built += 1
            parts[key] = part
            for name in part.names:
                owners.setdefault(name, []).append(key)
        nodes: dict[str, Node] = {
            name: _node(name, (parts[k] for k in keys)) for name, keys in owners.items()
        }
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
        for name, builder in extra.items():
            nodes[name] = builder.freeze()
        nodes[zone] = self.apex()
        for name in list(nodes):  # empty non-terminals up to the zone
            if not names.in_zone(name, zone):
                continue
            parent = name
            while parent != zone:
                parent = parent.split(".", 1)[1]
                if parent in nodes:
                    break
                nodes[parent] = _EMPTY_NODE
        frozen = {name: tuple(keys) for name, keys in owners.items()}
        self.unique = all(key[2] == 0 for key in parts)
        return self.index(nodes, namespaces, parts, frozen, pods)

    def index(
        self,
        nodes: dict[str, Node],
        namespaces: frozenset[str],
        parts: dict[_Key, _Part],
        owners: dict[str, tuple[_Key, ...]],
        pods: object,
    ) -> ZoneIndex:
        config = self.config
        index = ZoneIndex(
            zone=self.zone,
            ttl=config.ttl,
            version=config.version,
            pod_mode=config.pod_mode,
            nodes=nodes,
            namespaces=namespaces,
            parts=parts,
            owners=owners,
            pods=pods,
        )
        index.parts_built = self.parts_built
        index._services = config.services
        index._unique = self.unique
        index._ns_counts = self.ns_counts
        index._pod_source = config.pods
        index._pod_namespaces = self.pod_namespaces
        return index


_EMPTY_NODE = NodeBuilder().freeze()
_BUILD_IDS = itertools.count()
