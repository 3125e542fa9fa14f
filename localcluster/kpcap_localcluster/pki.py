"""Certificates, keys and static tokens for the local control plane.

One throw-away CA per cluster signs the apiserver's serving certificate; ServiceAccount tokens are
signed with their own RSA key. Users authenticate with static bearer tokens (``--token-auth-file``):
the admin in ``system:masters``, the controller manager and scheduler under their well-known user
names, and each node as ``system:node:<name>`` in ``system:nodes`` so the Node authoriser and the
NodeRestriction admission plugin treat the process kubelets exactly like real ones.
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class Identity:
    """A static-token user of the apiserver."""

    user: str
    groups: tuple[str, ...]
    token: str


@dataclass(frozen=True, slots=True)
class ClusterPki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_private_key: Path
    sa_public_key: Path
    token_file: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


def new_identity(*, user: str, groups: Sequence[str] = ()) -> Identity:
    return Identity(user=user, groups=tuple(groups), token=secrets.token_hex(24))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_pki(
    *,
    directory: Path,
    server_ips: Sequence[str],
    server_dns_names: Sequence[str],
) -> ClusterPki:
    """Write a CA, the apiserver's serving pair (for ``server_ips``/names) and the ServiceAccount keys."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kpcap-localcluster-ca"))
        .issuer_name(_name("kpcap-localcluster-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca_cert.subject)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = ClusterPki(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_private_key=directory / "sa.key",
        sa_public_key=directory / "sa.pub",
        token_file=directory / "tokens.csv",
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.ca_key, ca_key)
    pki.serving_cert.write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.serving_key, serving_key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_private_key, sa_key)
    pki.sa_public_key.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pki.token_file.write_text("")
    pki.token_file.chmod(0o600)
    return pki


def write_token_file(*, path: Path, identities: Sequence[Identity]) -> None:
    """The apiserver's static token file: ``token,user,uid,"group1,group2"``."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        for ident in identities:
            writer.writerow([ident.token, ident.user, ident.user, ",".join(ident.groups)])
