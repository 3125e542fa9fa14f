"""The sampler's serving certificate: issued at start by the chart's CA (or self-signed), renewed when
the CA Secret rotates, handed to OpenSSL without touching the disk.

The operator verifies the chain against the same CA and the node's address (kpcap_operator's
sampler client), so its token only goes to a real sampler.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kpcap.envconfig import EnvError
from kpcap.tls import issued_certificate, load_ca, self_signed_certificate

log = logging.getLogger(__name__)

CA_DIR_VARIABLE = "KPCAP_SAMPLER_CA_DIR"


def read_ca(directory: Path) -> tuple[bytes, bytes]:
    """ca.crt and ca.key of the chart's sampler CA Secret, checked to be a CA that can issue
    certificates (key and certificate belong together); EnvError naming KPCAP_SAMPLER_CA_DIR."""
    return checked_ca(ca_files(directory))


def ca_files(directory: Path) -> tuple[bytes, bytes]:
    """ca.crt and ca.key as they are (see :func:`checked_ca`)."""
    try:
        return (directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes()
    except OSError as err:
        raise _ca_error(err) from None


def checked_ca(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """``ca`` if it is a CA that can issue certificates (key and certificate belong together)."""
    try:
        load_ca(ca_certificate_pem=ca[0], ca_key_pem=ca[1])
    except (ValueError, TypeError) as err:
        raise _ca_error(err) from None
    return ca


def _ca_error(err: Exception) -> EnvError:
    return EnvError(
        CA_DIR_VARIABLE,
        f"must hold ca.crt and ca.key of a CA that can issue certificates (the chart's Secret "
        f"<release>-sampler-ca): {err}",
    )


def tls_context(certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context holding the key; the PEM is handed to OpenSSL through a memfd (nothing on
    disk), or a private temporary directory deleted at once where memfd is unavailable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain = key_pem + certificate_pem
    try:
        descriptor = os.memfd_create("kpcap-sampler-tls", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryDirectory(prefix="kpcap-sampler-tls-") as directory:
            path = Path(directory) / "chain.pem"
            path.touch(mode=0o600)
            path.write_bytes(chain)
            context.load_cert_chain(str(path))
        return context
    try:
        os.write(descriptor, chain)
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)
    return context


class ServingCertificate:
    """The certificate for ``node_name`` and ``addresses``, and the TLS context that serves it.

    :attr:`context` is the one given to the server; each handshake switches to the current
    certificate's context (its SNI callback runs for every ClientHello), so a renewal reaches every
    new connection without restarting the server.
    """

    def __init__(
        self,
        *,
        node_name: str,
        addresses: Sequence[str],
        ca: tuple[bytes, bytes] | None,
        ca_dir: Path | None,
    ) -> None:
        self._names = [node_name, "localhost"]
        self._node_name = node_name
        self._addresses = list(addresses)
        self._ca, self._ca_dir = ca, ca_dir
        self.certificate_pem, key_pem = self._issue(ca)
        self._current = tls_context(self.certificate_pem, key_pem)
        self.context = tls_context(self.certificate_pem, key_pem)
        self.context.sni_callback = self._switch

    def _switch(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        connection.context = self._current

    def _issue(self, ca: tuple[bytes, bytes] | None) -> tuple[bytes, bytes]:
        """A serving certificate for this node's names and addresses: from the CA, else self-signed."""
        if ca is None:
            return self_signed_certificate(
                common_name=self._node_name, dns_names=self._names, ip_addresses=self._addresses
            )
        return issued_certificate(
            ca_certificate_pem=ca[0],
            ca_key_pem=ca[1],
            common_name=self._node_name,
            dns_names=self._names,
            ip_addresses=self._addresses,
        )

    def refresh(self) -> bool:
        """Issue a new certificate if the CA in ``ca_dir`` changed (a rotated Secret is updated in
        the mounted volume); True if it did. An unreadable CA keeps the current certificate."""
        if self._ca_dir is None:
            return False
        try:
            ca = ca_files(self._ca_dir)
            if ca == self._ca:
                return False
            checked_ca(ca)
        except EnvError as err:
            log.warning("keeping the current serving certificate: %s", err)
            return False
        certificate, key = self._issue(ca)
        self._current = tls_context(certificate, key)
        self._ca, self.certificate_pem = ca, certificate
        log.info("the sampler CA in %s changed: new connections get a certificate it issued", self._ca_dir)
        return True
