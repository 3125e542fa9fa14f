"""The REST API over HTTPS with the chart's certificate: verified with the chart's CA, plain HTTP
refused on the TLS port, plain HTTP only with TLS off, and a renewed pair served without a restart.

The server is the real ``start_api`` (aiohttp) on a local port; the pair is the one ``helm template``
makes (real helm), so these also check the chart's CA and API Secrets belong together.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from kpcap.tls import ServingFiles, issued_certificate
from kpcap_localcluster.ports import free_port
from kpcap_operator.api import ApiSettings, api_tls_files, start_api
from kpcap_operator.settings import OperatorSettings, SettingsError
from tests.support.api_tls import API_SERVICE_HOST, chart_api_secrets

pytestmark = pytest.mark.anyio

OPENAPI = "/client/v4/openapi.json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp's server


@pytest.fixture(scope="module")
def chart_secrets() -> tuple[dict[str, bytes], dict[str, bytes]]:
    return chart_api_secrets()


@pytest.fixture
def pair_files(tmp_path: Path, chart_secrets: tuple[dict[str, bytes], dict[str, bytes]]) -> ServingFiles:
    _, api = chart_secrets
    (tmp_path / "tls.crt").write_bytes(api["tls.crt"])
    (tmp_path / "tls.key").write_bytes(api["tls.key"])
    return ServingFiles(cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")


def _settings() -> ApiSettings:
    return ApiSettings.of(OperatorSettings(namespace="kpcap-system", agent_image="agent:test"))


async def _serve(port: int, tls: ServingFiles | None) -> AsyncIterator[None]:
    # No Kubernetes API is reached: openapi.json is served from the process.
    runner = await start_api(
        api=client.ApiClient(), settings=_settings(), sample_store=None, host="127.0.0.1", port=port, tls=tls
    )
    try:
        yield
    finally:
        await runner.cleanup()


def _verifying(ca: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.decode())


async def _get(url: str, *, verify: ssl.SSLContext | bool = True, sni: str | None = None) -> httpx.Response:
    extensions = {"sni_hostname": sni} if sni else None
    async with httpx.AsyncClient(verify=verify, timeout=5) as http:
        return await http.get(url, extensions=extensions)


async def test_https_is_verified_with_the_charts_ca(
    pair_files: ServingFiles, chart_secrets: tuple[dict[str, bytes], dict[str, bytes]]
) -> None:
    ca, api = chart_secrets
    assert api["ca.crt"] == ca["ca.crt"]  # callers may take ca.crt from either Secret
    port = free_port()
    async for _ in _serve(port, pair_files):
        # The certificate names the API Service; SNI (and the verified name) is the Service's.
        answer = await _get(
            f"https://127.0.0.1:{port}{OPENAPI}", verify=_verifying(ca["ca.crt"]), sni=API_SERVICE_HOST
        )
        assert answer.status_code == 200
        assert answer.json()["openapi"].startswith("3.")
        # Another name, or another CA, is refused by a verifying client.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await _get(
                f"https://127.0.0.1:{port}{OPENAPI}", verify=_verifying(ca["ca.crt"]), sni="elsewhere.example"
            )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await _get(f"https://127.0.0.1:{port}{OPENAPI}", sni=API_SERVICE_HOST)  # the system's CAs


async def test_plain_http_is_refused_on_the_tls_port(pair_files: ServingFiles) -> None:
    port = free_port()
    async for _ in _serve(port, pair_files):
        # The bearer token would already have left in clear: no HTTP answer at all, the connection
        # closes during the failed handshake.
        with pytest.raises(httpx.HTTPError):
            await _get(f"http://127.0.0.1:{port}{OPENAPI}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET " + OPENAPI.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert b"openapi" not in answer
        assert not answer.startswith(b"HTTP/1.1 200")


async def test_plain_http_only_with_tls_off() -> None:
    settings = OperatorSettings.from_env(
        {
            "KPCAP_NAMESPACE": "kpcap-system",
            "KPCAP_AGENT_IMAGE": "agent:test",
            "KPCAP_API_PORT": "8000",
            "KPCAP_API_TLS_ENABLED": "false",
        }
    )
    tls = api_tls_files(settings)
    assert tls is None
    port = free_port()
    async for _ in _serve(port, tls):
        assert (await _get(f"http://127.0.0.1:{port}{OPENAPI}")).status_code == 200


def test_the_api_needs_a_pair_unless_tls_is_off() -> None:
    env = {"KPCAP_NAMESPACE": "kpcap-system", "KPCAP_AGENT_IMAGE": "agent:test", "KPCAP_API_PORT": "8000"}
    with pytest.raises(SettingsError, match="KPCAP_API_TLS_CERT_FILE: the REST API serves HTTPS"):
        OperatorSettings.from_env(env)
    with pytest.raises(SettingsError, match="KPCAP_API_TLS_KEY_FILE"):
        OperatorSettings.from_env({**env, "KPCAP_API_TLS_CERT_FILE": "/x/tls.crt"})
    unreadable = OperatorSettings.from_env(
        {
            **env,
            "KPCAP_API_TLS_CERT_FILE": "/nonexistent/tls.crt",
            "KPCAP_API_TLS_KEY_FILE": "/nonexistent/tls.key",
        }
    )
    with pytest.raises(ValueError, match=r"KPCAP_API_TLS_CERT_FILE.*/nonexistent/tls\.crt"):
        api_tls_files(unreadable)


async def test_a_renewed_pair_is_served_without_a_restart(
    pair_files: ServingFiles, chart_secrets: tuple[dict[str, bytes], dict[str, bytes]]
) -> None:
    ca, _ = chart_secrets
    port = free_port()
    async for _ in _serve(port, pair_files):
        assert not pair_files.refresh()  # unchanged: nothing reloaded
        # As cert-manager renews it: same CA, a new key; here for 127.0.0.1.
        chain, key = issued_certificate(
            ca_certificate_pem=ca["ca.crt"],
            ca_key_pem=ca["ca.key"],
            common_name="renewed",
            dns_names=[],
            ip_addresses=["127.0.0.1"],
        )
        pair_files.key_file.write_bytes(key)
        pair_files.cert_file.write_bytes(chain)
        assert pair_files.refresh()
        answer = await _get(f"https://127.0.0.1:{port}{OPENAPI}", verify=_verifying(ca["ca.crt"]))
        assert answer.status_code == 200
