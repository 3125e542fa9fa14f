"""The REST facade: an aiohttp application serving ``/client/v4/accounts/{account_id}/pcaps``.

This module assembles it: the routes (capture_handlers.py, ownership_handlers.py), the services they
use (services.py: the operator's Kube adapter, the authoriser, ownership records, downloads) and the
middleware that turns every refusal into the upstream failure envelope.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Final

from aiohttp import web
from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.tls import ServingFiles
from kpcap_operator.api import capture_handlers as captures
from kpcap_operator.api import ownership as own
from kpcap_operator.api import ownership_handlers as ownerships
from kpcap_operator.api.auth import Authorizer
from kpcap_operator.api.download import open_capture_download
from kpcap_operator.api.mapping import ApiError, ErrorCode, ErrorItem, failure
from kpcap_operator.api.openapi import ACCOUNT, PREFIX, openapi_document
from kpcap_operator.api.services import SERVICES, ApiSettings, Services
from kpcap_operator.kube import Kube
from kpcap_operator.samples import SampleStore
from kpcap_operator.settings import OperatorSettings

__all__ = ["ApiSettings", "Services", "api_tls_files", "create_app", "start_api"]

log = logging.getLogger(__name__)

TLS_REFRESH_SECONDS: Final = 30.0
"""How often the API's certificate files are checked for a renewal (a Secret volume updates in ~1 min)."""


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# --- errors -------------------------------------------------------------------------------------

_HTTP_CODES: Final = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
}


def _error_response(
    status: int, errors: Sequence[ErrorItem], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(failure(errors), status=status, headers=dict(headers or {}))


@web.middleware
async def envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err.status, err.errors, err.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.MALFORMED_REQUEST)
        if exc.status == 413:
            limit = request.app[SERVICES].settings.max_body_bytes
            message = f"request body: must be at most {limit} bytes"
        elif exc.status == 404:
            message = f"no such path: {request.method} {request.path[:200]}; see {PREFIX}/openapi.json"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path[:200]}"
        else:
            message = exc.reason
        headers = {"x-should-retry": "false"}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110: a 405 lists them
        return _error_response(exc.status, [ErrorItem(int(code), message)], headers)
    except ApiException as err:
        log.warning(
            "Kubernetes API error during %s %s: %s %s", request.method, request.path, err.status, err.reason
        )
        return _error_response(
            503,
            [
                ErrorItem(
                    int(ErrorCode.BACKEND_UNAVAILABLE),
                    f"the Kubernetes API failed: {err.status} {err.reason}",
                )
            ],
        )
    except Exception:
        log.exception("internal error during %s %s", request.method, request.path)
        return _error_response(500, [ErrorItem(int(ErrorCode.INTERNAL), "internal error")])


# --- the application -----------------------------------------------------------------------------


def create_app(
    *,
    api: client.ApiClient,
    settings: ApiSettings,
    sample_store: SampleStore | None,
    services: Services | None = None,
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[envelope_middleware])
    kube = Kube(api, namespace=settings.operator_namespace)
    app[SERVICES] = services or Services(
        settings=settings,
        authorizer=Authorizer(api),
        captures=kube,
        ownerships=own.OwnershipStore(api, namespace=settings.operator_namespace),
        # A large capture's files beyond status.files come from its reports (listed by label).
        open_download=partial(open_capture_download, sample_store=sample_store, reports=kube.node_reports),
    )
    base = PREFIX + ACCOUNT
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    app.router.add_get(f"{base}/ownership", ownerships.list_ownerships)
    app.router.add_post(f"{base}/ownership", ownerships.create_ownership)
    app.router.add_post(f"{base}/ownership/validate", ownerships.validate_ownership)
    # Ids only: "validate" is not an ownership id, so a 405 there names POST alone in Allow.
    app.router.add_delete(f"{base}/ownership/{{ownership_id:[0-9a-f]{{32}}}}", ownerships.delete_ownership)
    app.router.add_get(base, captures.list_captures)
    app.router.add_post(base, captures.create_capture)
    app.router.add_get(f"{base}/{{pcap_id}}", captures.get_capture)
    app.router.add_get(f"{base}/{{pcap_id}}/download", captures.download_capture)
    app.router.add_put(f"{base}/{{pcap_id}}/stop", captures.stop_capture)
    return app


def api_tls_files(settings: OperatorSettings) -> ServingFiles | None:
    """The API's TLS pair as the settings name it; None when TLS is off (plain HTTP).

    Raises ValueError naming the file when the pair cannot be loaded.
    """
    if not settings.api_tls_enabled:
        return None
    try:
        return ServingFiles(cert_file=settings.api_tls_cert_file, key_file=settings.api_tls_key_file)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(
            f"KPCAP_API_TLS_CERT_FILE/KPCAP_API_TLS_KEY_FILE ({settings.api_tls_cert_file},"
            f" {settings.api_tls_key_file}): cannot load the REST API's TLS pair: {err}"
        ) from err


async def _refresh_tls(tls: ServingFiles) -> None:
    while True:
        await asyncio.sleep(TLS_REFRESH_SECONDS)
        try:
            if tls.refresh():
                log.info("PCAPs API: reloaded its TLS pair %s", tls.cert_file)
        except (OSError, ssl.SSLError) as err:  # mid-renewal: keep serving the last good pair
            log.warning("PCAPs API: TLS pair not reloaded: %s", err)


async def start_api(
    *,
    api: client.ApiClient,
    settings: ApiSettings,
    sample_store: SampleStore | None,
    host: str,
    port: int,
    tls: ServingFiles | None,
) -> web.AppRunner:
    """Serve the API on ``host:port`` in the running event loop, over HTTPS with ``tls`` (None:
    plain HTTP, only behind a TLS-terminating proxy); ``await runner.cleanup()`` to stop."""
    app = create_app(api=api, settings=settings, sample_store=sample_store)
    if tls is not None:

        async def refreshing(_: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(_refresh_tls(tls))
            yield
            task.cancel()

        app.cleanup_ctx.append(refreshing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, host=host or None, port=port, ssl_context=None if tls is None else tls.context
    ).start()
    scheme = "https" if tls is not None else "http (no TLS: behind a TLS-terminating proxy only)"
    log.info("PCAPs API listening on %s:%s%s, %s", host or "*", port, PREFIX, scheme)
    return runner
