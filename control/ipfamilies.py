"""A Service's ``ipFamilyPolicy`` and ``ipFamilies``, defaulted and checked as kube-apiserver
does at admission (its ``initIPFamilyFields``), for a cluster with one or two service ranges.

The rules, in the API server's order:

- ExternalName Services are left alone (the caller does not ask).
- No policy: an update keeps the stored one; a headless Service without a selector gets
  RequireDualStack (its endpoints may be of either family); anything else SingleStack.
- An apply that leaves ``clusterIPs`` out keeps the stored ones (they are immutable); with
  policy SingleStack it keeps only the primary one (a downgrade). A PreferDualStack Service
  whose fields did not change is not upgraded or downgraded when the cluster's ranges change.
- SingleStack with two clusterIPs or two families is refused; families follow the clusterIPs
  given, and a clusterIP of a family the cluster has no range for is refused.
- Headless without a selector: families default to the primary one, plus the other family
  unless SingleStack, even on a single-stack cluster (no address is allocated).
- RequireDualStack on a single-stack cluster is refused ("this cluster is not configured for
  dual-stack services"); so is any family the cluster has no range for.
- Families default to the cluster's primary one (the first ``--service-cidr`` range); a
  Prefer- or RequireDualStack Service on a dual-stack cluster gets the other one as well.

Pure: no allocation happens here, only the decision of which families get an address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mesh.control.store import Rejected
from mesh.objects import Service

Family = Literal["IPv4", "IPv6"]
Policy = Literal["SingleStack", "PreferDualStack", "RequireDualStack"]

_OTHER: dict[Family, Family] = {"IPv4": "IPv6", "IPv6": "IPv4"}


def family_of(ip: str) -> Family:
    return "IPv6" if ":" in ip else "IPv4"


@dataclass(frozen=True, slots=True)
class Families:
    """The decision: the policy, the families in order, and per family the address the
    Service asks for or keeps ("" when one must be allocated; ("None",) when headless)."""

    policy: Policy
    families: tuple[Family, ...]
    cluster_ips: tuple[str, ...]


def _invalid(field: str, value: str | Sequence[str], why: str) -> Rejected:
    shown = value if isinstance(value, str) else ",".join(value)
    return Rejected(f'{field}: Invalid value: "{shown}": {why}')


def decide(svc: Service, prev: Service | None, cluster: Sequence[Family]) -> Families:
    """The families of ``svc`` (being written over ``prev``) on a cluster whose service
    ranges are of ``cluster`` (primary first). Raises Rejected with the API server's reason."""
    spec = svc.spec
    if (
        prev is None
        and not spec.cluster_ips
        and not spec.ip_families
        and spec.ip_family_policy is None
        and spec.cluster_ip != "None"
    ):
        # A create that asks for nothing (every Service of a big manifest): the rules of
        # _decide come to single-stack in the primary family with an address to allocate.
        return Families("SingleStack", (cluster[0],), ("",))
    return _decide(svc, prev, cluster)


def _decide(svc: Service, prev: Service | None, cluster: Sequence[Family]) -> Families:
    """:func:`decide` by the rules, for any Service."""
    spec = svc.spec
    old = prev.spec if prev is not None and prev.spec.type != "ExternalName" else None
    headless = spec.headless
    ips = list(spec.cluster_ips)
    families: list[Family] = list(spec.ip_families)
    inherited = False
    if not ips and old is not None and old.cluster_ips and not old.headless:
        ips, inherited = list(old.cluster_ips), True
        families = families or list(old.ip_families)
    elif headless and old is not None and old.headless and not families:
        families = list(old.ip_families)
    policy: Policy
    if spec.ip_family_policy is not None:
        policy = spec.ip_family_policy
    elif old is not None and old.ip_family_policy is not None:
        policy = old.ip_family_policy
    elif headless and not spec.selector:
        policy = "RequireDualStack"
    else:
        policy = "SingleStack"
    if (
        inherited
        and old is not None
        and policy == old.ip_family_policy == "PreferDualStack"
        and families == list(old.ip_families)
    ):
        return Families(policy, tuple(families), tuple(ips))
    if len(families) > 2 or len(set(families)) != len(families):
        raise _invalid("spec.ipFamilies", families, "may hold at most one entry per IP family")
    if inherited and policy == "SingleStack":
        ips, families = ips[:1], families[:1]  # releasing the secondary address
    addressed = [ip for ip in ips if ip != "None"]
    if policy == "SingleStack" and len(addressed) == 2:
        raise _invalid(
            "spec.ipFamilyPolicy",
            policy,
            "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
        )
    if policy == "SingleStack" and len(families) == 2:
        raise _invalid(
            "spec.ipFamilyPolicy",
            policy,
            "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
        )
    for i, ip in enumerate(addressed):
        fam = family_of(ip)
        if i < len(families) and families[i] != fam:
            raise _invalid(
                f"spec.ipFamilies[{i}]", families[i], f"must match the family of clusterIPs[{i}]"
            )
        if fam not in cluster:
            raise _invalid(f"spec.clusterIPs[{i}]", ips, f"{fam} is not configured on this cluster")
        if i >= len(families):
            families.append(fam)
    if headless and not spec.selector:
        families = families or [cluster[0]]
        if len(families) < 2 and policy != "SingleStack":
            families.append(_OTHER[families[0]])
        return Families(policy, tuple(families), ("None",))
    if policy == "RequireDualStack" and len(cluster) < 2:
        raise _invalid(
            "spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"
        )
    for i, fam in enumerate(families):
        if fam not in cluster:
            raise _invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster")
    families = families or [cluster[0]]
    if policy != "SingleStack" and len(families) == 1 and len(cluster) == 2:
        families.append(_OTHER[families[0]])
    if headless:
        return Families(policy, tuple(families), ("None",))
    wanted = tuple(addressed[i] if i < len(addressed) else "" for i in range(len(families)))
    return Families(policy, tuple(families), wanted)
