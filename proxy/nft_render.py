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

import hashlib
from collections import defaultdict
from collections.abc import Iterable

from mesh.config.proxy import ProxyConfig, ProxyService
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
    MARK_MASQ_CHAIN,
    MASQUERADING_CHAIN,
    NO_ENDPOINT_NODEPORTS_MAP,
    NO_ENDPOINT_SERVICES_MAP,
    NODEPORT_IPS_SET,
    REJECT_CHAIN,
    SERVICE_IPS_MAP,
    SERVICE_NODEPORTS_MAP,
    SERVICES_CHAIN,
    SHARED_DISPATCH_ABOVE,
    SRCNAT,
    Family,
    RenderOptions,
    map_types,
    set_types,
)
from mesh.proxy.nft_service import ServicePiece, ip_order, of_family, render_port

__all__ = [
    "SHARED_DISPATCH_ABOVE",
    "RenderOptions",
    "Ruleset",
    "SupersededError",
    "affinity_decl",
    "element_items",
    "render",
]


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
) -> ServicePiece:
    """One Service's piece: only the maps and sets it uses, in the order it first used
    them (a verdict in service-ips always before its key in cluster-ips)."""
    node_name, opts, shared = state.made_for
    piece = ServicePiece(
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
    return ip_order(key.partition(" ")[0])


def _wrap(opts: RenderOptions, inner: str, services_chain: str) -> str:
    head = f"table {opts.family} {opts.table} {{\n{_preamble(opts)}"
    return f"{head}{inner}{_dispatch(opts)}{services_chain}}}\n"


def _render_service(
    out: ServicePiece, node_name: str, svc: ProxyService, opts: RenderOptions
) -> None:
    """Every port of one Service (the seam tests count renders through)."""
    for port in svc.ports:
        render_port(out, node_name, svc, port, opts)


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
        addrs = ", ".join(of_family(opts.node_port_addresses, f))
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
