"""The REST facade: aiohttp routes under ``/client/v4/accounts/{account_id}/pcaps``.

Handlers orchestrate: authenticate and authorise the caller (auth.py), translate (mapping.py), apply
the operator's two rules (``decisions.full_capture_conflict`` / ``simple_rate_conflict``, the same
functions the webhook and the operator use), and act on PacketCapture objects, ownership records
(ownership.py) and buckets (download.py). The Kubernetes and storage clients block, so every call to
them runs in a worker thread. Every refusal is the upstream failure envelope.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, ParamSpec, TypeVar

from aiohttp import web
from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.destinations import Destination
from kpcap.errors import SpecInvalid
from kpcap.model import CaptureSpec, CaptureType
from kpcap.names import is_capture_id
from kpcap.pcap import PCAP_MEDIA_TYPE, PcapFormatError
from kpcap.storage import StorageError, open_store
from kpcap_operator import decisions
from kpcap_operator.api import ownership as own
from kpcap_operator.api.auth import Authorizer, Caller, bearer_token
from kpcap_operator.api.download import MergedDownload, open_capture_download
from kpcap_operator.api.mapping import (
    ApiError,
    ErrorCode,
    ErrorItem,
    capture_to_upstream,
    failure,
    find_by_id,
    list_success,
    newest,
    request_to_spec,
    success,
)
from kpcap_operator.api.openapi import ACCOUNT, PREFIX, openapi_document
from kpcap_operator.samples import SampleStore

GROUP, VERSION, PLURAL = "kpcap.io", "v1alpha1", "packetcaptures"
CREATED_BY_ANNOTATION: Final = "kpcap.io/created-by"
DEFAULT_MAX_BODY: Final = 64 * 1024
_ACCOUNT_MAX: Final = 63

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    operator_namespace: str
    """Where ownership records are kept (the operator's namespace)."""
    simple_rate_window_seconds: int = 60
    max_body_bytes: int = DEFAULT_MAX_BODY


class CaptureObjects:
    """PacketCapture objects through the operator's API client (blocking calls)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)

    def list(self, namespace: str) -> list[dict[str, Any]]:
        listing = self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(listing.get("items", []))

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return created

    def request_stop(self, namespace: str, name: str) -> None:
        self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"stop": True}}
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _write_challenge(challenge: own.Challenge) -> None:
    store = open_store(challenge.destination)
    try:
        store.put_bytes(key=challenge.key, data=challenge.contents, content_type="text/plain")
    finally:
        store.close()


@dataclass(slots=True, kw_only=True)
class Services:
    settings: ApiSettings
    authorizer: Authorizer
    captures: CaptureObjects
    ownerships: own.OwnershipStore
    now: Callable[[], datetime] = _now
    open_download: Callable[[Mapping[str, Any]], MergedDownload]
    """A finished capture's PCAP (download.open_capture_download with the operator's sample store)."""
    write_challenge: Callable[[own.Challenge], None] = field(default=_write_challenge)


SERVICES: Final = web.AppKey("services", Services)


async def _blocking(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(partial(function, *args, **kwargs))


# --- request helpers -----------------------------------------------------------------------------


def _account(request: web.Request) -> str:
    account = request.match_info["account_id"]
    valid = (
        0 < len(account) <= _ACCOUNT_MAX
        and account.isascii()
        and all(ch.islower() or ch.isdigit() or ch == "-" for ch in account)
        and account[0] != "-"
        and account[-1] != "-"
    )
    if not valid:
        raise ApiError.one(
            404,
            ErrorCode.NOT_FOUND,
            f"account_id: must be a Kubernetes namespace name (1 to 63 lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit), got {account[:80]!r}",
        )
    return account


async def _authorized(request: web.Request, verb: str) -> tuple[Services, Caller, str]:
    services = request.app[SERVICES]
    token = bearer_token(request.headers.get("Authorization"))
    caller = await _blocking(services.authorizer.authenticate, token)
    account = _account(request)
    await _blocking(services.authorizer.authorize, caller, verb=verb, namespace=account)
    return services, caller, account


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    if not raw.strip():
        raise ApiError.one(
            400, ErrorCode.MALFORMED_REQUEST, "request body: must be a JSON object, got nothing"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ApiError.one(
            400, ErrorCode.MALFORMED_REQUEST, f"request body: malformed JSON ({str(err)[:200]})"
        ) from None


def _fields(body: object, *, allowed: Sequence[str], required: Sequence[str]) -> Mapping[str, Any]:
    """A JSON object with only ``allowed`` fields and every ``required`` one as a string."""
    if not isinstance(body, dict):
        raise ApiError.one(400, ErrorCode.INVALID_FIELD, "request body: must be a JSON object")
    problems = [
        ErrorItem(int(ErrorCode.INVALID_FIELD), f"{name}: unknown field, the fields are {', '.join(allowed)}")
        for name in body
        if name not in allowed
    ]
    problems += [
        ErrorItem(int(ErrorCode.INVALID_FIELD), f"{name}: required, must be a string")
        for name in required
        if not isinstance(body.get(name), str)
    ]
    if problems:
        raise ApiError(400, problems)
    return body


def _capture_id_param(request: web.Request) -> str:
    wanted = request.match_info["pcap_id"]
    if not is_capture_id(wanted):
        raise ApiError.one(
            404,
            ErrorCode.NOT_FOUND,
            f"pcap_id: must be a capture id (32 lowercase hexadecimal characters), got {wanted[:80]!r}",
        )
    return wanted


async def _find_capture(services: Services, account: str, wanted: str) -> Mapping[str, Any]:
    found = find_by_id(await _blocking(services.captures.list, account), wanted)
    if found is None:
        raise ApiError.one(
            404, ErrorCode.NOT_FOUND, f"pcap_id: no capture with id {wanted} in account {account}"
        )
    return found


def _no_retry(status: int, code: ErrorCode, message: str) -> ApiError:
    return ApiError.one(status, code, message, headers={"x-should-retry": "false"})


# --- the two rules --------------------------------------------------------------------------------


def rule_conflict(
    *, spec: CaptureSpec, existing: Sequence[Mapping[str, Any]], now: datetime, window: timedelta
) -> str | None:
    """The message naming the rule a new capture would break, or None (as the webhook decides it)."""
    me = decisions.CaptureRef(
        name="(new)",
        uid="~new",
        created=now + timedelta(days=1),  # newer than everything there
        type=spec.type,
        status=None,
        refused_by_rule=False,
        valid=True,
    )
    others = [decisions.capture_ref(obj) for obj in existing]
    if spec.type == CaptureType.FULL:
        blocker = decisions.full_capture_conflict(capture=me, others=others)
    else:
        blocker = decisions.simple_rate_conflict(
            capture=replace(me, created=now), others=others, window=window
        )
    if blocker is None:
        return None
    _, message = decisions.conflict_message(capture_type=spec.type, blocker=blocker, window=window)
    return message


# --- handlers -------------------------------------------------------------------------------------


async def list_captures(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "list")
    objects = await _blocking(services.captures.list, account)
    return web.json_response(list_success([capture_to_upstream(obj) for obj in newest(objects)]))


async def get_capture(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "get")
    found = await _find_capture(services, account, _capture_id_param(request))
    return web.json_response(success(capture_to_upstream(found)))


async def create_capture(request: web.Request) -> web.Response:
    services, caller, account = await _authorized(request, "create")
    body = await _json_body(request)
    now = services.now()
    spec, stored = request_to_spec(body, now=now)
    if spec.type == CaptureType.FULL and spec.destination is not None:
        records = await _blocking(services.ownerships.list, account)
        if not own.is_owned(records, spec.destination):
            bucket = f"{spec.destination.scheme.value}://{spec.destination.bucket}"
            raise ApiError.one(
                400,
                ErrorCode.BUCKET_NOT_OWNED,
                f"destination_conf: bucket {bucket} is not validated for account {account}; prove it is "
                f"yours first: POST {PREFIX}/accounts/{account}/pcaps/ownership with this destination_conf, "
                "then POST .../pcaps/ownership/validate with the contents of the challenge file it writes",
            )
    existing = await _blocking(services.captures.list, account)
    window = timedelta(seconds=services.settings.simple_rate_window_seconds)
    message = rule_conflict(spec=spec, existing=existing, now=now, window=window)
    if message is not None:
        code = ErrorCode.CAPTURE_ALREADY_ACTIVE if spec.type == CaptureType.FULL else ErrorCode.RATE_LIMITED
        raise _no_retry(429, code, message)
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PacketCapture",
        "metadata": {"generateName": "pcap-", "annotations": {CREATED_BY_ANNOTATION: caller.username}},
        "spec": stored,
    }
    try:
        created = await _blocking(services.captures.create, account, manifest)
    except ApiException as err:
        raise _apiserver_refusal(err) from None
    return web.json_response(success(capture_to_upstream(created)))


def _apiserver_refusal(err: ApiException) -> ApiError:
    """The apiserver (or the admission webhook) refused the object: say why, in the envelope."""
    try:
        message = str(json.loads(err.body or "{}").get("message") or err.reason)
    except (ValueError, AttributeError):
        message = str(err.reason)
    if err.status == 429:
        return _no_retry(429, ErrorCode.RATE_LIMITED, message)
    if err.status in (400, 422):
        return ApiError.one(400, ErrorCode.INVALID_FIELD, message)
    if err.status == 404:
        return ApiError.one(404, ErrorCode.NOT_FOUND, f"account_id: {message}")
    return ApiError.one(502, ErrorCode.BACKEND_UNAVAILABLE, f"the Kubernetes API refused: {message}")


async def stop_capture(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "patch")
    found = await _find_capture(services, account, _capture_id_param(request))
    status = (found.get("status") or {}).get("status")
    if status not in decisions.TERMINAL and not (found.get("spec") or {}).get("stop"):
        await _blocking(services.captures.request_stop, account, found["metadata"]["name"])
    return web.Response(status=204)


async def download_capture(request: web.Request) -> web.StreamResponse:
    services, _, account = await _authorized(request, "get")
    wanted = _capture_id_param(request)
    found = await _find_capture(services, account, wanted)
    status = found.get("status") or {}
    state = status.get("status") or "pending"
    if state not in decisions.TERMINAL:
        raise ApiError.one(
            409,
            ErrorCode.NOT_READY,
            f"pcap_id: capture {wanted} is {state}; its PCAP can be downloaded once it has finished",
        )
    if not status.get("files"):
        why = f" ({status.get('errorMessage')})" if status.get("errorMessage") else ""
        raise ApiError.one(
            404,
            ErrorCode.NOT_FOUND,
            f"pcap_id: capture {wanted} ended {state} without a file to download{why}",
        )
    try:
        download = await _blocking(services.open_download, found)
    except PcapFormatError as err:
        raise ApiError.one(409, ErrorCode.STORAGE, f"pcap_id: capture {wanted}: {err}") from None
    except StorageError as err:
        raise ApiError.one(502, ErrorCode.STORAGE, f"pcap_id: capture {wanted}: {err}") from None
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": PCAP_MEDIA_TYPE,
            "Content-Disposition": f'attachment; filename="pcap_{wanted}.pcap"',
        },
    )
    try:
        await response.prepare(request)
        chunks = iter(download)
        while (chunk := await _blocking(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
    except (StorageError, PcapFormatError, OSError) as err:
        # The status line is sent: the only way to say "failed" is to cut the stream short.
        log.warning("download of %s/%s failed mid-stream: %s", account, wanted, err)
        if request.transport is not None:
            request.transport.close()
    finally:
        await _blocking(download.close)
    return response


async def list_ownerships(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "list")
    records = await _blocking(services.ownerships.list, account)
    return web.json_response(list_success([record.to_upstream() for record in records]))


def _destination(text: str) -> Destination:
    try:
        return own.parse_destination_conf(text)
    except SpecInvalid as invalid:
        raise ApiError(
            400, [ErrorItem(int(ErrorCode.INVALID_FIELD), str(e)) for e in invalid.errors]
        ) from None


async def create_ownership(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "create")
    body = _fields(await _json_body(request), allowed=("destination_conf",), required=("destination_conf",))
    destination = _destination(body["destination_conf"])
    challenge = own.new_challenge(destination, now=services.now())
    try:
        await _blocking(services.write_challenge, challenge)
    except StorageError as err:
        status = 400 if err.permanent else 503
        raise ApiError.one(
            status,
            ErrorCode.STORAGE,
            f"destination_conf: could not write the challenge file {challenge.destination.bucket}/"
            f"{challenge.key}: {err}",
        ) from None
    record = challenge.ownership

    def put(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        kept = {rid: r for rid, r in records.items() if r.destination_conf != record.destination_conf}
        return {**kept, record.id: record}

    await _blocking(services.ownerships.update, account, put)
    return web.json_response(success(record.to_upstream()))


async def validate_ownership(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "create")
    body = _fields(
        await _json_body(request),
        allowed=("destination_conf", "ownership_challenge"),
        required=("destination_conf", "ownership_challenge"),
    )
    destination = _destination(body["destination_conf"])
    now = services.now()
    outcome: list[own.Ownership] = []

    def check(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        record = own.find_for_destination(list(records.values()), destination)
        if record is None:
            raise ApiError.one(
                404,
                ErrorCode.NOT_FOUND,
                f"destination_conf: no ownership challenge for {body['destination_conf']} in account "
                f"{account}; create one first (POST {PREFIX}/accounts/{account}/pcaps/ownership)",
            )
        if not own.challenge_matches(record, body["ownership_challenge"]):
            raise ApiError.one(
                400,
                ErrorCode.INVALID_FIELD,
                f"ownership_challenge: does not match the contents of {record.filename} in the bucket",
            )
        done = record if record.status == "success" else own.validated(record, now=now)
        outcome.append(done)
        return {**records, done.id: done}

    await _blocking(services.ownerships.update, account, check)
    return web.json_response(success(outcome[-1].to_upstream()))


async def delete_ownership(request: web.Request) -> web.Response:
    services, _, account = await _authorized(request, "create")
    wanted = request.match_info["ownership_id"]

    def drop(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        if wanted not in records:
            raise ApiError.one(
                404,
                ErrorCode.NOT_FOUND,
                f"ownership_id: no ownership with id {wanted[:80]!r} in account {account}",
            )
        return {rid: r for rid, r in records.items() if rid != wanted}

    await _blocking(services.ownerships.update, account, drop)
    return web.Response(status=204)


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
        return _error_response(exc.status, [ErrorItem(int(code), message)], {"x-should-retry": "false"})
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
    app[SERVICES] = services or Services(
        settings=settings,
        authorizer=Authorizer(api),
        captures=CaptureObjects(api),
        ownerships=own.OwnershipStore(api, namespace=settings.operator_namespace),
        open_download=partial(open_capture_download, sample_store=sample_store),
    )
    base = PREFIX + ACCOUNT
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    app.router.add_get(f"{base}/ownership", list_ownerships)
    app.router.add_post(f"{base}/ownership", create_ownership)
    app.router.add_post(f"{base}/ownership/validate", validate_ownership)
    app.router.add_delete(f"{base}/ownership/{{ownership_id}}", delete_ownership)
    app.router.add_get(base, list_captures)
    app.router.add_post(base, create_capture)
    app.router.add_get(f"{base}/{{pcap_id}}", get_capture)
    app.router.add_get(f"{base}/{{pcap_id}}/download", download_capture)
    app.router.add_put(f"{base}/{{pcap_id}}/stop", stop_capture)
    return app


async def start_api(
    *, api: client.ApiClient, settings: ApiSettings, sample_store: SampleStore | None, host: str, port: int
) -> web.AppRunner:
    """Serve the API on ``host:port`` in the running event loop; ``await runner.cleanup()`` to stop."""
    runner = web.AppRunner(create_app(api=api, settings=settings, sample_store=sample_store), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host=host or None, port=port).start()
    log.info("PCAPs API listening on %s:%s%s", host or "*", port, PREFIX)
    return runner
