"""Writing the ``nft -f`` script of one sync: :func:`transaction` makes the kernel's table
equal to a rendered :class:`Ruleset`, given what the kernel holds.

A full sync replaces the table (``add table; delete table; table {...}``). Otherwise the sync
is incremental, as kube-proxy's: the ruleset's ``delta`` (what its render changed, in proportion
to the changed Services) says which chains to flush and rewrite and which map and set elements
to delete and add; chains and affinity sets that went away are deleted by the next sync
(:class:`Lingering`, :data:`LATE_DELETE`); affinity sets that stay keep their entries (clients
keep their endpoints across syncs). Two rulesets rendered apart are diffed whole instead. When
an affinity timeout changed, every rule and map is flushed and re-added instead (a set's
timeout cannot change in place), deleting the sets that went away or changed.

Pure: strings in, a string out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mesh.proxy.nft_merge import Delta, diff_dicts
from mesh.proxy.nft_names import DISPATCH_MAP, DNAT_MAP, MAPS, SERVICES_CHAIN, map_types, set_types
from mesh.proxy.nft_render import Ruleset, affinity_decl, element_items

# Maps keyed by a dispatch slot, read by a later chain of the packet's traversal than the rule
# that picked the slot. The kernel reads a chain's rules in the generation the packet started
# in, but looks set elements up in the generation current at lookup time: a packet that ran a
# Service's old chain during a commit could miss a slot that commit deleted, leave un-NATed,
# and its conntrack entry would keep that connection broken. So what an update drops from
# these maps, and the chains their verdicts point at, is deleted late, by the next sync (as
# kube-proxy deletes stale objects late). Slots are not reused before the next full sync, so a
# lingering one is never picked again.
LATE_DELETE = frozenset({DISPATCH_MAP, DNAT_MAP})


@dataclass(frozen=True, slots=True)
class Lingering:
    """What an update retired and left in the kernel for the next sync to delete."""

    elements: dict[str, list[str]] = field(default_factory=dict)  # map -> slot keys
    chains: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()  # affinity sets of retired endpoint chains

    def __bool__(self) -> bool:
        return bool(self.elements or self.chains or self.sets)


def delta_between(new: Ruleset, previous: Ruleset) -> Delta:
    """What differs from ``previous`` to ``new``: the delta ``new`` was rendered with when it
    was rendered from ``previous`` (in proportion to the change), else a diff of the two
    whole tables (both must be current)."""
    if new.state is previous.state and new.base_generation == previous.generation:
        assert new.delta is not None
        return new.delta
    if new is previous:
        return Delta()
    elements = {}
    for name in new.element_sets.keys() | previous.element_sets.keys():
        changes = diff_dicts(previous.element_sets.get(name, {}), new.element_sets.get(name, {}))
        if changes:
            elements[name] = changes
    return Delta(
        chains=diff_dicts(previous.chain_blocks, new.chain_blocks),
        elements=elements,
        affinity=diff_dicts(previous.affinity_sets, new.affinity_sets),
        udp=diff_dicts(previous.udp, new.udp),
    )


def transaction(new: Ruleset, previous: Ruleset | None, lingering: Lingering | None = None) -> str:
    """One atomic nft script that makes the table equal to ``new``, given that the kernel
    holds ``previous`` (None: unknown, replace the table) plus what ``lingering`` names,
    which this script deletes."""
    t = f"{new.family} {new.table}"
    kind = transaction_kind(new, previous)
    if kind == "replace" or previous is None:
        return f"add table {t}\ndelete table {t}\n{new.body}"
    delta = delta_between(new, previous)
    if kind == "rewrite":
        return _rewrite(new, delta, lingering or Lingering())
    return _update(new, previous, delta, lingering or Lingering())


def transaction_kind(
    new: Ruleset, previous: Ruleset | None
) -> Literal["replace", "rewrite", "update"]:
    """replace: a new table; rewrite: flush and refill it (an affinity timeout changed, and
    the entries of the others must be kept); update: only what changed."""
    if previous is None or (previous.table, previous.static) != (new.table, new.static):
        return "replace"
    changed = delta_between(new, previous).affinity.values()
    if any(before is not None and after is not None for before, after in changed):
        return "rewrite"
    return "update"


def retired(new: Ruleset, previous: Ruleset | None) -> Lingering:
    """What an update from ``previous`` to ``new`` leaves in the kernel for later (nothing
    after a replace or a rewrite, which remove everything ``new`` does not hold)."""
    if previous is None or transaction_kind(new, previous) != "update":
        return Lingering()
    delta = delta_between(new, previous)
    elements = {}
    for name in sorted(LATE_DELETE):
        keys = [k for k, (_, after) in delta.elements.get(name, {}).items() if after is None]
        if keys:
            elements[name] = sorted(keys, key=_slot_order)
    chains = tuple(sorted(c for c, (_, after) in delta.chains.items() if after is None))
    sets = tuple(sorted(a for a, (_, after) in delta.affinity.items() if after is None))
    return Lingering(elements, chains, sets)


def _slot_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (0, key)


def _update(new: Ruleset, previous: Ruleset, delta: Delta, lingering: Lingering) -> str:
    """Only what changed: chains flushed and rewritten, elements deleted and added. Slots and
    chains dropped now stay for the next sync; the ``lingering`` ones go now."""
    t = f"{new.family} {new.table}"
    late_chains = set(lingering.chains)
    changed: list[str] = []
    added: list[str] = []
    for c, (before, after) in delta.chains.items():
        if after is None:
            continue  # retired: deleted by the next sync
        # A chain retired by the last sync and wanted again is still in the kernel.
        (changed if before is not None or c in late_chains else added).append(c)
    blocks_now = new.chain_blocks
    back = [c for c in lingering.chains if c in blocks_now and c not in delta.chains]
    changed += back  # retired last time, unchanged since it came back: still rewrite it
    late = [c for c in lingering.chains if c not in blocks_now]
    lines = [f"add table {t}"]
    lines.extend(f"flush chain {t} {c}" for c in (*changed, *late))
    blocks = [
        affinity_decl(a, after, new.family)
        for a, (before, after) in delta.affinity.items()
        if before is None and after is not None and a not in lingering.sets
    ]
    blocks.extend(blocks_now[c] for c in (*changed, *added))
    if new.services_chain != previous.services_chain:
        lines.append(f"flush chain {t} {SERVICES_CHAIN}")
        blocks.append(new.services_chain)
    elements_now = new.element_sets
    for name, keys in lingering.elements.items():
        gone = [k for k in keys if k not in elements_now.get(name, {})]
        if gone:
            lines.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
    adds = []
    for name, changes in delta.elements.items():
        late_map = name in LATE_DELETE  # changed values now, dropped keys later
        stale = [
            k
            for k, (before, after) in changes.items()
            if before is not None and (after is not None or not late_map)
        ]
        fresh = {k: after for k, (_, after) in changes.items() if after is not None}
        if stale:
            lines.append(f"delete element {t} {name} {{ {', '.join(stale)} }}")
        if fresh:
            adds.append(f"add element {t} {name} {{ {', '.join(element_items(fresh))} }}")
    if blocks:
        lines.append(f"table {t} {{\n" + "".join(blocks) + "}")
    lines.extend(adds)
    lines.extend(f"delete chain {t} {c}" for c in late)
    lines.extend(f"delete set {t} {a}" for a in lingering.sets if a not in new.affinity_sets)
    return "\n".join(lines) + "\n"


def _rewrite(new: Ruleset, delta: Delta, lingering: Lingering) -> str:
    """Every rule and element again, keeping the affinity sets whose timeout stays."""
    t = f"{new.family} {new.table}"
    lines = [f"add table {t}", f"flush table {t}"]
    types = map_types(new.family)
    for name in MAPS:
        lines.append(f"add map {t} {name} {{ type {types[name]}; }}")
        lines.append(f"flush map {t} {name}")
    for name, kind in set_types(new.family).items():
        lines.append(f"add set {t} {name} {{ type {kind}; }}")
        lines.append(f"flush set {t} {name}")
    gone = {c for c, (_, after) in delta.chains.items() if after is None}
    gone.update(c for c in lingering.chains if c not in new.chain_blocks)
    for chain in sorted(gone):
        lines.append(f"delete chain {t} {chain}")
    sets = {a for a, (before, _) in delta.affinity.items() if before is not None}
    sets.update(a for a in lingering.sets if a not in new.affinity_sets)
    for aff in sorted(sets):
        lines.append(f"delete set {t} {aff}")  # gone, or its timeout changed
    lines.append(new.body)
    return "\n".join(lines)
