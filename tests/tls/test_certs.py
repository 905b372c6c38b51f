"""The certificate store: validation with one-sentence reasons, SNI choice, rebuild reuse."""

from __future__ import annotations

import base64
import itertools

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.objects import Secret
from mesh.tls.certs import GENERATED, CertEntry, CertProblem, CertStore, entry_from_secret
from tests.tls.pki import CA

ca = CA()
SHOP = ca.issue("shop.example.com")
WILD = ca.issue("wild", ["*.example.com"])
API = ca.issue("api.example.com", ["api.example.com", "api2.example.com"])
OTHER = ca.issue("other.example.org")


def entry(issued: object, *names: str, source: str = "Secret t/x") -> CertEntry:
    return CertEntry(source, issued.cert_pem, issued.key_pem, names)  # type: ignore[attr-defined]


def secret(type_: str = "kubernetes.io/tls", **data: bytes) -> Secret:
    return Secret.model_validate(
        {
            "metadata": {"name": "tls", "namespace": "shop"},
            "type": type_,
            "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()},
        }
    )


def test_lookup_exact_then_wildcard_then_default() -> None:
    store = CertStore.build([entry(SHOP, "shop.example.com"), entry(WILD), entry(API)])
    assert store.problems == ()
    assert store.lookup("shop.example.com").subject == "CN=shop.example.com"
    assert store.lookup("SHOP.Example.com.").subject == "CN=shop.example.com"
    assert store.lookup("cart.example.com").subject == "CN=wild"
    assert store.lookup("api2.example.com").subject == "CN=api.example.com"
    for unknown in ("a.b.example.com", "example.com", "other.org", "", None, "bad name"):
        assert store.lookup(unknown) is store.default
    assert store.default.source == GENERATED
    assert store.default.subject == "CN=Mesh Gateway Default Certificate"


def test_first_entry_wins_a_name_and_the_loser_is_told() -> None:
    first = entry(SHOP, "shop.example.com", source="Secret a/first")
    second = entry(WILD, "shop.example.com", source="Secret b/second")
    store = CertStore.build([first, second])
    assert store.lookup("shop.example.com").source == "Secret a/first"
    assert [str(p) for p in store.problems] == [
        "Secret b/second: host 'shop.example.com' is already served by Secret a/first; ignored here"
    ]


def key_pem(encrypted: bool = False) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(b"pw") if encrypted else serialization.NoEncryption()
    )
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
    )


@pytest.mark.parametrize(
    ("cert_pem", "key", "message"),
    [
        (b"not a certificate", SHOP.key_pem, "tls.crt holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            SHOP.key_pem,
            "tls.crt is not a valid PEM certificate",
        ),
        (SHOP.cert_pem, b"garbage", "tls.key holds no PEM block"),
        (SHOP.cert_pem, key_pem(encrypted=True), "tls.key is encrypted"),
        (SHOP.cert_pem, b"<redacted>", "tls.key is <redacted>: dump the config with --show-"),
        (SHOP.cert_pem, key_pem(), "tls.key does not belong to the certificate in tls.crt"),
    ],
)
def test_a_bad_entry_is_refused_with_a_reason(cert_pem: bytes, key: bytes, message: str) -> None:
    bad = CertEntry("Secret shop/bad", cert_pem, key, ("bad.example.com",))
    store = CertStore.build([bad, entry(SHOP)])
    (problem,) = store.problems
    assert problem.refused and problem.source == "Secret shop/bad"
    assert problem.message.startswith(message)
    assert "\n" not in problem.message
    assert store.lookup("bad.example.com") is store.default
    assert store.lookup("shop.example.com").subject == "CN=shop.example.com"


def _cut(pem: bytes, keep: int) -> bytes:
    """``pem`` with only the first ``keep`` base64 lines of its block (a truncated paste)."""
    lines = pem.strip().split(b"\n")
    return b"\n".join([lines[0], *lines[1 : 1 + keep], lines[-1]]) + b"\n"


def _flip(pem: bytes) -> bytes:
    """``pem`` with four base64 characters of its block replaced (damaged in transit)."""
    head, _, rest = pem.partition(b"\n")
    return head + b"\n" + rest[:60] + b"AAAA" + rest[64:]


PEM_CERT = "tls.crt is not a valid PEM certificate: "
LEAF = SHOP.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
PEM_KEY = "tls.key is not a valid PEM private key: "


@pytest.mark.parametrize(
    ("cert_pem", "key", "message"),
    [
        (_cut(LEAF, 2), SHOP.key_pem,
         PEM_CERT + "the certificate is damaged (its 96 bytes are truncated or corrupted "
         "X.509 data)"),
        (_flip(LEAF), SHOP.key_pem, None),  # damaged: the length is the cert's
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", SHOP.key_pem,
         PEM_CERT + "the certificate is not valid base64"),
        (SHOP.cert_pem[:-30], SHOP.key_pem,
         "tls.crt has a PEM block that is cut off (a -----BEGIN line with no matching -----END)"),
        (LEAF + _cut(LEAF, 1), SHOP.key_pem,
         PEM_CERT + "certificate 2 of 2 is damaged (its 48 bytes are truncated or corrupted "
         "X.509 data)"),
        (SHOP.key_pem, SHOP.cert_pem,
         "tls.crt holds a private key, not a certificate (are tls.crt and tls.key swapped?)"),
        (SHOP.cert_pem, SHOP.cert_pem,
         "tls.key holds a certificate, not a private key (are tls.crt and tls.key swapped?)"),
        (SHOP.cert_pem, b"just text", "tls.key holds no PEM block (no -----BEGIN line)"),
        (SHOP.cert_pem, _cut(SHOP.key_pem, 1),
         PEM_KEY + "its PRIVATE KEY block is damaged (its 48 bytes are truncated or corrupted)"),
        (SHOP.cert_pem, b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
         PEM_KEY + "its EC PRIVATE KEY block is damaged (its 3 bytes are truncated or corrupted)"),
    ],
)  # fmt: skip
def test_a_broken_pem_is_described_not_the_parser_error(
    cert_pem: bytes, key: bytes, message: str | None
) -> None:
    """Which key of the Secret and what is wrong with it, in one sentence; never the ASN.1
    parser's own words."""
    store = CertStore.build([CertEntry("Secret shop/bad", cert_pem, key)])
    (problem,) = store.problems
    text = str(problem)
    assert text.startswith("Secret shop/bad: tls.")
    if message is not None:
        assert problem.message == message
    else:
        assert "is damaged (its" in problem.message and problem.message.startswith(PEM_CERT)
    for internal in ("asn1", "ParseError", "MalformedFraming", "cryptography.io", "Tag {"):
        assert internal not in text
    assert "\n" not in text


def test_warnings_serve_the_certificate_anyway_or_fall_back() -> None:
    expired = ca.issue("old.example.com", expired=True)
    store = CertStore.build(
        [entry(expired), entry(SHOP, "shop.example.com", "elsewhere.example.net", "not a host")]
    )
    messages = sorted(p.message for p in store.problems)
    assert all(not p.refused for p in store.problems)
    assert messages[0] == "'not a host' is not a valid host name"
    assert messages[1] == "certificate does not cover host 'elsewhere.example.net'"
    assert messages[2].startswith("certificate expired on ")
    assert store.lookup("old.example.com").subject == "CN=old.example.com"
    assert store.lookup("elsewhere.example.net") is store.default


def test_names_default_to_the_certificate_names_and_cn_without_san() -> None:
    legacy = ca.issue("legacy.example.com", [])
    store = CertStore.build([entry(API), entry(legacy)])
    assert store.lookup("api.example.com").subject == "CN=api.example.com"
    assert store.lookup("legacy.example.com").subject == "CN=legacy.example.com"


def test_rsa_and_configured_default() -> None:
    rsa_cert = ca.issue("rsa.example.com", rsa_key=True)
    store = CertStore.build([entry(rsa_cert)], default=entry(OTHER, source="default"))
    assert store.lookup("rsa.example.com").subject == "CN=rsa.example.com"
    assert store.lookup("nope.example.com").subject == "CN=other.example.org"


def test_bad_default_falls_back_to_a_generated_one() -> None:
    bad = CertEntry("Secret gw/default", b"x", b"y")
    store = CertStore.build([], default=bad)
    assert store.default.source == GENERATED
    assert store.problems == (CertProblem("Secret gw/default", "tls.crt holds no PEM certificate"),)


def test_rebuild_reuses_unchanged_contexts_and_the_generated_default() -> None:
    one = CertStore.build([entry(SHOP), entry(WILD)])
    rotated = ca.issue("shop.example.com")
    two = CertStore.build([entry(rotated), entry(WILD)], previous=one)
    assert two.default is one.default
    assert two.lookup("x.example.com").context is one.lookup("x.example.com").context
    assert two.lookup("shop.example.com").context is not one.lookup("shop.example.com").context
    assert two.lookup("shop.example.com").sha256 != one.lookup("shop.example.com").sha256
    # A bad entry keeps being reported on every rebuild while it is in the config.
    bad = CertEntry("Secret x/bad", b"x", b"y")
    three = CertStore.build([bad], previous=two)
    four = CertStore.build([bad], previous=three)
    assert len(three.problems) == len(four.problems) == 1


def test_entry_from_secret() -> None:
    ok = entry_from_secret(secret(tls_crt=SHOP.cert_pem, tls_key=SHOP.key_pem), ["a.example.com"])
    assert ok == CertEntry("Secret shop/tls", SHOP.cert_pem, SHOP.key_pem, ("a.example.com",))
    opaque = entry_from_secret(secret("Opaque", tls_crt=SHOP.cert_pem, tls_key=SHOP.key_pem))
    assert opaque == CertProblem("Secret shop/tls", "has type 'Opaque', not kubernetes.io/tls")
    empty = entry_from_secret(secret(tls_crt=b"", tls_key=SHOP.key_pem))
    assert empty == CertProblem("Secret shop/tls", "needs both tls.crt and tls.key")


def test_describe_has_no_key_material() -> None:
    store = CertStore.build([entry(SHOP)])
    text = repr(store.describe())
    assert "PRIVATE" not in text and "shop.example.com" in text
    assert [d["default"] for d in store.describe()] == [False, True]


# One certificate covering every name the property below may configure, so that the store
# can be built per example without generating keys.
_LABELS = ("a", "b", "c")
_ALL = [".".join(p) for n in (1, 2, 3) for p in itertools.product(_LABELS, repeat=n)]
EVERYTHING = ca.issue("everything", _ALL + ["*." + n for n in _ALL])
_name = st.lists(st.sampled_from(_LABELS), min_size=1, max_size=4).map(".".join)


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.sampled_from(_ALL), max_size=6),
    st.sets(st.sampled_from(_ALL), max_size=6),
    st.lists(_name, min_size=1, max_size=10),
)
def test_lookup_is_exact_then_one_label_wildcard_then_default(
    exact: set[str], wild: set[str], queries: list[str]
) -> None:
    entries = [entry(EVERYTHING, n, source=f"exact {n}") for n in sorted(exact)]
    entries += [entry(EVERYTHING, "*." + n, source=f"wild {n}") for n in sorted(wild)]
    store = CertStore.build(entries, previous=_STORE[0])
    _STORE[0] = store
    for query in queries:
        suffix = query.partition(".")[2]
        if query in exact:
            expected = f"exact {query}"
        elif suffix in wild:
            expected = f"wild {suffix}"
        else:
            expected = GENERATED
        assert store.lookup(query).source == expected
        assert store.lookup(query.upper() + ".").source == expected


_STORE: list[CertStore | None] = [None]


def test_a_default_whose_cn_is_no_host_name_raises_no_warning() -> None:
    odd = ca.issue("Our Fallback Certificate", [])
    store = CertStore.build([], default=entry(odd, source="Secret gw/fallback"))
    assert store.problems == ()
    assert store.default.subject == "CN=Our Fallback Certificate"
