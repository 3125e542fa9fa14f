"""Certificates: issued by a CA as Helm's genCA makes it (RSA, PKCS#1 PEM), verified by ssl."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kpcap.tls import issued_certificate, self_signed_certificate


def helm_like_ca() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpcap-sampler-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    return cert.public_bytes(serialization.Encoding.PEM), pkcs1


def test_an_issued_certificate_verifies_against_the_ca_for_its_address(tmp_path: Path) -> None:
    ca_cert, ca_key = helm_like_ca()
    chain, key = issued_certificate(
        ca_certificate_pem=ca_cert,
        ca_key_pem=ca_key,
        common_name="kpcap-node-1",
        dns_names=["kpcap-node-1"],
        ip_addresses=["198.18.1.11"],
    )
    leaf, ca_copy = x509.load_pem_x509_certificates(chain)
    assert ca_copy.public_bytes(serialization.Encoding.PEM) == ca_cert
    assert leaf.issuer == ca_copy.subject
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["198.18.1.11"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # The pair loads as a server identity, and the CA's context accepts exactly that address.
    (tmp_path / "chain.pem").write_bytes(key + chain)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "chain.pem")
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname


def test_a_key_that_is_not_the_cas_is_refused() -> None:
    ca_cert, _ = helm_like_ca()
    _, other_key = helm_like_ca()
    with pytest.raises(ValueError, match="does not belong to the CA certificate"):
        issued_certificate(
            ca_certificate_pem=ca_cert, ca_key_pem=other_key, common_name="n", dns_names=[], ip_addresses=[]
        )


def test_self_signed_is_its_own_ca() -> None:
    cert, _ = self_signed_certificate(common_name="w", dns_names=["w.svc"], ip_addresses=["10.0.0.1"])
    (parsed,) = x509.load_pem_x509_certificates(cert)
    assert parsed.issuer == parsed.subject
