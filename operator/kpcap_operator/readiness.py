"""Readiness of one operator replica: ``GET /readyz`` answers 200 only while every server behind a
Service answers in this process: Kopf's health endpoint, the webhook's listener and the REST API's
listener (a TLS handshake completes; plain TCP for an API without TLS).

The chart's readinessProbe uses it, so a replica whose webhook or API listener is not up (yet, or
any more) is taken out of the Services' endpoints instead of failing admissions and API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import kopf
from aiohttp import web

from kpcap_operator.settings import OperatorSettings

__all__ = ["Listener", "listeners_of", "register_readiness", "start_readiness", "unready"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS: Final = 2.0
LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    what: str
    """Named in the 503 body: "webhook", "api", "kopf"."""
    host: str
    port: int
    tls: bool = True
    http_path: str = ""
    """Non-empty: a plain HTTP GET of this path must answer 200 (Kopf's health)."""


def _local(host: str) -> str:
    # Listening on every interface: the loopback one reaches it without leaving the pod.
    return LOOPBACK if host in {"", "0.0.0.0", "::"} else host  # noqa: S104 - a comparison, not a bind


def listeners_of(settings: OperatorSettings) -> list[Listener]:
    """The servers this replica runs, as the settings say."""
    found: list[Listener] = []
    if settings.liveness_endpoint:
        url = urlsplit(settings.liveness_endpoint)
        found.append(
            Listener(
                what="kopf",
                host=_local(url.hostname or ""),
                port=url.port or 80,
                tls=False,
                http_path=url.path or "/",
            )
        )
    if settings.webhook_enabled:
        found.append(Listener(what="webhook", host=LOOPBACK, port=settings.webhook_port))
    if settings.api_port is not None:
        found.append(
            Listener(
                what="api",
                host=_local(settings.api_host),
                port=settings.api_port,
                tls=settings.api_tls_enabled,
            )
        )
    return found


def _handshake_only() -> ssl.SSLContext:
    # Whether the listener completes a handshake, not whom it proves to be: the callers verify that.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _answers(listener: Listener) -> str | None:
    """None if it answers, else why not (raises OSError, ssl.SSLError, TimeoutError, ClientError)."""
    if listener.http_path:
        url = urlunsplit(("http", f"{listener.host}:{listener.port}", listener.http_path, "", ""))
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"
    context = _handshake_only() if listener.tls else None
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(listener.host, listener.port, ssl=context), CHECK_TIMEOUT_SECONDS
    )
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):  # the handshake completed: passed already
        await writer.wait_closed()
    return None


async def _check(listener: Listener) -> str | None:
    """None if it answers, else why not, naming it."""
    try:
        reason = await _answers(listener)
    except (OSError, ssl.SSLError, TimeoutError, aiohttp.ClientError) as err:
        reason = f"{type(err).__name__}: {err}"
    return None if reason is None else f"{listener.what} ({listener.host}:{listener.port}): {reason}"


async def unready(listeners: Sequence[Listener]) -> list[str]:
    """Why this replica is not ready: one line per listener that does not answer (empty: ready)."""
    results = await asyncio.gather(*(_check(listener) for listener in listeners))
    return [reason for reason in results if reason is not None]


async def start_readiness(*, listeners: Sequence[Listener], host: str, port: int) -> web.AppRunner:
    """Serve ``/readyz`` on ``host:port`` in the running loop; ``await runner.cleanup()`` to stop."""

    async def readyz(_: web.Request) -> web.Response:
        reasons = await unready(listeners)
        if reasons:
            return web.Response(status=503, text="not ready:\n" + "\n".join(reasons) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host=host or None, port=port).start()
    log.info("readiness on %s:%s/readyz checks %s", host or "*", port, ", ".join(x.what for x in listeners))
    return runner


def register_readiness(*, registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Serve /readyz on settings.readiness_port (every interface: the kubelet probes the pod IP) from
    Kopf's start-up to its clean-up, in its event loop."""
    runners: list[web.AppRunner] = []

    @kopf.on.startup(registry=registry)
    async def start_readiness_endpoint(**_: object) -> None:
        runners.append(
            await start_readiness(listeners=listeners_of(settings), host="", port=settings.readiness_port)
        )

    @kopf.on.cleanup(registry=registry)
    async def stop_readiness_endpoint(**_: object) -> None:
        while runners:
            await runners.pop().cleanup()
