"""Ingress v1 (with ingress-nginx's annotations) -> routes of the gateway's route model.

The rules:

- Class: an Ingress is ours when ``spec.ingressClassName`` names an IngressClass whose
  controller is ``mesh.dev/ingress``; the legacy ``kubernetes.io/ingress.class`` annotation,
  when present, is read instead (ingress-nginx reads it first); with neither, when one of our
  IngressClasses is marked ``ingressclass.kubernetes.io/is-default-class: "true"``. Others are
  left alone.
- Hosts exact or ``*.`` (one label). pathType Exact, Prefix (by path element, trailing slash
  ignored) and ImplementationSpecific, which is Prefix here. Longest match wins, Exact before
  Prefix (mesh.http.routes sorts). Rules of all Ingresses of one host are merged; when two
  define the same path, the oldest Ingress wins (then namespace/name), as in ingress-nginx.
- When any Ingress of a host sets ``use-regex`` or ``rewrite-target``, every non-Exact path of
  that host is a case-insensitive regular expression anchored at its start (ingress-nginx's
  ``location ~*``).
- ``spec.defaultBackend`` serves the paths of the Ingress's hosts that no rule matched, and
  every host when the Ingress has no rules. Resource backends are refused with a problem.
- Canary Ingresses join the route of the same host and path of a main Ingress; each canary
  keeps its own weight. A canary with no main Ingress for its host and path is reported.
- ``ssl-redirect`` (default on) sends plain-HTTP requests for hosts listed in the Ingress's
  TLS section to HTTPS with 308; ``force-ssl-redirect`` does so without TLS too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.config.gateway import (
    BasicAuth,
    Canary,
    CertificateRef,
    GatewayBackend,
    HeaderEdits,
    Match,
    PathMatch,
    PathRewrite,
    Policy,
    Redirect,
    Rewrite,
    Route,
    Timeouts,
    WeightedBackend,
)
from mesh.control.translate.backends import resolve_service
from mesh.control.translate.backendtls import ingress_tls, tls_backend
from mesh.control.translate.nginx import Annotations, parse_annotations
from mesh.http.filters import parse_htpasswd
from mesh.objects import HTTPIngressPath, Ingress, IngressBackend, IngressClass, Secret

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

CONTROLLER = "mesh.dev/ingress"
LEGACY_CLASS = "kubernetes.io/ingress.class"
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
LISTENERS = ("ingress-http", "ingress-https")


@dataclass
class IngressResult:
    routes: list[Route] = field(default_factory=list)
    backends: dict[str, GatewayBackend] = field(default_factory=dict)
    certificates: list[CertificateRef] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (ns/name, message)
    served: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)


def ours(ing: Ingress, classes: list[IngressClass]) -> bool:
    mine = {c.name for c in classes if c.spec.controller == CONTROLLER}
    legacy = ing.metadata.annotations.get(LEGACY_CLASS)
    if legacy is not None:
        return legacy in mine
    if ing.spec.ingress_class_name is not None:
        return ing.spec.ingress_class_name in mine
    return any(
        c.metadata.annotations.get(DEFAULT_CLASS) == "true"
        for c in classes
        if c.spec.controller == CONTROLLER
    )


NO_CLASS = (
    "no spec.ingressClassName, no kubernetes.io/ingress.class annotation and no IngressClass "
    "marked default: not served (set spec.ingressClassName to an IngressClass of "
    f"controller {CONTROLLER})"
)


def _classless(ing: Ingress) -> bool:
    return ing.spec.ingress_class_name is None and LEGACY_CLASS not in ing.metadata.annotations


def _age(ing: Ingress) -> tuple[str, str, str]:
    # RFC 3339 timestamps in UTC sort as strings; an object without one sorts last.
    return (ing.metadata.creation_timestamp or "~", ing.namespace, ing.name)


@dataclass
class _Path:
    ing: Ingress
    ann: Annotations
    host: str
    path: HTTPIngressPath | None  # None: the Ingress's defaultBackend
    rank: int


def translate_ingresses(snapshot: Snapshot) -> IngressResult:
    out = IngressResult()
    classes = [c for c in snapshot.list(IngressClass.KIND) if isinstance(c, IngressClass)]
    ingresses = sorted(
        (i for i in snapshot.list(Ingress.KIND) if isinstance(i, Ingress) and ours(i, classes)),
        key=_age,
    )
    if not any(c.metadata.annotations.get(DEFAULT_CLASS) == "true" for c in classes):
        # ingress-nginx logs why it ignores such an Ingress; a silent 404 says nothing.
        for ing in snapshot.list(Ingress.KIND):
            if isinstance(ing, Ingress) and _classless(ing):
                out.problems.append((f"{ing.namespace}/{ing.name}", NO_CLASS))
    mains: list[_Path] = []
    canaries: list[_Path] = []
    regex_hosts: set[str] = set()
    for rank, ing in enumerate(ingresses):
        ann = parse_annotations(ing.metadata.annotations, ing.namespace)
        who = f"{ing.namespace}/{ing.name}"
        out.problems.extend((who, p) for p in ann.problems)
        if ann.out_of_service:
            out.problems.append(
                (who, "not served: an access-control or backend TLS annotation is invalid")
            )
            continue
        out.served.append((ing.namespace, ing.name))
        paths = [
            _Path(ing, ann, rule.host or "", p, rank)
            for rule in ing.spec.rules
            if rule.http is not None
            for p in rule.http.paths
        ]
        if ing.spec.default_backend is not None:
            hosts = {rule.host or "" for rule in ing.spec.rules} or {""}
            paths.extend(_Path(ing, ann, h, None, rank) for h in sorted(hosts))
        (canaries if ann.canary is not None else mains).extend(paths)
        if ann.canary is None and (ann.use_regex or ann.rewrite_target is not None):
            regex_hosts.update(p.host for p in paths)
        for tls in ing.spec.tls:
            if tls.secret_name:
                out.certificates.append(
                    CertificateRef(secret=f"{ing.namespace}/{tls.secret_name}", hosts=tls.hosts)
                )
    by_key: dict[tuple[str, str, str], list[Canary]] = defaultdict(list)
    for c in canaries:
        backend = _backend(snapshot, c, out)
        assert c.ann.canary is not None
        spec = c.ann.canary
        if backend is None:
            continue
        by_key[_key(c)].append(
            Canary(
                backend=backend,
                source=f"{c.ing.namespace}/{c.ing.name}",
                header=spec.header,
                header_value=spec.header_value,
                header_pattern=spec.header_pattern,
                cookie=spec.cookie,
                weight=spec.weight,
                weight_total=spec.weight_total,
            )
        )
    used: set[tuple[str, str, str]] = set()
    for m in mains:
        key = _key(m)
        route = _route(snapshot, m, m.host in regex_hosts, tuple(by_key.get(key, ())), out)
        if route is not None:
            out.routes.append(route)
            used.add(key)
    for key in by_key.keys() - used:
        for canary in by_key[key]:
            out.problems.append(
                (
                    canary.source,
                    f"canary for host {key[0] or '*'} path {key[1]} has no main Ingress",
                )
            )
    return out


def _key(p: _Path) -> tuple[str, str, str]:
    if p.path is None:
        return (p.host, "/", "default")
    return (p.host, p.path.path or "/", _kind(p.path))


def _kind(p: HTTPIngressPath) -> str:
    return "Exact" if p.path_type == "Exact" else "Prefix"


def _backend(snapshot: Snapshot, p: _Path, out: IngressResult) -> str | None:
    ref: IngressBackend | None = (
        p.path.backend if p.path is not None else p.ing.spec.default_backend
    )
    who = f"{p.ing.namespace}/{p.ing.name}"
    if ref is None or ref.service is None:
        out.problems.append((who, "backend.resource is not supported: use a Service backend"))
        return None
    port = ref.service.port
    resolved = resolve_service(
        snapshot,
        p.ing.namespace,
        ref.service.name,
        port.number if port.number is not None else port.name,
        p.ann.backend_protocol,
    )
    tls, tag, problem = ingress_tls(snapshot, p.ing, p.ann, ref.service.name)
    if problem is not None:
        if (who, f"{problem}: not served") not in out.problems:
            out.problems.append((who, f"{problem}: not served"))
        return None
    if resolved.backend is None:
        out.problems.append((who, f"{resolved.error}: its paths answer 503"))
        name = f"{p.ing.namespace}/{ref.service.name}:{port.number or port.name}"
        out.backends.setdefault(name, GatewayBackend(name=name))
        return name
    backend = resolved.backend if tls is None else tls_backend(resolved.backend, tls, tag)
    out.backends[backend.name] = backend
    return backend.name


def _route(
    snapshot: Snapshot, p: _Path, regex: bool, canaries: tuple[Canary, ...], out: IngressResult
) -> Route | None:
    backend = _backend(snapshot, p, out)
    if backend is None:
        return None
    ing, ann = p.ing, p.ann
    value = p.path.path or "/" if p.path is not None else "/"
    exact = p.path is not None and p.path.path_type == "Exact"
    if exact:
        match = PathMatch(kind="Exact", value=value)
    elif regex:
        try:
            re.compile(value)
        except re.error as exc:
            who = f"{ing.namespace}/{ing.name}"
            out.problems.append(
                (who, f"path {value!r} is not a regular expression ({exc}): not served")
            )
            return None
        match = PathMatch(kind="RegularExpression", value="^" + value, ignore_case=True)
    else:
        match = PathMatch(kind="Prefix", value=value)
    policy = _policy(snapshot, p, value, out)
    if policy is None:
        return None
    # A defaultBackend sorts after every rule of its host ("/" from a rule comes first).
    order = p.rank + (1 << 20 if p.path is None else 0)
    return Route(
        name=f"ingress/{ing.namespace}/{ing.name}",
        listeners=LISTENERS,
        hosts=(p.host,) if p.host else (),
        matches=(Match(path=match),),
        order=order,
        policy=policy,
        backends=(WeightedBackend(backend=backend),),
        canaries=canaries,
        affinity=ann.affinity,
        timeouts=Timeouts(
            connect=ann.connect_timeout, read=ann.read_timeout, send=ann.send_timeout
        ),
    )


def _policy(snapshot: Snapshot, p: _Path, path: str, out: IngressResult) -> Policy | None:
    ing, ann = p.ing, p.ann
    tls_hosts = {h for t in ing.spec.tls for h in (t.hosts or ("",))}
    redirect_https = ann.force_ssl_redirect or (
        ann.ssl_redirect and (p.host in tls_hosts or "" in tls_hosts)
    )
    basic = None
    if ann.basic_auth_secret is not None:
        basic = _basic_auth(snapshot, ann, out, f"{ing.namespace}/{ing.name}")
        if basic is None:
            return None
    rewrite = None
    if ann.rewrite_target is not None or ann.upstream_vhost is not None:
        rewrite = Rewrite(
            hostname=ann.upstream_vhost,
            path=PathRewrite(kind="Regex", pattern=path, value=ann.rewrite_target)
            if ann.rewrite_target is not None
            else None,
        )
    redirect = None
    if ann.redirect is not None:
        url, code = ann.redirect
        redirect = Redirect.model_validate({"location": url, "status": code})
    headers = HeaderEdits(
        set=(("x-forwarded-prefix", ann.forwarded_prefix),) if ann.forwarded_prefix else ()
    )
    return Policy(
        allow_sources=ann.allow,
        deny_sources=ann.deny,
        https_redirect=308 if redirect_https else None,
        cors=ann.cors,
        basic_auth=basic,
        external_auth=ann.auth_url,
        rate_limit=ann.rate_limit,
        connection_limit=ann.connection_limit,
        body_limit=ann.body_limit,
        app_root=ann.app_root,
        redirect=redirect,
        rewrite=rewrite,
        request_headers=headers,
    )


def _basic_auth(
    snapshot: Snapshot, ann: Annotations, out: IngressResult, who: str
) -> BasicAuth | None:
    assert ann.basic_auth_secret is not None
    ns, name, kind = ann.basic_auth_secret
    secret = snapshot.get(Secret.KIND, ns, name)
    if not isinstance(secret, Secret):
        out.problems.append((who, f"auth-secret {ns}/{name} not found: not served"))
        return None
    if kind == "auth-file":
        raw = secret.value("auth")
        if raw is None:
            out.problems.append((who, f"auth-secret {ns}/{name} has no key 'auth': not served"))
            return None
        users, problems = parse_htpasswd(raw.decode(errors="replace"))
    else:
        text = "\n".join(
            f"{user}:{(secret.value(user) or b'').decode(errors='replace')}"
            for user in sorted({*secret.data, *secret.string_data})
        )
        users, problems = parse_htpasswd(text)
    out.problems.extend((who, f"auth-secret {ns}/{name}: {p}") for p in problems)
    return BasicAuth(realm=ann.auth_realm, users=users)
