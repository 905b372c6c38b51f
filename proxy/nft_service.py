"""One Service port rendered as nftables text: its chains, map and set elements, affinity
sets, shared dispatch slots and UDP targets, collected in a :class:`ServicePiece` (one per
Service; the renderer merges them, see nft_render and nft_merge).

Each Service port gets a chain ``service-HASH-ns/name/proto/port`` (``local-`` for a Local
internal traffic policy) that picks an endpoint round robin and DNATs to it; external
traffic enters through ``external-HASH-...``. Endpoint eligibility (ready, serving-
terminating fallback, node-local for policy Local) and order are the service table's, so
both proxy modes agree.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh import endpoint_policy
from mesh.config.proxy import ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.backend import endpoint_order
from mesh.proxy.nft_names import (
    CLUSTER_IPS_SET,
    DISPATCH_CHAIN,
    DISPATCH_MAP,
    DNAT_CHAIN,
    DNAT_MAP,
    MAPS,
    MARK_MASQ_CHAIN,
    NO_ENDPOINT_NODEPORTS_MAP,
    NO_ENDPOINT_SERVICES_MAP,
    REJECT_CHAIN,
    SERVICE_IPS_MAP,
    SERVICE_NODEPORTS_MAP,
    SETS,
    RenderOptions,
    affinity_set,
    endpoint_chain,
    external_chain,
    service_chain,
)


def of_family(addresses: Iterable[str], family: str) -> list[str]:
    six = family == "ip6"
    return [a for a in addresses if (":" in a) == six]


def _dnat_target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@functools.lru_cache(maxsize=65536)
def ip_order(ip: str) -> tuple[int, int, int]:
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
class ServicePiece:
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


def render_port(
    out: ServicePiece, node_name: str, svc: ProxyService, port: ProxyPort, opts: RenderOptions
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
    cluster_ips = of_family(svc.cluster_ips, opts.family)
    external_ips = of_family((*svc.external_ips, *svc.load_balancer_ips), opts.family)
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


def _balance_dnat(
    out: ServicePiece, chain: str, proto: str, targets: list[tuple[str, int]]
) -> list[str]:
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
    out: ServicePiece,
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
