"""The zone index: every owner name of a DnsConfig.

Built from a config by dns/zone_build.py: each Service's records are its :class:`Part`
(dns/zone_parts.py), kept from build to build while the Service does not change, and the index
knows which Services own each owner name. A name's node (its record sets as dnslib objects,
what the general answer path reads) is made from its owners' parts when it is first asked
(:meth:`ZoneIndex.stored`) and kept: the first-time questions of cluster names are answered
from wire bytes (dns/fast_index.py), which the plain Services' parts hold already, so most
nodes are never made. The names the index itself owns (the apex, the namespaces', the
schema version's, verified pods', the empty non-terminals up to the apex) are made at once.

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
from collections.abc import Iterable
from types import MappingProxyType

from mesh.config.dns import DnsConfig
from mesh.dns import names
from mesh.dns.records import Node, RData, address, soa
from mesh.dns.zone_build import Builder, Built
from mesh.dns.zone_parts import Part, merge


class ZoneIndex:
    """The lookup structure of one config: immutable but for the nodes it makes when asked."""

    __slots__ = (
        "_built",
        "_namespaces",
        "_nodes",
        "_owners",
        "_parts",
        "_pod_suffix",
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

    def __init__(self, built: Built, version: int) -> None:
        self._built = built  # what the next build starts from
        self.zone = built.zone  # absolute, lower case: "cluster.local."
        self.ttl = built.ttl
        self.version = version
        self.pod_mode = built.pod_mode
        self.soa: RData = soa(built.zone, version, built.ttl)
        # The index's own names' nodes, and every part name's node made so far.
        self._nodes = built.nodes
        self._owners = built.owners  # part name -> the Services that own it, in config order
        self._parts = built.parts
        self._namespaces = built.namespaces
        self._pod_suffix = ".pod." + built.zone if built.pod_mode == "insecure" else None
        self.parts_built = built.parts_built  # Services whose records were computed for it
        # For indexes derived from this one (the wire-form FastIndex): which build this is,
        # the build it was made from, and the owner names that differ from that one's
        # (None: a full build, anything may differ).
        self.build_id = next(_BUILD_IDS)
        self.base_id = -1
        self.changed_names = built.changed

    def stored(self, name: str) -> Node | None:
        """The node stored for owner ``name`` (no synthesised pod names)."""
        node = self._nodes.get(name)
        if node is None:
            keys = self._owners.get(name)
            if keys is not None:
                parts = self._parts
                node = self._nodes[name] = merge(name, [parts[k] for k in keys])
        return node

    @classmethod
    def build(cls, config: DnsConfig, previous: ZoneIndex | None = None) -> ZoneIndex:
        """The index of ``config``; with ``previous`` (the index of an earlier config),
        only what changed is rebuilt."""
        built = Builder(config, None if previous is None else previous._built).build()
        index = cls(built, config.version)
        if built.changed is not None and previous is not None:
            index.base_id = previous.build_id
        return index

    def __len__(self) -> int:
        owners, nodes = self._owners, self._nodes
        extra = self._built.extra_names
        return len(owners) + sum(1 for n in extra if n in nodes and n not in owners)

    def owns(self, name: str) -> bool:
        """Whether this server is authoritative for absolute lower-case ``name``."""
        return names.in_zone(name, self.zone) or name in self._nodes or name in self._owners

    def find(self, name: str) -> Node | None:
        node = self.stored(name)
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
        """(name, node) of every stored owner name (every node made)."""
        for name in self._owners:
            self.stored(name)
        return self._nodes.items()

    def names(self) -> list[str]:
        return sorted(self._nodes.keys() | self._owners.keys())

    # --- for the FastIndex ---------------------------------------------------------------

    def wire_sources(self) -> tuple[list[Part], list[str]]:
        """The parts that hold their names' answers in wire form, and the names whose
        answers are to be encoded from their nodes: the other parts' names, the names
        several Services share and the index's own. A FastIndex puts the latter after the
        former (a name of both is answered from its node, as the general path answers it)."""
        encoded: list[Part] = []
        rest: list[str] = []
        for part in self._parts.values():
            if part.wire is None:
                rest.extend(part.owned)
            else:
                encoded.append(part)
        owners, nodes = self._owners, self._nodes
        rest.extend(n for n in self._built.shared if len(owners.get(n, ())) > 1)
        rest.extend(n for n in self._built.extra_names if n in nodes)
        return encoded, list(dict.fromkeys(rest))


_BUILD_IDS = itertools.count()
