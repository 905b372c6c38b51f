"""Render a ProxyConfig as one nftables table, structured as kube-proxy's nftables mode.

Theory of operation. Everything lives in one table of our own (``ip mesh-proxy`` by default)
so nothing else on the host is touched. Packets meet it at five hooks::

    nat-prerouting / nat-output (dstnat)  -> services
    services:  ip daddr . l4proto . dport        vmap @service-ips        (ClusterIP, external IP, LB IP)
               fib daddr local, l4proto . dport  vmap @service-nodeports  (NodePort)
    filter-input / -forward / -output (dstnat - 10), new flows -> endpoints-check
    endpoints-check: the same keys vmap @no-endpoint-services / @no-endpoint-nodeports
                     -> goto reject-chain (TCP reset, ICMP port unreachable) or drop
    nat-postrouting (srcnat) -> masquerading: masquerade what carries the masquerade mark

Each Service port gets a chain ``service-HASH-ns/name/proto/port`` (``local-`` for a Local
internal traffic policy) that picks an endpoint round robin with ``numgen inc mod N`` and
DNATs to it; external traffic (NodePort, external and LB IPs) enters through
``external-HASH-...``, which marks it for masquerade (policy Cluster) or keeps the client
address (policy Local). Hairpin traffic (a pod reaching itself through a Service) is marked
for masquerade in postrouting, where it is the DNATed traffic whose source and destination
are the same endpoint: ``ip saddr . ip daddr @endpoint-hairpin`` (elements ``ep . ep``).

Without session affinity, the round robin DNATs straight from a map of slot -> endpoint
address and port; with ClientIP affinity each endpoint gets a chain
``endpoint-HASH-ns/name/proto/port__ip/port`` that refreshes its affinity set and DNATs, and
the Service chain checks those sets before the round robin ``vmap`` picks one. Chain names
are a hash of the identity followed by the identity, so they are stable across syncs and
readable in ``nft list``. Endpoint eligibility (ready, serving-terminating fallback,
node-local for policy Local) and order are the service table's, so both proxy modes agree.

Why so few chains: nft's parse and the kernel's commit time grow with the number of chains
and rules (about 40 us per chain), so per-endpoint chains are kept only where affinity
needs them.

An edit renders only what changed: each Service is rendered as a piece of its own (its
chains, map and set elements, affinity sets) and :mod:`nft_merge` keeps the merged table,
the first claim of a key (by namespace/name) winning as when rendering straight into one
table. A render from the previous ruleset finds the changed Services by identity (the
config stream keeps unchanged records as the same objects), renders only those, swaps their
pieces into the merged state in place and records what that changed (the ruleset's
``delta``), from which the syncer writes an nft script of only those chains and elements.
The whole table's text is made only when needed (a render from nothing, a rewrite).

One table per address family, as kube-proxy does: ``ip mesh-proxy`` holds the IPv4
addresses of every Service and endpoint, ``ip6 mesh-proxy`` the IPv6 ones, with the same
structure (``RenderOptions.family`` picks which; each sees only addresses of its family).
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from mesh import endpoint_policy
from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.nft_merge import Delta, ServiceKey, TableState, changed_services
from mesh.proxy.nft_names import (
    ADDR_TYPE,
    CLUSTER_IPS_SET,
    DISPATCH_CHAIN,
    DISPATCH_MAP,
    DNAT_CHAIN,
    DNAT_MAP,
    DSTNAT,
    ENDPOINTS_CHECK_CHAIN,
    FILTER,
    HAIRPIN_SET,
    LOOPBACK,
    MAP_TYPES,
    MAPS,
    MARK_MASQ_CHAIN,
    MASQUERADING_CHAIN,
    NO_ENDPOINT_NODEPORTS_MAP,
    NO_ENDPOINT_SERVICES_MAP,
    NODEPORT_IPS_SET,
    REJECT_CHAIN,
    SERVICE_IPS_MAP,
    SERVICE_NODEPORTS_MAP,
    SERVICES_CHAIN,
    SETS,
    SRCNAT,
    Family,
    affinity_set,
    endpoint_chain,
    external_chain,
    map_types,
    service_chain,
    set_types,
)
from mesh.proxy.table import endpoint_order

# Above this many load-balanced Service ports, "auto" dispatch switches from one anonymous
# vmap per Service to the shared map: the kernel's cost of adding anonymous sets and of
# checking jump loops through verdict maps grows with the number of sets in the table, so
# N per-Service vmaps cost O(N^2) at commit (about 90 s for 10,000 Services on Linux 6.x).
SHARED_DISPATCH_ABOVE = 1000


@dataclass(frozen=True, slots=True)
class RenderOptions:
    table: str = "mesh-proxy"
    family: Family = "ip"  # the table's address family: "ip" (IPv4) or "ip6" (IPv6)
    masquerade_mark: int = 0x4000
    # Traffic to a ClusterIP from outside this CIDR (of the table's family) is masqueraded
    # (kube-proxy's local traffic detector); None: never.
    pod_cidr: str | None = None
    # Addresses that accept NodePort traffic; empty: every local address but 127.0.0.0/8.
    node_port_addresses: tuple[str, ...] = ()
    # Round robin: "inline" renders an anonymous map in each Service chain
    # (``dnat to numgen inc mod N map { 0 : ip . port, ... }``, or kube-proxy's
    # ``numgen inc mod N vmap { 0 : goto ... }`` with affinity); "shared" stores
    # ``numgen inc mod N offset BASE`` in the connection's ct mark and looks it up in one
    # shared map (same order, one set for the whole table); "auto" picks inline up to
    # SHARED_DISPATCH_ABOVE Service ports.
    dispatch: Literal["auto", "inline", "shared"] = "auto"


class SupersededError(RuntimeError):
    """A ruleset's table content was read after a later render from it took it over."""


class Ruleset:
    """The rendered table plus what the syncer needs to know about it.

    The plain fields stay as rendered; the table content (``chain_blocks``,
    ``element_sets``, ``affinity_sets``, ``slots``, ``udp``, ``body``) is a view of the
    merged state, readable until a later render from this ruleset takes that state over
    (then it raises :class:`SupersededError`). ``delta`` is what this render changed
    against the ruleset it was rendered from (None: rendered from nothing).
    """

    __slots__ = (
        "_body",
        "base_generation",
        "chain_count",
        "delta",
        "elements",
        "endpoints",
        "family",
        "generation",
        "marker",
        "options",
        "rules",
        "service_ports",
        "services_chain",
        "state",
        "static",
        "table",
    )  # fmt: skip

    def __init__(
        self,
        state: TableState,
        opts: RenderOptions,
        marker: str,
        delta: Delta | None,
        base_generation: int | None,
        body: str | None = None,
    ) -> None:
        self.options = opts
        self.table = opts.table
        self.family: Family = opts.family
        self.marker = marker  # comment on the services dispatch rule
        # The part that depends on the options only, and the services chain (it carries
        # the marker): an incremental sync compares them to the kernel's.
        self.static = _preamble(opts) + _dispatch(opts)
        self.services_chain = _services(opts, marker)
        self.rules = state.rules + _FIXED_RULES + (1 if opts.pod_cidr else 0)
        self.elements = sum(len(v) for v in state.elements.values())
        self.service_ports = state.service_ports
        self.endpoints = state.endpoints
        self.chain_count = len(state.chains)
        self.delta = delta
        self.state = state
        self.generation = state.generation
        self.base_generation = base_generation
        self._body = body

    @property
    def current(self) -> bool:
        return self.state.generation == self.generation

    def _content(self) -> TableState:
        if not self.current:
            raise SupersededError("this ruleset was superseded by a render from it")
        return self.state

    @property
    def chain_blocks(self) -> dict[str, str]:
        """Service and endpoint chain name -> its block."""
        return self._content().chains

    @property
    def chains(self) -> frozenset[str]:
        """The service-/local-/external-/endpoint- chains."""
        return frozenset(self._content().chains)

    @property
    def element_sets(self) -> dict[str, dict[str, str]]:
        """Each map and set: key -> value ("" in a set)."""
        return self._content().elements

    @property
    def affinity_sets(self) -> dict[str, int]:
        """Affinity set name -> timeout seconds."""
        return self._content().affinity

    @property
    def slots(self) -> dict[str, tuple[int, int]]:
        """The shared dispatch slots of each chain: (base, count)."""
        return self._content().slots

    @property
    def udp(self) -> dict[tuple[str, int], frozenset[tuple[str, int]]]:
        """UDP destinations -> endpoints, for stale conntrack cleanup: key (ip, port) for a
        Service address, ("", node port) for a NodePort."""
        return self._content().udp

    @property
    def body(self) -> str:
        """``table ip NAME { ... }`` (or ip6): the whole table as one nft block."""
        if self._body is None:
            inner = _inner(self._content(), self.family)
            self._body = _wrap(self.options, inner, self.services_chain)
        return self._body


def _of_family(addresses: Iterable[str], family: str) -> list[str]:
    six = family == "ip6"
    return [a for a in addresses if (":" in a) == six]


def _dnat_target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@functools.lru_cache(maxsize=65536)
def _ip_order(ip: str) -> tuple[int, int, int]:
    return endpoint_order((ip, 0))


@functools.lru_cache(maxsize=65536)
def _order(ep: tuple[str, int]) -> tuple[int, int, int]:
    return endpoint_order(ep)


def _targets(eps: Iterable[ProxyEndpoint], port: ProxyPort, family: str) -> list[tuple[str, int]]:
    """Usable (ip, port) pairs of the table's family in the service table's round-robin
    order."""
    six = family == "ip6"
    pairs = {(ep.address, ep.ports[port.name]) for ep in eps if (":" in ep.address) == six}
    return sorted(pairs, key=_order)


@dataclass(slots=True)
class _Out:
    chains: dict[str, str] = field(default_factory=dict)  # name -> rendered chain block
    affinity: dict[str, int] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(
        default_factory=lambda: {m: {} for m in (*MAPS, *SETS)}
    )
    udp: dict[tuple[str, int], frozenset[tuple[str, int]]] = field(default_factory=dict)
    rules: int = 0
    endpoints: int = 0
    shared: bool = False  # round robin through the shared dispatch map
    slot: int = 1  # next free dispatch slot (0 stays free: a ct mark of 0 means unset)
    slots: dict[str, tuple[int, int]] = field(default_factory=dict)
    previous_slots: dict[str, tuple[int, int]] = field(default_factory=dict)
    hairpin: set[str] = field(default_factory=set)  # "ip . ip" of each endpoint address
    reusable: bool = True  # as one Service's piece: the same when rendered again
    _ep_names: dict[tuple[int, str, int], str] = field(default_factory=dict)

    def ep_chain(self, svc: ProxyService, port: ProxyPort, ip: str, target: int) -> str:
        key = (id(port), ip, target)
        name = self._ep_names.get(key)
        if name is None:
            name = self._ep_names[key] = endpoint_chain(svc, port, ip, target)
        return name

    def chain(self, name: str, rules: list[str]) -> None:
        self.rules += len(rules)
        self.chains[name] = f"\tchain {name} {{\n\t\t" + "\n\t\t".join(rules) + "\n\t}\n"

    def element(self, map_name: str, key: str, value: str) -> bool:
        elems = self.elements[map_name]
        if key in elems:
            return False  # two Services claim one address: the first (by namespace/name) wins
        elems[key] = value
        return True

    def allocate(self, chain: str, n: int) -> int:
        """The first of ``n`` dispatch slots for ``chain``: the previous sync's when it had
        as many (so an incremental sync leaves other chains' slots and elements alone)."""
        if chain in self.slots:
            # Two ports of one Service with one name and protocol share a chain: rendering
            # the Service again may give other slots, so its piece is not reused.
            self.reusable = False
        base, count = self.previous_slots.get(chain, (0, 0))
        if count != n:
            base = self.slot
            self.slot += n
        self.slots[chain] = (base, n)
        return base


def render(
    config: ProxyConfig,
    options: RenderOptions | None = None,
    previous: Ruleset | None = None,
) -> Ruleset:
    """The whole table for ``config`` (pure: the same input gives the same content).

    With a ``previous`` ruleset that is still current (the last one rendered from its
    state) and made with the same node name and options, only the Services whose record
    changed (the config stream keeps unchanged records as the same objects) are rendered
    again and swapped into that state; the new ruleset's ``delta`` says what changed, and
    ``previous`` is superseded. Otherwise every Service is rendered, in namespace/name
    order, into a new state.
    """
    opts = options or RenderOptions()
    if previous is not None and previous.current and previous.state.updatable:
        updated = _update(config, opts, previous)
        if updated is not None:
            return updated
    ports = sum(len(s.ports) for s in config.services)
    state = TableState(made_for=(config.node_name, opts, _shared(opts, ports)))
    for key, svc in sorted(_keyed(config.services), key=lambda item: item[0]):
        if key[2]:
            state.updatable = False  # a Service given twice: the next render starts over
        state.append(key, svc, _piece(state, svc, {}))
    inner = _inner(state, opts.family)
    marker = hashlib.sha256((_preamble(opts) + inner).encode()).hexdigest()[:16]
    body = _wrap(opts, inner, _services(opts, marker))
    return Ruleset(state, opts, marker, None, None, body)


def _shared(opts: RenderOptions, ports: int) -> bool:
    return opts.dispatch == "shared" or (opts.dispatch == "auto" and ports > SHARED_DISPATCH_ABOVE)


def _keyed(services: Iterable[ProxyService]) -> list[tuple[ServiceKey, ProxyService]]:
    seen: dict[tuple[str, str], int] = {}
    out = []
    for svc in services:
        ns_name = (svc.namespace, svc.name)
        n = seen.get(ns_name, 0)
        seen[ns_name] = n + 1
        out.append(((svc.namespace, svc.name, n), svc))
    return out


def _piece(
    state: TableState, svc: ProxyService, previous_slots: dict[str, tuple[int, int]]
) -> _Out:
    """One Service's piece: only the maps and sets it uses, in the order it first used
    them (a verdict in service-ips always before its key in cluster-ips)."""
    node_name, opts, shared = state.made_for
    piece = _Out(
        elements=defaultdict(dict),
        shared=shared,
        previous_slots=previous_slots,
        slot=state.next_slot,
    )
    _render_service(piece, node_name, svc, opts)
    state.next_slot = piece.slot
    return piece


def _update(config: ProxyConfig, opts: RenderOptions, previous: Ruleset) -> Ruleset | None:
    """Swap the pieces of the changed Services into the previous ruleset's state (None:
    it cannot be, render from nothing)."""
    state = previous.state
    node_name, was_opts, shared = state.made_for
    if (node_name, was_opts) != (config.node_name, opts):
        return None
    found = changed_services(state, config.services)
    if found is None:
        return None
    changed, gone = found
    pieces = state.pieces
    ports = state.service_ports + sum(len(svc.ports) for _, svc in changed)
    ports -= sum(len(pieces[key][0].ports) for key in gone)
    ports -= sum(len(pieces[key][0].ports) for key, _ in changed if key in pieces)
    if _shared(opts, ports) != shared:
        return None  # the dispatch mode changes with the size: every chain changes
    delta = Delta()
    state.generation += 1  # from here on, ``previous`` no longer describes the state
    try:
        for key in gone:
            state.replace(key, None, delta)
        for key, svc in changed:
            was = pieces.get(key)
            # A re-rendered Service keeps the slots of each chain whose endpoint count
            # stays, so its elements in the shared maps do not change.
            piece = _piece(state, svc, was[1].slots if was is not None else {})
            state.replace(key, (svc, piece), delta)
    except BaseException:
        state.updatable = False  # half swapped: the next render starts over
        raise
    marker = previous.marker
    if delta:
        # A digest of the table before and of what changed: it names this content, and a
        # drift probe tells it from any other (computed in proportion to the change).
        h = hashlib.sha256(marker.encode())
        for part in (delta.chains, delta.elements, delta.affinity):
            h.update(repr(sorted(part.items())).encode())
        marker = h.hexdigest()[:16]
    return Ruleset(state, opts, marker, delta, state.generation - 1)


def _inner(state: TableState, family: Family) -> str:
    """The maps, sets, affinity sets and Service chains of ``state`` as nft text."""
    body_parts = []
    types = {**map_types(family), **set_types(family)}
    for name, elems in state.elements.items():
        kind = "map" if name in MAP_TYPES else "set"
        body = f"\t{kind} {name} {{\n\t\ttype {types[name]}\n"
        if name == HAIRPIN_SET:
            elems = {k: "" for k in sorted(elems, key=_hairpin_order)}
        if elems:
            body += "\t\telements = { " + ",\n\t\t\t".join(element_items(elems)) + " }\n"
        body_parts.append(body + "\t}\n")
    body_parts.extend(affinity_decl(name, t, family) for name, t in state.affinity.items())
    body_parts.extend(state.chains.values())
    return "".join(body_parts)


def _hairpin_order(key: str) -> tuple[int, int, int]:
    return _ip_order(key.partition(" ")[0])


def _wrap(opts: RenderOptions, inner: str, services_chain: str) -> str:
    head = f"table {opts.family} {opts.table} {{\n{_preamble(opts)}"
    return f"{head}{inner}{_dispatch(opts)}{services_chain}}}\n"


def _render_service(out: _Out, node_name: str, svc: ProxyService, opts: RenderOptions) -> None:
    """Every port of one Service (the seam tests count renders through)."""
    for port in svc.ports:
        _render_port(out, node_name, svc, port, opts)


def element_items(elems: dict[str, str]) -> list[str]:
    """``key : value`` for a map, ``key`` for a set."""
    return [f"{k} : {v}" if v else k for k, v in elems.items()]


def affinity_decl(name: str, timeout: int, family: str = "ip") -> str:
    return (
        f"\tset {name} {{\n\t\ttype {ADDR_TYPE[family]}\n\t\tflags dynamic,timeout\n"
        f"\t\ttimeout {timeout}s\n\t}}\n"
    )


_FIXED_RULES = 19  # rules in the preamble and the dispatch chains


def _preamble(opts: RenderOptions) -> str:
    mark = f"{opts.masquerade_mark:#x}"
    f = opts.family
    parts = []
    for name, kind, hook, prio, target in (
        ("filter-input", "filter", "input", FILTER, f"ct state new jump {ENDPOINTS_CHECK_CHAIN}"),
        (
            "filter-forward",
            "filter",
            "forward",
            FILTER,
            f"ct state new jump {ENDPOINTS_CHECK_CHAIN}",
        ),
        ("filter-output", "filter", "output", FILTER, f"ct state new jump {ENDPOINTS_CHECK_CHAIN}"),
        ("nat-prerouting", "nat", "prerouting", DSTNAT, f"jump {SERVICES_CHAIN}"),
        ("nat-output", "nat", "output", DSTNAT, f"jump {SERVICES_CHAIN}"),
        ("nat-postrouting", "nat", "postrouting", SRCNAT, f"jump {MASQUERADING_CHAIN}"),
    ):
        parts.append(
            f"\tchain {name} {{\n\t\ttype {kind} hook {hook} priority {prio}; policy accept;\n"
            f"\t\t{target}\n\t}}\n"
        )
    parts.append(f"\tchain {MARK_MASQ_CHAIN} {{\n\t\tmeta mark set meta mark or {mark}\n\t}}\n")
    parts.append(
        f"\tchain {MASQUERADING_CHAIN} {{\n"
        f"\t\tct status dnat {f} saddr . {f} daddr @{HAIRPIN_SET} jump {MARK_MASQ_CHAIN}\n"
        f"\t\tmeta mark and {mark} == 0 return\n"
        f"\t\tmeta mark set meta mark xor {mark}\n\t\tmasquerade fully-random\n\t}}\n"
    )
    parts.append(
        f"\tchain {REJECT_CHAIN} {{\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}}\n"
    )
    if opts.node_port_addresses:
        addrs = ", ".join(_of_family(opts.node_port_addresses, f))
        elements = f"\t\telements = {{ {addrs} }}\n" if addrs else ""
        parts.append(f"\tset {NODEPORT_IPS_SET} {{\n\t\ttype {ADDR_TYPE[f]}\n{elements}\t}}\n")
    return "".join(parts)


def _node_match(opts: RenderOptions) -> str:
    if opts.node_port_addresses:
        return f"{opts.family} daddr @{NODEPORT_IPS_SET}"
    return f"fib daddr type local {opts.family} daddr != {LOOPBACK[opts.family]}"


def _dispatch(opts: RenderOptions) -> str:
    node = _node_match(opts)
    return (
        f"\tchain {DISPATCH_CHAIN} {{\n\t\tct mark vmap @{DISPATCH_MAP}\n\t}}\n"
        f"\tchain {DNAT_CHAIN} {{\n"
        f"\t\tmeta l4proto {{ tcp, udp, sctp }} dnat to ct mark map @{DNAT_MAP}\n\t}}\n"
        f"\tchain {ENDPOINTS_CHECK_CHAIN} {{\n"
        f"\t\t{opts.family} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES_MAP}\n"
        f"\t\t{node} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}\n\t}}\n"
    )


def _services(opts: RenderOptions, marker: str) -> str:
    node = _node_match(opts)
    # Traffic to a ClusterIP from outside the pod CIDR is masqueraded (kube-proxy's local
    # traffic detector); the set holds the Service keys whose chains DNAT.
    f = opts.family
    masq = (
        f"\t\t{f} saddr != {opts.pod_cidr} {f} daddr . meta l4proto . th dport @{CLUSTER_IPS_SET} "
        f"jump {MARK_MASQ_CHAIN}\n"
        if opts.pod_cidr
        else ""
    )
    return (
        f"\tchain {SERVICES_CHAIN} {{\n{masq}"
        f'\t\t{f} daddr . meta l4proto . th dport vmap @{SERVICE_IPS_MAP} comment "sync {marker}"\n'
        f"\t\t{node} meta l4proto . th dport vmap @{SERVICE_NODEPORTS_MAP}\n\t}}\n"
    )


def _render_port(
    out: _Out, node_name: str, svc: ProxyService, port: ProxyPort, opts: RenderOptions
) -> None:
    proto = port.protocol.lower()
    # Each family's table sees only its endpoints, so eligibility (ready, else the serving
    # terminating fallback) is decided per family, as kube-proxy's per-family proxiers do.
    family = 6 if opts.family == "ip6" else 4
    serving = [
        ep for ep in endpoint_policy.of_family(svc.endpoints, family) if port.name in ep.ports
    ]
    cluster = _targets(endpoint_policy.usable(serving), port, opts.family)
    local: list[tuple[str, int]] = []
    if svc.internal_traffic_local or svc.external_traffic_local:  # else local goes unused
        local_eps = endpoint_policy.usable(serving, local_only=True, node_name=node_name)
        local = _targets(local_eps, port, opts.family)
    internal = local if svc.internal_traffic_local else cluster
    external = local if svc.external_traffic_local else cluster
    has_any = bool(cluster)
    cluster_ips = _of_family(svc.cluster_ips, opts.family)
    external_ips = _of_family((*svc.external_ips, *svc.load_balancer_ips), opts.family)
    node_port = port.node_port if svc.type != "ClusterIP" else None
    accessible = bool(external_ips) or node_port is not None
    # Only the chains this port can use are named (each name is a digest).
    chains = {"cluster": service_chain(svc, port)}
    if svc.internal_traffic_local or svc.external_traffic_local:
        chains["local"] = service_chain(svc, port, local=True)
    if accessible:
        chains["external"] = external_chain(svc, port)
    internal_chain = chains["local" if svc.internal_traffic_local else "cluster"]
    no_ep = f"goto {REJECT_CHAIN}" if not has_any else "drop"
    if proto == "udp":
        for ip in cluster_ips:
            out.udp.setdefault((ip, port.port), frozenset(internal))
        for ip in external_ips:
            out.udp.setdefault((ip, port.port), frozenset(external))
        if node_port is not None:
            out.udp.setdefault(("", node_port), frozenset(external))
    for ip in cluster_ips:
        key = f"{ip} . {proto} . {port.port}"
        if internal:
            if out.element(SERVICE_IPS_MAP, key, f"goto {internal_chain}") and opts.pod_cidr:
                out.element(CLUSTER_IPS_SET, key, "")
        else:
            out.element(NO_ENDPOINT_SERVICES_MAP, key, no_ep)
    for ip in external_ips:
        key = f"{ip} . {proto} . {port.port}"
        if has_any:
            out.element(SERVICE_IPS_MAP, key, f"goto {chains['external']}")
        if not external:
            out.element(NO_ENDPOINT_SERVICES_MAP, key, no_ep)
    if node_port is not None:
        key = f"{proto} . {node_port}"
        if has_any:
            out.element(SERVICE_NODEPORTS_MAP, key, f"goto {chains['external']}")
        if not external:
            out.element(NO_ENDPOINT_NODEPORTS_MAP, key, no_ep)
    if not has_any:
        return
    timeout = svc.affinity_timeout if svc.session_affinity else None
    used_cluster = bool(cluster) and (not svc.internal_traffic_local or accessible)
    used_local = bool(local) and (svc.internal_traffic_local or svc.external_traffic_local)
    if accessible:
        out.chain(chains["external"], _external_rules(svc, chains, bool(external), opts))
    for kind, targets, used in (("cluster", cluster, used_cluster), ("local", local, used_local)):
        if not used:
            continue
        rules: list[str] = []
        if timeout is None:
            rules.extend(_balance_dnat(out, chains[kind], proto, targets))
        else:
            rules.extend(_balance(out, chains[kind], svc, port, targets, opts.family))
        out.chain(chains[kind], rules)
    reachable = set(cluster if used_cluster else ()) | set(local if used_local else ())
    out.endpoints += len(reachable)
    out.hairpin.update(f"{ip} . {ip}" for ip, _ in reachable)
    if timeout is None:
        return
    for ip, target in sorted(reachable, key=_order):
        aff = affinity_set(svc, port, ip, target)
        out.affinity[aff] = timeout
        rules = [
            f"update @{aff} {{ {opts.family} saddr }}",
            f"meta l4proto {proto} dnat to {_dnat_target(ip, target)}",
        ]
        out.chain(out.ep_chain(svc, port, ip, target), rules)


def _external_rules(
    svc: ProxyService, chains: dict[str, str], has_external: bool, opts: RenderOptions
) -> list[str]:
    if not svc.external_traffic_local:
        # Endpoints may be anywhere: masquerade so replies come back through this node.
        return [f"jump {MARK_MASQ_CHAIN}", f"goto {chains['cluster']}"]
    rules = []
    if opts.pod_cidr:
        # Pods reaching an external address act as if they went out and came back in.
        rules.append(
            f'{opts.family} saddr {opts.pod_cidr} goto {chains["cluster"]} comment "pod traffic"'
        )
    rules.append(f'fib saddr type local jump {MARK_MASQ_CHAIN} comment "node traffic"')
    rules.append(f"fib saddr type local goto {chains['cluster']}")
    if has_external:
        rules.append(f"goto {chains['local']}")
    return rules


def _balance_dnat(out: _Out, chain: str, proto: str, targets: list[tuple[str, int]]) -> list[str]:
    """Round robin without affinity: DNAT from a map of slot -> endpoint, no chains."""
    if len(targets) == 1:
        ip, target = targets[0]
        return [f"meta l4proto {proto} dnat to {_dnat_target(ip, target)}"]
    n = len(targets)
    if out.shared:
        base = out.allocate(chain, n)
        addrs = out.elements[DNAT_MAP]
        for i, (ip, t) in enumerate(targets):
            addrs[str(base + i)] = f"{ip} . {t}"
        return [f"ct mark set numgen inc mod {n} offset {base} goto {DNAT_CHAIN}"]
    arms = ", ".join(f"{i} : {ip} . {t}" for i, (ip, t) in enumerate(targets))
    return [f"meta l4proto {proto} dnat to numgen inc mod {n} map {{ {arms} }}"]


def _balance(
    out: _Out,
    chain: str,
    svc: ProxyService,
    port: ProxyPort,
    targets: list[tuple[str, int]],
    family: str,
) -> list[str]:
    """Round robin with ClientIP affinity, through per-endpoint chains."""
    chains = [out.ep_chain(svc, port, ip, t) for ip, t in targets]
    rules = [
        f"{family} saddr @{affinity_set(svc, port, ip, t)} goto {chain}"
        for (ip, t), chain in zip(targets, chains, strict=True)
    ]
    if len(chains) == 1:
        rules.append(f"goto {chains[0]}")
    elif out.shared:
        base = out.allocate(chain, len(chains))
        dispatch = out.elements[DISPATCH_MAP]
        for i, c in enumerate(chains):
            dispatch[str(base + i)] = f"goto {c}"
        rules.append(
            f"ct mark set numgen inc mod {len(chains)} offset {base} goto {DISPATCH_CHAIN}"
        )
    else:
        arms = ", ".join(f"{i} : goto {c}" for i, c in enumerate(chains))
        rules.append(f"numgen inc mod {len(chains)} vmap {{ {arms} }}")
    return rules
