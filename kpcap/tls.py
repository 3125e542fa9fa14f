"""Serving certificates: self-signed (the webhook when no Secret provides one), or issued by a CA.

The samplers' certificates are issued at start by the CA the chart generates (its Secret is mounted
into the sampler pods), for the node's address, so the operator can verify whom it sends its token to.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _subject_alternative_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> x509.SubjectAlternativeName:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    return x509.SubjectAlternativeName(sans)


def _sign(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: CertificateIssuerPrivateKeyTypes,
    sans: x509.SubjectAlternativeName,
    ca: bool,
    days: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(sans, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed_certificate(
    *, common_name: str, dns_names: Sequence[str], ip_addresses: Sequence[str], days: int = 365
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM); the certificate is its own CA bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = _sign(
        subject=name,
        issuer=name,
        public_key=key.public_key(),
        signer=key,
        sans=_subject_alternative_names(dns_names, ip_addresses),
        ca=True,
        days=days,
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_ca(
    *, ca_certificate_pem: bytes, ca_key_pem: bytes
) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key, checked to belong together.

    Raises ValueError if either cannot be read or they do not belong together, TypeError for a CA
    key of another kind than RSA or EC.
    """
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"the CA key must be RSA or EC (Helm's genCA makes RSA), got {type(ca_key).__name__}")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if ca_key.public_key().public_bytes(der, public) != ca_certificate.public_key().public_bytes(der, public):
        raise ValueError("the CA key does not belong to the CA certificate")
    return ca_certificate, ca_key


def issued_certificate(
    *,
    ca_certificate_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int = 365,
) -> tuple[bytes, bytes]:
    """(certificate chain PEM: the leaf then the CA, private key PEM) for a new key, signed by the CA.

    Raises what ``load_ca`` raises for an unusable CA.
    """
    ca_certificate, ca_key = load_ca(ca_certificate_pem=ca_certificate_pem, ca_key_pem=ca_key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        issuer=ca_certificate.subject,
        public_key=key.public_key(),
        signer=ca_key,
        sans=_subject_alternative_names(dns_names, ip_addresses),
        ca=False,
        days=days,
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_certificate.public_bytes(
        serialization.Encoding.PEM
    )
    return chain, _key_pem(key)


class ServingFiles:
    """A server TLS context (TLS 1.2 or later) from certificate-chain and key files, reloaded by
    ``refresh`` when either file changed: a mounted Secret renewed by cert-manager is served without
    a restart (new handshakes get the new pair, open connections keep theirs).

    Raises OSError or ssl.SSLError (naming the files) if the pair cannot be loaded.
    """

    def __init__(self, *, cert_file: str | Path, key_file: str | Path) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: tuple[int, int] | None = None
        self.refresh()

    def _current_stamp(self) -> tuple[int, int]:
        return self.cert_file.stat().st_mtime_ns, self.key_file.stat().st_mtime_ns

    def refresh(self) -> bool:
        """Load the pair again if a file changed since the last load; True if it did."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        except ssl.SSLError as err:
            raise ssl.SSLError(f"cannot load TLS pair {self.cert_file}, {self.key_file}: {err}") from err
        self._stamp = stamp
        return True
