"""Why a TLS Secret's ``tls.crt`` or ``tls.key`` cannot be loaded, in words a user acts on.

cryptography's errors name its parser's internals ("error parsing asn1 value: ParseError {
kind: ShortData ... }", "MalformedFraming"); an operator needs to know which key of the
Secret is wrong and how (a block cut off, a certificate where the key belongs, base64 that
is not base64, DER that is damaged). :func:`crt_problem` and :func:`key_problem` read the PEM
framing themselves (RFC 7468) and, when cryptography still refuses a block, say that its
content is damaged. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

# RFC 7468 section 2: the label between BEGIN and END, and the base64 text of the block.
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
_ENCRYPTED = b"ENCRYPTED PRIVATE KEY"


def _blocks(data: bytes) -> list[tuple[bytes, bytes, bytes]] | str:
    """(label, base64 text, end label) of each PEM block, or why the framing is broken."""
    found = [(m.group(1), m.group(2), m.group(3)) for m in _BLOCK.finditer(data)]
    begins = data.count(b"-----BEGIN ")
    if begins == 0:
        return "holds no PEM block (no -----BEGIN line)"
    if len(found) < begins:
        return "has a PEM block that is cut off (a -----BEGIN line with no matching -----END)"
    for label, _, end in found:
        if label != end:
            return f"has a PEM block that begins as {label.decode()} but ends as {end.decode()}"
    return found


def framing_problem(data: bytes, name: str) -> str | None:
    """What is wrong with the PEM framing of ``data`` (the Secret's key ``name``), or None:
    cryptography reads the whole blocks before a broken one and OpenSSL then stops at it."""
    blocks = _blocks(data)
    return f"{name} {blocks}" if isinstance(blocks, str) else None


def _der(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _what(label: bytes) -> str:
    if label == b"CERTIFICATE":
        return "a certificate"
    if label in _KEY_LABELS or label == _ENCRYPTED:
        return "a private key"
    return f"a PEM {label.decode()} block"


def crt_problem(data: bytes) -> str:
    """One sentence on what is wrong with ``tls.crt`` (cryptography refused it)."""
    blocks = _blocks(data)
    if isinstance(blocks, str):
        return f"tls.crt {blocks}"
    certs = [b for b in blocks if b[0] == b"CERTIFICATE"]
    if not certs:
        found = _what(blocks[0][0])
        swapped = " (are tls.crt and tls.key swapped?)" if found == "a private key" else ""
        return f"tls.crt holds {found}, not a certificate{swapped}"
    for n, (_, text, _) in enumerate(certs, 1):
        der = _der(text)
        which = "the certificate" if len(certs) == 1 else f"certificate {n} of {len(certs)}"
        if der is None:
            return f"tls.crt is not a valid PEM certificate: {which} is not valid base64"
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            return (
                f"tls.crt is not a valid PEM certificate: {which} is damaged "
                f"(its {len(der)} bytes are truncated or corrupted X.509 data)"
            )
    return "tls.crt is not a valid PEM certificate"


def key_problem(data: bytes) -> str:
    """One sentence on what is wrong with ``tls.key`` (cryptography refused it)."""
    blocks = _blocks(data)
    if isinstance(blocks, str):
        return f"tls.key {blocks}"
    keys = [b for b in blocks if b[0] in _KEY_LABELS]
    if not keys:
        found = _what(blocks[0][0])
        swapped = " (are tls.crt and tls.key swapped?)" if found == "a certificate" else ""
        return f"tls.key holds {found}, not a private key{swapped}"
    label, text, _ = keys[0]
    der = _der(text)
    if der is None:
        return "tls.key is not a valid PEM private key: its block is not valid base64"
    try:
        if label == b"PRIVATE KEY":
            serialization.load_der_private_key(der, password=None)
        else:  # the traditional RSA/EC forms: only the PEM loader takes their label
            serialization.load_pem_private_key(
                b"-----BEGIN %s-----\n%s\n-----END %s-----\n"
                % (label, base64.encodebytes(der), label),
                password=None,
            )
    except UnsupportedAlgorithm:
        return "tls.key holds a private key of a type that is not supported"
    except (ValueError, TypeError):
        return (
            f"tls.key is not a valid PEM private key: its {label.decode()} block is damaged "
            f"(its {len(der)} bytes are truncated or corrupted)"
        )
    return "tls.key is not a valid PEM private key"
