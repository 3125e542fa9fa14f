"""A replica's readiness (/readyz) follows its listeners: not ready before its API listener is up,
ready once the API and the webhook answer TLS handshakes and Kopf's health answers, not ready again
when the API listener goes down.

Real servers on local ports: the REST API's own ``start_api`` with the chart's certificate, a TLS
listener standing in for Kopf's webhook server (the check is a handshake, whatever serves it) and
an HTTP health endpoint answering as Kopf's does.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from kubernetes import client

from kpcap.tls import ServingFiles
from kpcap_localcluster.ports import free_port
from kpcap_operator.api import ApiSettings, start_api
from kpcap_operator.readiness import Listener, listeners_of, start_readiness
from kpcap_operator.settings import OperatorSettings
from tests.support.api_tls import api_tls

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp's servers


@asynccontextmanager
async def _site(app: web.Application, port: int, context: ssl.SSLContext | None) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host="127.0.0.1", port=port, ssl_context=context).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _health_app() -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


async def _readyz(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"http://127.0.0.1:{port}/readyz")


async def test_not_ready_until_the_api_listener_is_up_and_again_when_it_is_down(tmp_path: Path) -> None:
    tls = api_tls(tmp_path)
    files = ServingFiles(cert_file=tls.cert_file, key_file=tls.key_file)
    api_port, webhook_port, health_port, ready_port = free_port(), free_port(), free_port(), free_port()
    settings = OperatorSettings(
        namespace="kpcap-system",
        agent_image="agent:test",
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        webhook_port=webhook_port,
        api_port=api_port,
        api_host="0.0.0.0",  # noqa: S104 - as the chart sets it; checked on the loopback address
        api_tls_cert_file=str(tls.cert_file),
        api_tls_key_file=str(tls.key_file),
    )
    listeners = listeners_of(settings)
    assert [(x.what, x.host, x.port, x.tls) for x in listeners] == [
        ("kopf", "127.0.0.1", health_port, False),
        ("webhook", "127.0.0.1", webhook_port, True),
        ("api", "127.0.0.1", api_port, True),
    ]
    readiness = await start_readiness(listeners=listeners, host="127.0.0.1", port=ready_port)
    try:
        async with (
            _site(_health_app(), health_port, None),
            _site(web.Application(), webhook_port, files.context),
        ):
            before = await _readyz(ready_port)
            assert before.status_code == 503
            assert f"api (127.0.0.1:{api_port})" in before.text
            assert "webhook" not in before.text  # its listener answers

            api = await start_api(
                api=client.ApiClient(),
                settings=ApiSettings.of(settings),
                sample_store=None,
                host="127.0.0.1",
                port=api_port,
                tls=files,
            )
            try:
                up = await _readyz(ready_port)
                assert (up.status_code, up.text) == (200, "ok\n")
            finally:
                await api.cleanup()
            down = await _readyz(ready_port)
            assert down.status_code == 503
            assert "api" in down.text
        # Kopf's health and the webhook gone too: each is named.
        gone = await _readyz(ready_port)
        assert all(what in gone.text for what in ("kopf", "webhook", "api")), gone.text
    finally:
        await readiness.cleanup()


async def test_a_plain_listener_where_tls_is_expected_is_not_ready(tmp_path: Path) -> None:
    port, ready_port = free_port(), free_port()
    readiness = await start_readiness(
        listeners=[Listener(what="webhook", host="127.0.0.1", port=port)], host="127.0.0.1", port=ready_port
    )
    try:
        async with _site(_health_app(), port, None):
            answer = await _readyz(ready_port)
        assert answer.status_code == 503
        assert "webhook" in answer.text
    finally:
        await readiness.cleanup()


def test_without_api_or_webhook_only_kopf_is_checked() -> None:
    settings = OperatorSettings(
        namespace="n", agent_image="a", webhook_enabled=False, liveness_endpoint="http://0.0.0.0:8081/healthz"
    )
    assert [x.what for x in listeners_of(settings)] == ["kopf"]
