"""Certificates for TLS termination: validated, indexed by name, one ssl.SSLContext each.

Contract for the gateway wiring:

- Turn each TLS reference of the config (an Ingress ``spec.tls`` entry, a Gateway listener's
  ``certificateRefs``) into a :class:`CertEntry`, with :func:`entry_from_secret` when you hold a
  :class:`~mesh.objects.Secret` or directly from PEM text. Its ``names`` are the hosts the
  reference covers; empty means "the DNS names in the certificate".
- ``CertStore.build(entries, default=..., previous=current_store)`` validates every entry with
  cryptography and never raises on bad input: a refused entry becomes a :class:`CertProblem`
  (its source and one sentence), the rest are served. Entries earlier in the list win a name
  that two entries claim (order them by precedence: oldest Ingress first, as ingress-nginx).
  Passing ``previous`` reuses the contexts of unchanged PEM, so a config change costs only
  the certificates that changed, and keeps the generated default certificate.
- ``store.context_for(sni)`` is what the SNI callback of :class:`~mesh.tls.terminator.TlsTerminator`
  calls: exact name, then the ``*.`` wildcard one label up, then the default certificate.
- With no default entry, a self-signed certificate is generated once (EC P-256).

A store is immutable once built; a new config builds a new store and swaps it in.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ssl
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.objects import Secret
from mesh.tls import names as hostnames
from mesh.tls.contexts import load_chain, server_context
from mesh.tls.pem_check import crt_problem, framing_problem, key_problem

DEFAULT_CERT_CN = "Mesh Gateway Default Certificate"
GENERATED = "generated default certificate"
NEEDS_BOTH = "needs both tls.crt and tls.key"


# what `mesh config dump` prints for a private key without --show-secrets
REDACTED = b"<redacted>"


@dataclasses.dataclass(frozen=True, slots=True)
class CertEntry:
    """One certificate to serve: its PEM chain (leaf first), PEM key, and the names it covers."""

    source: str  # what to blame in a report, e.g. "Secret default/shop-tls"
    cert_pem: bytes
    key_pem: bytes
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class CertProblem:
    source: str
    message: str  # one sentence
    refused: bool = True  # False: a warning, the certificate is served anyway

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedCert:
    """A validated certificate and the context that serves it."""

    source: str
    names: tuple[str, ...]  # normalised names this certificate is served for
    subject: str  # RFC 4514 form, for /config dumps and logs
    not_after: datetime.datetime
    sha256: str  # fingerprint of the leaf, hex
    context: ssl.SSLContext


def entry_from_secret(secret: Secret, names: Sequence[str] = ()) -> CertEntry | CertProblem:
    """A kubernetes.io/tls Secret as a certificate entry, or why it cannot be one."""
    source = f"Secret {secret.metadata.namespace}/{secret.metadata.name}"
    if secret.type != "kubernetes.io/tls":
        return CertProblem(source, f"has type {secret.type!r}, not kubernetes.io/tls")
    cert, key = secret.value("tls.crt"), secret.value("tls.key")
    if not cert or not key:
        return CertProblem(source, NEEDS_BOTH)
    return CertEntry(source, cert, key, tuple(names))


def self_signed(
    common_name: str = DEFAULT_CERT_CN, dns_names: Sequence[str] = (), source: str = GENERATED
) -> CertEntry:
    """A fresh self-signed certificate (EC P-256, one year), as ingress-nginx's fake one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    return CertEntry(
        source=source,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        names=tuple(dns_names),
    )


def _cert_names(leaf: x509.Certificate) -> list[str]:
    """DNS names of the SAN extension; the subject CN only when there is no SAN (legacy)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def pair_problem(cert_pem: bytes, key_pem: bytes) -> str | None:
    """Why a tls.crt and tls.key cannot be served together, in one sentence; None when they
    can. The control plane asks this of a Gateway listener's Secret (its ResolvedRefs
    condition), the gateway of every certificate it loads."""
    if not cert_pem or not key_pem:
        return NEEDS_BOTH
    parsed = _parse(cert_pem, key_pem)
    return parsed if isinstance(parsed, str) else None


def _parse(cert_pem: bytes, key_pem: bytes) -> x509.Certificate | str:
    """The leaf certificate of a chain whose key belongs to it, or why there is none."""
    if b"-----BEGIN" not in cert_pem:
        return "tls.crt holds no PEM certificate"
    broken = framing_problem(cert_pem, "tls.crt")
    if broken is not None:
        return broken
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:  # its message names the parser's internals: say it in our words
        return crt_problem(cert_pem)
    if key_pem.strip() == REDACTED:
        return "tls.key is <redacted>: dump the config with --show-secrets"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return "tls.key is encrypted; a key without a password is needed"
    except (ValueError, UnsupportedAlgorithm):
        return key_problem(key_pem)
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return "tls.key does not belong to the certificate in tls.crt"
    return leaf


def _load(entry: CertEntry, now: datetime.datetime) -> tuple[LoadedCert | None, list[CertProblem]]:
    """Validate one entry; the certificate to serve (or None) and what is wrong with it."""
    src = entry.source
    parsed = _parse(entry.cert_pem, entry.key_pem)
    if isinstance(parsed, str):
        return None, [CertProblem(src, parsed)]
    leaf = parsed
    ctx = server_context()
    try:
        load_chain(ctx, entry.cert_pem, entry.key_pem)
    except ssl.SSLError as exc:
        return None, [CertProblem(src, f"OpenSSL refused the certificate ({exc.reason})")]
    problems: list[CertProblem] = []
    not_after = leaf.not_valid_after_utc
    if not_after < now:
        problems.append(CertProblem(src, f"certificate expired on {not_after:%Y-%m-%d}", False))
    in_cert = [n for n in map(hostnames.normalize, _cert_names(leaf)) if n]
    served: list[str] = []
    for raw in entry.names or tuple(in_cert):  # in_cert holds only valid names
        name = hostnames.normalize(raw)
        if name is None:
            problems.append(CertProblem(src, f"{raw!r} is not a valid host name", False))
        elif entry.names and not any(c == name or hostnames.matches(c, name) for c in in_cert):
            # ingress-nginx serves the default certificate for such a host rather than one
            # every client will reject; so do we, and say why.
            problems.append(CertProblem(src, f"certificate does not cover host {name!r}", False))
        else:
            served.append(name)
    loaded = LoadedCert(
        source=src,
        names=tuple(served),
        subject=leaf.subject.rfc4514_string(),
        not_after=not_after,
        sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        context=ctx,
    )
    return loaded, problems


def _key(entry: CertEntry) -> bytes:
    return hashlib.sha256(entry.cert_pem + b"\0" + entry.key_pem).digest()


class CertStore:
    """Immutable index from host name to certificate; see the module docstring."""

    __slots__ = ("_cache", "_exact", "_wild", "certs", "default", "problems")

    def __init__(
        self,
        certs: tuple[LoadedCert, ...],
        default: LoadedCert,
        problems: tuple[CertProblem, ...],
        cache: dict[bytes, tuple[LoadedCert | None, list[CertProblem]]],
    ) -> None:
        self.certs = certs
        self.default = default
        self.problems = problems
        self._cache = cache
        self._exact: dict[str, LoadedCert] = {}
        self._wild: dict[str, LoadedCert] = {}
        for cert in certs:
            for name in cert.names:
                table, key = (
                    (self._wild, name[2:]) if hostnames.is_wildcard(name) else (self._exact, name)
                )
                table.setdefault(key, cert)

    @classmethod
    def build(
        cls,
        entries: Iterable[CertEntry],
        default: CertEntry | None = None,
        previous: CertStore | None = None,
        now: datetime.datetime | None = None,
    ) -> CertStore:
        now = now or datetime.datetime.now(datetime.UTC)
        old = previous._cache if previous is not None else {}
        cache: dict[bytes, tuple[LoadedCert | None, list[CertProblem]]] = {}
        certs: list[LoadedCert] = []
        problems: list[CertProblem] = []
        claimed: dict[str, str] = {}
        for entry in entries:
            key = _key(entry) + repr((entry.source, entry.names)).encode()
            cache[key] = result = old.get(key) or _load(entry, now)
            loaded, found = result
            problems.extend(found)
            if loaded is None:
                continue
            for name in loaded.names:
                if name in claimed and claimed[name] != loaded.source:
                    msg = f"host {name!r} is already served by {claimed[name]}; ignored here"
                    problems.append(CertProblem(loaded.source, msg, False))
                claimed.setdefault(name, loaded.source)
            certs.append(loaded)
        default_cert = cls._default(default, previous, now, cache, problems)
        return cls(tuple(certs), default_cert, tuple(problems), cache)

    @staticmethod
    def _default(
        entry: CertEntry | None,
        previous: CertStore | None,
        now: datetime.datetime,
        cache: dict[bytes, tuple[LoadedCert | None, list[CertProblem]]],
        problems: list[CertProblem],
    ) -> LoadedCert:
        if entry is not None:
            key = b"default" + _key(entry)
            old = previous._cache.get(key) if previous is not None else None
            cache[key] = result = old or _load(entry, now)
            loaded, found = result
            problems.extend(found)
            if loaded is not None:
                return loaded
        # Keep the generated certificate across rebuilds: clients that pinned it stay happy.
        if previous is not None and previous.default.source == GENERATED:
            return previous.default
        generated, _ = _load(self_signed(), now)
        assert generated is not None, "a freshly generated certificate always loads"
        return generated

    def lookup(self, server_name: str | None) -> LoadedCert:
        """The certificate for an SNI name: exact, then wildcard, then the default."""
        if not server_name:
            return self.default
        name = server_name.lower() if server_name.isascii() else hostnames.normalize(server_name)
        if not name:
            return self.default
        if name[-1] == ".":
            name = name[:-1]
        cert = self._exact.get(name)
        if cert is None:
            suffix = hostnames.wildcard_suffix(name)
            cert = self._wild.get(suffix) if suffix else None
        return cert or self.default

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        return self.lookup(server_name).context

    def describe(self) -> list[dict[str, object]]:
        """A JSON-able summary (no key material) for the admin ``/config`` dump."""
        return [
            {
                "source": c.source,
                "names": list(c.names),
                "subject": c.subject,
                "notAfter": c.not_after.isoformat(),
                "sha256": c.sha256,
                "default": c is self.default,
            }
            for c in (*self.certs, self.default)
        ]
