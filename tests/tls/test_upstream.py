"""The pure part of re-encryption: names a backend's certificate must carry, endpoint keys."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.tls.upstream import TlsEndpoint, UpstreamTls, check_ca
from tests.tls.pki import CA


def leaf_der(*sans: x509.GeneralName, cn: str = "leaf") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


DNS, URI = x509.DNSName, x509.UniformResourceIdentifier
SPIFFE = "spiffe://cluster.local/ns/default/sa/api"

# (certificate SANs, names wanted, URIs wanted, accepted)
CASES = [
    ([DNS("api.internal")], ("api.internal",), (), True),
    ([DNS("API.Internal")], ("api.internal",), (), True),  # case-insensitive
    ([DNS("api.internal")], ("other.internal",), (), False),
    ([DNS("*.internal")], ("api.internal",), (), True),  # the certificate's wildcard covers
    ([DNS("*.internal")], ("a.b.internal",), (), False),  # one label only
    ([DNS("*.internal")], ("internal",), (), False),
    ([DNS("a.internal"), DNS("b.internal")], ("b.internal",), (), True),
    ([DNS("a.internal")], ("x.internal", "a.internal"), (), True),  # any wanted name
    ([x509.IPAddress(ipaddress.ip_address("127.0.0.5"))], ("127.0.0.5",), (), True),
    ([DNS("127.0.0.5")], ("127.0.0.6",), (), False),
    ([URI(SPIFFE)], (), (SPIFFE,), True),
    ([URI(SPIFFE)], (), (SPIFFE + "x",), False),
    ([], ("leaf",), (), False),  # the common name never counts (RFC 6125 without SANs: no)
]


@pytest.mark.parametrize(("sans", "names", "uris", "ok"), CASES)
def test_certificate_names(
    sans: list[x509.GeneralName], names: tuple[str, ...], uris: tuple[str, ...], ok: bool
) -> None:
    tls = UpstreamTls(verify=True, verify_names=names, verify_uris=uris)
    problem = tls.check(leaf_der(*sans))
    assert (problem is None) == ok, problem
    # Nothing is checked when nothing is verified (ingress-nginx's proxy_ssl_verify off).
    assert UpstreamTls(verify=False, verify_names=names).check(leaf_der(*sans)) is None


def test_no_certificate_when_verifying() -> None:
    assert UpstreamTls(verify=True, verify_names=("a",)).check(None) is not None


def test_endpoint_keys_keep_tls_settings_apart() -> None:
    plain = ("127.0.0.5", 443)
    off = TlsEndpoint("127.0.0.5", 443, UpstreamTls())
    on = TlsEndpoint("127.0.0.5", 443, UpstreamTls(verify=True, verify_names=("a",)))
    pool: dict[object, str] = {plain: "plain", off: "off", on: "on"}
    assert len(pool) == 3
    assert pool[TlsEndpoint("127.0.0.5", 443, UpstreamTls())] == "off"
    assert off != plain and plain != off and off != on
    ip, port = on  # still an (address, port) pair for sockets and logs
    assert (ip, port) == plain and len(on) == 2


def test_ca_bundles() -> None:
    assert check_ca(CA().pem) is None
    assert check_ca(b"not a certificate") is not None
    assert check_ca(b"") is not None
