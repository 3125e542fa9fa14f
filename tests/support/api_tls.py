"""The REST API's TLS for tests: the chart's CA, and serving pairs it signs.

``chart_api_secrets`` renders the chart (real helm) with the API on and returns its CA Secret and the
API's serving Secret as the chart makes them. Tests whose operator runs as a process on 127.0.0.1
(not behind the API Service, whose DNS names the chart's pair carries) get a pair signed by that same
CA for the address they listen on (``api_tls``); their clients verify with the chart's ca.crt.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kpcap.tls import issued_certificate
from kpcap_localcluster.install import render_chart

RELEASE = "kpcap"
NAMESPACE = "kpcap-system"
API_SERVICE_HOST = f"{RELEASE}-api.{NAMESPACE}.svc"
"""A name the chart's API certificate carries (the API Service's)."""


def chart_api_secrets(*, values: dict[str, Any] | None = None) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(the chart's CA Secret's data, the API's TLS Secret's data), decoded, from ``helm template``."""
    rendered = render_chart(
        release=RELEASE, namespace=NAMESPACE, values={"api": {"enabled": True}, **(values or {})}
    )
    secrets = {
        doc["metadata"]["name"]: {key: base64.b64decode(value) for key, value in doc["data"].items()}
        for doc in yaml.safe_load_all(rendered)
        if doc and doc.get("kind") == "Secret"
    }
    return secrets[f"{RELEASE}-ca"], secrets[f"{RELEASE}-api-tls"]  # fullname: the release


@dataclass(frozen=True, slots=True)
class ApiTls:
    ca_file: Path
    """The chart's CA certificate: what clients verify the API with."""
    cert_file: Path
    key_file: Path


def api_tls(directory: Path, *, address: str = "127.0.0.1") -> ApiTls:
    """A serving pair for ``address`` signed by the chart's CA, and that CA, written into ``directory``."""
    ca, _ = chart_api_secrets()
    chain, key = issued_certificate(
        ca_certificate_pem=ca["ca.crt"],
        ca_key_pem=ca["ca.key"],
        common_name="kpcap-api",
        dns_names=[],
        ip_addresses=[address],
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = ApiTls(
        ca_file=directory / "ca.crt", cert_file=directory / "tls.crt", key_file=directory / "tls.key"
    )
    tls.ca_file.write_bytes(ca["ca.crt"])
    tls.cert_file.write_bytes(chain)
    tls.key_file.write_bytes(key)
    tls.key_file.chmod(0o600)
    return tls


def tls_dir(port: int) -> Path:
    """Where a test module's operator (API on ``port``) keeps its pair: known at import time, so the
    operator's environment can name the files before a fixture writes them with ``api_tls``."""
    return Path(tempfile.gettempdir()) / f"kpcap-api-tls-{os.getpid()}-{port}"


def tls_env(directory: Path) -> dict[str, str]:
    """The operator's variables for the pair ``api_tls(directory)`` writes."""
    return {
        "KPCAP_API_TLS_CERT_FILE": str(directory / "tls.crt"),
        "KPCAP_API_TLS_KEY_FILE": str(directory / "tls.key"),
    }
