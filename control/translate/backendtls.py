"""TLS from the gateway to a backend: ingress-nginx's ``backend-protocol: HTTPS`` with its
``proxy-ssl-*`` annotations, and Gateway API's BackendTLSPolicy. Pure functions of a snapshot.

ingress-nginx (``ingress_tls``). TLS to the endpoints, the certificate NOT verified unless
``proxy-ssl-verify: "on"`` (nginx's ``proxy_ssl_verify off``); then the chain is verified
against ``ca.crt`` of ``proxy-ssl-secret`` (``namespace/name``, the Ingress's namespace) and
the name against ``proxy-ssl-name``. SNI is sent only with ``proxy-ssl-server-name: "on"``
(nginx's default is off), naming ``proxy-ssl-name``. Where ingress-nginx would verify against
its upstream block's name (``upstream_balancer``, which no certificate carries) when
``proxy-ssl-name`` is not set, the name here is the Service's cluster name
``<service>.<namespace>.svc``. A verification that cannot be set up (no Secret, no
``ca.crt``, a CA that does not load) takes the Ingress's paths out of service rather than
connecting unverified; ``proxy-ssl-*`` without ``backend-protocol: HTTPS`` is reported and has
no effect.

BackendTLSPolicy (``PolicyIndex``). A policy targets Services of its own namespace
(``targetRefs``, kind Service, group ""), the whole Service or one port by ``sectionName``
(the port's name); a policy for the port wins over one for the whole Service, and among
policies for the same target the oldest, then the first by namespace/name (the others are
``Conflicted``). ``validation.hostname`` is the SNI and the name verified, unless
``subjectAltNames`` are given, which are then verified instead. The CA is the ``ca.crt`` key
of a ConfigMap in the policy's namespace (``caCertificateRefs``) or the system's trust store
(``wellKnownCACertificates: System``). Status: one ancestor entry per Gateway of ours whose
routes send to a targeted Service, with ``Accepted`` (``Accepted``, ``Conflicted``,
``Invalid``, ``NoValidCACertificate``) and ``ResolvedRefs`` (``ResolvedRefs``,
``InvalidCACertificateRef``, ``InvalidKind``). A backend whose policy is not accepted answers
500 (the spec asks for a 5xx), never plain text where TLS was asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh.config.gateway import BackendTls, GatewayBackend
from mesh.control.translate.conditions import ACCEPTED, RESOLVED_REFS, condition
from mesh.control.translate.nginx import PREFIX, Annotations
from mesh.objects import (
    BackendTLSPolicy,
    Condition,
    ConfigMap,
    Ingress,
    ParentReference,
    PolicyAncestorStatus,
    PolicyStatus,
    Secret,
)
from mesh.tls.upstream import check_ca

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

CONTROLLER = "mesh.dev/gateway"
SYSTEM = "System"


def tls_backend(backend: GatewayBackend, tls: BackendTls, tag: str) -> GatewayBackend:
    """``backend`` re-encrypted: its own name (``<service port>/<tag>``), so routes to the same
    Service port with and without TLS, or with other TLS settings, never share a backend."""
    return backend.model_copy(
        update={"name": f"{backend.name}/{tag}", "protocol": "https", "tls": tls}
    )


# --- ingress-nginx ------------------------------------------------------------------------


def ingress_tls(
    snapshot: Snapshot, ing: Ingress, ann: Annotations, service: str
) -> tuple[BackendTls | None, str, str | None]:
    """(settings, backend name tag, problem) for one Ingress's backends. Settings None: plain
    HTTP (and a problem: not served)."""
    who = f"Ingress {ing.namespace}/{ing.name}"
    if ann.backend_protocol != "https":
        return None, "", None
    name = ann.proxy_ssl_name or f"{service}.{ing.namespace}.svc"
    ca_pem: str | None = None
    if ann.proxy_ssl_verify:
        if ann.proxy_ssl_secret is None:
            return None, "", f"{PREFIX}proxy-ssl-verify: on needs proxy-ssl-secret with ca.crt"
        ns, secret_name = ann.proxy_ssl_secret
        secret = snapshot.get(Secret.KIND, ns, secret_name)
        raw = secret.value("ca.crt") if isinstance(secret, Secret) else None
        if raw is None:
            what = "not found" if not isinstance(secret, Secret) else "has no ca.crt"
            return None, "", f"{PREFIX}proxy-ssl-secret {ns}/{secret_name} {what}"
        bad = check_ca(raw)
        if bad is not None:
            return None, "", f"{PREFIX}proxy-ssl-secret {ns}/{secret_name}: ca.crt {bad}"
        ca_pem = raw.decode("ascii", "replace")
    tls = BackendTls(
        source=who,
        server_name=name if ann.proxy_ssl_server_name else None,
        verify=ann.proxy_ssl_verify,
        verify_names=(name,) if ann.proxy_ssl_verify else (),
        ca_pem=ca_pem,
    )
    return tls, _tag(tls), None


def _tag(tls: BackendTls) -> str:
    if tls == BackendTls(source=tls.source):
        return "https"  # ingress-nginx's default: one name for every such backend
    digest = hashlib.sha256(tls.model_dump_json(exclude={"source"}).encode()).hexdigest()
    return f"https-{digest[:8]}"


# --- BackendTLSPolicy ---------------------------------------------------------------------


@dataclass
class PolicyResult:
    policy: BackendTLSPolicy
    tls: BackendTls | None  # None: unusable (its backends answer 500); kept when Conflicted
    accepted: Condition
    resolved: Condition


class PolicyIndex:
    """The BackendTLSPolicies of a snapshot, evaluated once, looked up per Service port."""

    def __init__(self, snapshot: Snapshot) -> None:
        policies = sorted(
            (p for p in snapshot.list(BackendTLSPolicy.KIND) if isinstance(p, BackendTLSPolicy)),
            key=lambda p: (p.metadata.creation_timestamp or "~", p.namespace, p.name),
        )
        self.results: dict[tuple[str, str], PolicyResult] = {}
        # (namespace, service, port name or None) -> the winning policy's key
        self._targets: dict[tuple[str, str, str | None], tuple[str, str]] = {}
        self.ancestors: dict[tuple[str, str], set[tuple[str, str]]] = {}
        # winner -> the policies it beat to a target: they are Conflicted where it is used
        self._beaten: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for p in policies:
            key = (p.namespace, p.name)
            result = _evaluate(snapshot, p)
            conflicted = False
            for ref in p.spec.target_refs:
                if ref.group != "" or ref.kind != "Service":
                    continue
                target = (p.namespace, ref.name, ref.section_name)
                if target in self._targets:
                    conflicted = True
                    self._beaten.setdefault(self._targets[target], set()).add(key)
                else:
                    self._targets[target] = key
            if conflicted:
                gen = p.metadata.generation
                msg = "an older BackendTLSPolicy targets the same Service port"
                result.accepted = condition(ACCEPTED, False, "Conflicted", msg, gen)
                # Its settings stay: the targets it alone names are still re-encrypted by
                # it (``_targets`` holds only winners, so it never applies where it lost).
            self.results[key] = result

    def lookup(self, namespace: str, service: str, port_name: str) -> PolicyResult | None:
        """The policy for a Service port: by its name (sectionName), else the whole Service."""
        key = self._targets.get((namespace, service, port_name or None)) or self._targets.get(
            (namespace, service, None)
        )
        if key is None:
            return None
        # Only the policy that wins a target applies (a policy conflicted on another target
        # still wins this one: dropping it here would send this Service's traffic in plain
        # text).
        return self.results[key]

    def used_by(self, result: PolicyResult, gateway: tuple[str, str]) -> None:
        """``gateway`` routes to a target of the policy: it is one of the policy's ancestors
        (and of the policies it beat to that target, which say Conflicted there)."""
        key = (result.policy.namespace, result.policy.name)
        for k in (key, *self._beaten.get(key, ())):
            self.ancestors.setdefault(k, set()).add(gateway)

    def statuses(self) -> dict[tuple[str, str], PolicyStatus]:
        """Every policy's status: our ancestors (Gateways whose routes use a target) with their
        conditions, other controllers' entries kept as they were."""
        out = {}
        for key, result in self.results.items():
            others = tuple(
                a for a in result.policy.status.ancestors if a.controller_name != CONTROLLER
            )
            ours = tuple(
                PolicyAncestorStatus(
                    ancestor_ref=ParentReference(namespace=ns, name=name),
                    controller_name=CONTROLLER,
                    conditions=(result.accepted, result.resolved),
                )
                for ns, name in sorted(self.ancestors.get(key, ()))
            )
            out[key] = PolicyStatus(ancestors=(*others, *ours))
        return out


def _evaluate(snapshot: Snapshot, p: BackendTLSPolicy) -> PolicyResult:
    gen = p.metadata.generation
    v = p.spec.validation
    ok_refs = condition(RESOLVED_REFS, True, "ResolvedRefs", "", gen)

    def refused(reason: str, message: str, resolved: Condition = ok_refs) -> PolicyResult:
        return PolicyResult(p, None, condition(ACCEPTED, False, reason, message, gen), resolved)

    if any(t.group != "" or t.kind != "Service" for t in p.spec.target_refs):
        return refused("Invalid", 'only Services (group "") can be targeted')
    ca_pem: str | None = None
    if v.well_known_ca_certificates is not None:
        if v.well_known_ca_certificates != SYSTEM:
            return refused(
                "Invalid",
                f"wellKnownCACertificates {v.well_known_ca_certificates!r} is not supported "
                "(System)",
            )
    else:
        pems, bad_refs = [], []
        for ref in v.ca_certificate_refs:
            problem = _ca_ref(snapshot, p.namespace, ref.group, ref.kind, ref.name)
            if isinstance(problem, tuple):
                bad_refs.append(problem)
            else:
                pems.append(problem)
        if bad_refs:
            # Connections through an invalid reference must fail: the policy's backends
            # answer 500 whether or not another reference is valid.
            reason, message = bad_refs[0]
            bad = condition(RESOLVED_REFS, False, reason, message, gen)
            if len(bad_refs) == len(v.ca_certificate_refs):
                return refused("NoValidCACertificate", "no valid CA certificate", bad)
            return PolicyResult(p, None, condition(ACCEPTED, True, "Accepted", "", gen), bad)
        ca_pem = "".join(pems)
    names = tuple(s.hostname for s in v.subject_alt_names if s.type == "Hostname" and s.hostname)
    uris = tuple(s.uri for s in v.subject_alt_names if s.type == "URI" and s.uri)
    tls = BackendTls(
        source=f"BackendTLSPolicy {p.namespace}/{p.name}",
        server_name=v.hostname,
        verify=True,
        verify_names=names or (() if uris else (v.hostname,)),
        verify_uris=uris,
        ca_pem=ca_pem,
    )
    return PolicyResult(p, tls, condition(ACCEPTED, True, "Accepted", "", gen), ok_refs)


def _ca_ref(
    snapshot: Snapshot, namespace: str, group: str, kind: str, name: str
) -> str | tuple[str, str]:
    """The PEM a CA reference holds, or (reason, message) saying why it cannot be used."""
    if group != "" or kind != "ConfigMap":
        return (
            "InvalidKind",
            f"caCertificateRefs: {group or 'core'}/{kind} {name} is not a ConfigMap",
        )
    cm = snapshot.get(ConfigMap.KIND, namespace, name)
    if not isinstance(cm, ConfigMap):
        return "InvalidCACertificateRef", f"ConfigMap {namespace}/{name} not found"
    raw = cm.data.get("ca.crt")
    if raw is None:
        return "InvalidCACertificateRef", f"ConfigMap {namespace}/{name} has no ca.crt"
    problem = check_ca(raw.encode("ascii", "replace"))
    if problem is not None:
        return "InvalidCACertificateRef", f"ConfigMap {namespace}/{name}: ca.crt {problem}"
    return raw.strip() + "\n"


def policy_backend(result: PolicyResult, backend: GatewayBackend) -> GatewayBackend | None:
    """The backend as its policy makes it: re-encrypted, or None (answers 500) when the
    policy is not accepted."""
    if result.tls is None:
        return None
    return tls_backend(backend, result.tls, f"tls:{result.policy.name}")
