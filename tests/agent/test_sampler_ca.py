"""The sampler's serving certificate and its CA (kpcap_agent.sampler_ca)."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest

from kpcap.tls import self_signed_certificate
from kpcap_agent.sampler_service import SamplerService
from kpcap_agent.sampler_settings import SamplerServiceConfig
from kpcap_agent.sources import MemorySource
from tests.agent.sampler_calls import (
    BASE_ENV,
    CLIENT,
    StaticAuthoriser,
)


def test_with_the_chart_ca_the_serving_certificate_chains_to_it_for_the_node_address(tmp_path: Path) -> None:
    ca_cert, ca_key = self_signed_certificate(common_name="kpcap-sampler-ca", dns_names=[], ip_addresses=[])
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    (tmp_path / "ca.key").write_bytes(ca_key)
    config = SamplerServiceConfig.from_env(
        BASE_ENV
        | {"KPCAP_SAMPLER_CA_DIR": str(tmp_path), "KPCAP_NODE_IP": "127.0.0.1", "KPCAP_SAMPLER_PORT": "1"}
    )
    assert config.ca == (ca_cert, ca_key)
    config = SamplerServiceConfig(
        node_name="node-1",
        sampler=config.sampler,
        client=CLIENT,
        host="127.0.0.1",
        port=0,
        node_ip="127.0.0.1",
        ca=config.ca,
        ca_dir=config.ca_dir,
    )
    with SamplerService(
        config=config, source=MemorySource(frames=[]), authoriser=StaticAuthoriser()
    ) as service:
        host, port = service.address
        verified = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=verified)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        # A sampler whose certificate the CA did not issue is refused by the same client.
        stranger = SamplerServiceConfig(
            node_name="node-1", sampler=config.sampler, client=CLIENT, host="127.0.0.1", port=0
        )
        with SamplerService(
            config=stranger, source=MemorySource(frames=[]), authoriser=StaticAuthoriser()
        ) as other:
            connection = http.client.HTTPSConnection(*other.address, timeout=5, context=verified)
            with pytest.raises(ssl.SSLCertVerificationError):
                connection.request("GET", "/healthz")
            connection.close()
        # The CA Secret rotates (the volume is updated in place): the next check issues a new
        # certificate; clients of the new CA are served, clients of the old one refuse it.
        assert not service.refresh_certificate(), "nothing changed yet"
        (tmp_path / "ca.key").write_bytes(b"half-written")
        assert not service.refresh_certificate(), "an unreadable CA keeps the current certificate"
        new_cert, new_key = self_signed_certificate(common_name="rotated-ca", dns_names=[], ip_addresses=[])
        (tmp_path / "ca.crt").write_bytes(new_cert)
        (tmp_path / "ca.key").write_bytes(new_key)
        assert service.refresh_certificate()
        rotated = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=rotated)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=verified)
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.request("GET", "/healthz")
        connection.close()
