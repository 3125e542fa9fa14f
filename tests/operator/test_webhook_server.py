"""The webhook server's certificate: the mounted one when the chart owns the configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kpcap.tls import self_signed_certificate
from kpcap_operator.settings import OperatorSettings
from kpcap_operator.webhook.server import webhook_server

SETTINGS = OperatorSettings(
    namespace="kpcap-system", agent_image="kpcap-agent:1", webhook_service="kpcap-webhook"
)


def test_a_mounted_certificate_is_served(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(
        common_name="kpcap-webhook", dns_names=["kpcap-webhook"], ip_addresses=[]
    )
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    settings = dataclasses.replace(SETTINGS, webhook_cert_dir=str(tmp_path), webhook_config_managed=False)
    server = webhook_server(settings)
    assert server is not None
    assert server.certfile == str(tmp_path / "tls.crt")


def test_without_the_charts_certificate_an_unmanaged_webhook_refuses_to_start(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, webhook_cert_dir=str(tmp_path), webhook_config_managed=False)
    with pytest.raises(ValueError, match=r"KPCAP_WEBHOOK_CERT_DIR: no tls\.crt"):
        webhook_server(settings)
