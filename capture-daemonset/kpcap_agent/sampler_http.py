"""The sampler's HTTPS service: an aiohttp application speaking :mod:`kpcap.sampleprotocol`, and
the server thread that runs it.

Answers: 200 (a PCAP), and JSON ``{"error": "..."}`` naming the field or the problem for 400 (bad
JSON or field), 401 (no, forged or expired token, or one for another audience), 403 (a valid token
of someone other than the allowed client), 404 (unknown path), 405 (wrong method, with ``Allow``),
411 (no Content-Length), 413 (body over 64 KiB), 503 (the TokenReview could not be made).
The body is read (bounded) before the token is checked, so that a refusal reaches the client, and
judged only after the token: nothing is said about a body to a caller who is not authorised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from kpcap.filters import compile_matcher
from kpcap.model import filter_to_dict
from kpcap.pcap import PCAP_MEDIA_TYPE, pcap_bytes
from kpcap.sampleprotocol import (
    HEALTH_PATH,
    HELD_RECORDS_HEADER,
    MAX_QUERY_BYTES,
    NODE_HEADER,
    SAMPLE_RATE_HEADER,
    SAMPLES_PATH,
    QueryInvalid,
    error_body,
    parse_query,
)
from kpcap_agent.sampler import SampleRing
from kpcap_agent.sampler_auth import Authoriser, Refused

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 32
CONNECTION_TIMEOUT_SECONDS: Final = 15.0
_NS_PER_SECOND: Final = 1_000_000_000
_ALLOWED: Final = {HEALTH_PATH: "GET", SAMPLES_PATH: "POST"}


class SamplesEndpoint:
    """What ``POST /v1/samples`` answers from: the ring, who may ask, and how the node is named."""

    def __init__(
        self,
        *,
        ring: SampleRing,
        authoriser: Authoriser,
        node_name: str,
        sample_rate: int,
        audience: str,
        answered: Callable[[int], None] | None = None,
    ) -> None:
        self.ring = ring
        self.authoriser = authoriser
        self.node_name = node_name
        self.sample_rate = sample_rate
        self.audience = audience
        self.answered = answered
        """Called with the status of each answer to ``POST /v1/samples`` (the metrics count them)."""


_SAMPLER: Final = web.AppKey("sampler", SamplesEndpoint)


def _json(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=error_body(message), content_type="application/json", headers=headers
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except Refused as refused:
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        response = _json(refused.status, refused.message, headers)
    except web.HTTPNotFound:
        response = _json(404, f"no such path: {request.path[:100]}")
    except web.HTTPMethodNotAllowed:
        allowed = _ALLOWED[request.path]
        response = _json(
            405, f"{request.method} not allowed on {request.path}; use {allowed}", {"Allow": allowed}
        )
    except web.HTTPException:
        raise
    except (ConnectionError, TimeoutError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("error answering %s %s", request.method, request.path)
        response = _json(500, "internal error; see the sampler's log")
    response.headers["Cache-Control"] = "no-store"
    answered = request.app[_SAMPLER].answered
    if answered is not None and request.path == SAMPLES_PATH:
        answered(response.status)
    return response


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(body=b"ok", content_type="text/plain")


async def _read_body(request: web.Request) -> bytes:
    if request.headers.get("Transfer-Encoding"):
        raise Refused(411, "send the body with a Content-Length (chunked bodies are not accepted)")
    length_text = request.headers.get("Content-Length")
    if length_text is None:
        raise Refused(411, "Content-Length: required")
    length = request.content_length or 0
    if length > MAX_QUERY_BYTES:
        raise Refused(413, f"body: {length} bytes, at most {MAX_QUERY_BYTES}")
    try:
        async with asyncio.timeout(CONNECTION_TIMEOUT_SECONDS):
            body = await request.read()
    except TimeoutError:
        raise Refused(400, f"body: not received within {CONNECTION_TIMEOUT_SECONDS:g} s") from None
    if len(body) != length:
        raise Refused(400, f"body: {len(body)} bytes received, Content-Length said {length}")
    return body


async def _samples(request: web.Request) -> web.Response:
    started = time.monotonic()
    endpoint = request.app[_SAMPLER]
    body = await _read_body(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Refused(401, "Authorization: required, 'Bearer <token>' for audience " + endpoint.audience)
    loop = asyncio.get_running_loop()
    # The TokenReview and the ring's query block: they run in the loop's thread pool.
    user = await loop.run_in_executor(None, endpoint.authoriser.authorise, token)
    try:
        query = parse_query(body)
    except QueryInvalid as invalid:
        raise Refused(400, str(invalid)) from None
    ring = endpoint.ring

    def answer() -> tuple[int, int, bytes]:
        records = ring.query(
            since_ns=query.since_ns,
            until_ns=query.until_ns,
            accept=compile_matcher(query.spec.filter),
            limit=query.spec.packet_limit,
        )
        held = ring.stats().held_records
        return len(records), held, pcap_bytes(records, snaplen=ring.config.snap_length)

    count, held, payload = await loop.run_in_executor(None, answer)
    log.info(
        "query from %s (%s): window %s..%s (%.1f s), filter %s, limit %d -> %d packets, %d bytes, "
        "%d held, %.1f ms",
        user,
        request.remote,
        query.since_ns,
        query.until_ns,
        (query.until_ns - query.since_ns) / _NS_PER_SECOND,
        json.dumps(filter_to_dict(query.spec.filter), sort_keys=True),
        query.spec.packet_limit,
        count,
        len(payload),
        held,
        (time.monotonic() - started) * 1000,
    )
    return web.Response(
        body=payload,
        content_type=PCAP_MEDIA_TYPE,
        headers={
            NODE_HEADER: endpoint.node_name,
            SAMPLE_RATE_HEADER: str(endpoint.sample_rate),
            HELD_RECORDS_HEADER: str(held),
        },
    )


def create_app(endpoint: SamplesEndpoint) -> web.Application:
    """The sampler's routes; body limits are checked by the handler (its own 411/413 messages)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_QUERY_BYTES)
    app[_SAMPLER] = endpoint
    app.router.add_get(HEALTH_PATH, _healthz, allow_head=False)
    app.router.add_post(SAMPLES_PATH, _samples)
    return app


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "kpcap-sampler"


class _Refuse(asyncio.Protocol):
    """The protocol of a connection over :data:`MAX_CONNECTIONS`: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HttpsServer:
    """``app`` served over TLS on ``(host, port)`` by an event loop in its own thread.

    The socket is bound on construction (so :attr:`address` is known and a port in use is an
    OSError here); :meth:`start` serves, :meth:`stop` ends it. TLS handshakes have a timeout, and
    connections beyond :data:`MAX_CONNECTIONS` are closed at once.
    """

    def __init__(self, app: web.Application, *, host: str, port: int, tls: ssl.SSLContext) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(64)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        app.on_response_prepare.append(_server_header)
        self._app = app
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="sampler-https", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(ready))
        except BaseException as err:
            failure.append(err)
            ready.set()
            log.exception("the HTTPS server stopped")
        finally:
            self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        handler: Any = runner.server

        def protocol() -> asyncio.Protocol:
            if handler is None or len(handler.connections) >= MAX_CONNECTIONS:
                log.warning("refusing a connection: %d already open", MAX_CONNECTIONS)
                return _Refuse()
            created: asyncio.Protocol = handler()
            return created

        server = await self._loop.create_server(
            protocol, sock=self._socket, ssl=self._tls, ssl_handshake_timeout=CONNECTION_TIMEOUT_SECONDS
        )
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            await runner.cleanup()

    def stop(self, *, timeout: float = 10.0) -> None:
        if self._thread is None:
            self._socket.close()
            return
        stopped = self._stopped
        if stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stopped.set)
        self._thread.join(timeout)
        self._thread = None
        self._socket.close()
