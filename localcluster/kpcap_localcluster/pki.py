"""Certificates, keys and static tokens for the local control plane.

One throw-away CA per cluster signs the apiserver's serving certificate (both made by ``kpcap.tls``,
the project's one certificate maker); ServiceAccount tokens are signed with their own RSA key. Users
authenticate with static bearer tokens (``--token-auth-file``): the admin in ``system:masters``, the
controller manager and scheduler under their well-known user names, and each node as
``system:node:<name>`` in ``system:nodes`` so the Node authoriser and the NodeRestriction admission
plugin treat the process kubelets exactly like real ones.
"""

from __future__ import annotations

import csv
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpcap.tls import issued_certificate, self_signed_certificate

_VALIDITY_DAYS = 2
_CA_NAME = "kpcap-localcluster-ca"


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


def _write_private(path: Path, pem: bytes) -> None:
    path.write_bytes(pem)
    path.chmod(0o600)


def create_pki(
    *,
    directory: Path,
    server_ips: Sequence[str],
    server_dns_names: Sequence[str],
) -> ClusterPki:
    """Write a CA, the apiserver's serving pair (for ``server_ips``/names) and the ServiceAccount keys."""
    directory.mkdir(parents=True, exist_ok=True)
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
    # The CA names itself in its SAN: some parsers refuse an empty SAN extension.
    ca_pem, ca_key_pem = self_signed_certificate(
        common_name=_CA_NAME, dns_names=[_CA_NAME], ip_addresses=[], days=_VALIDITY_DAYS
    )
    serving_chain, serving_key_pem = issued_certificate(
        ca_certificate_pem=ca_pem,
        ca_key_pem=ca_key_pem,
        common_name="kube-apiserver",
        dns_names=server_dns_names,
        ip_addresses=server_ips,
        days=_VALIDITY_DAYS,
    )
    pki.ca_cert.write_bytes(ca_pem)
    _write_private(pki.ca_key, ca_key_pem)
    pki.serving_cert.write_bytes(serving_chain)
    _write_private(pki.serving_key, serving_key_pem)
    # ServiceAccount token signing (RS256, what every Kubernetes version verifies).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(
        pki.sa_private_key,
        sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
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
