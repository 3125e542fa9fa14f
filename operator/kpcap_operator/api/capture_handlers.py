"""The capture endpoints of the REST API: list, get, create, stop, download.

Handlers orchestrate: authorise the caller (request.py), translate (mapping.py), apply the two rules
through ``admission`` (the one decision the webhook and the operator make too), and act on
PacketCapture objects through the operator's Kube adapter and on buckets (download.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from aiohttp import web
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import API_VERSION, KIND
from kpcap.model import TERMINAL, CaptureSpec, CaptureType
from kpcap.pcap import PCAP_MEDIA_TYPE, PcapFormatError
from kpcap.storage import StorageError
from kpcap_operator import admission, metrics
from kpcap_operator.api import ownership as own
from kpcap_operator.api.mapping import (
    ApiError,
    ErrorCode,
    capture_to_upstream,
    list_success,
    newest,
    request_to_spec,
    success,
)
from kpcap_operator.api.openapi import PREFIX
from kpcap_operator.api.request import (
    authorized,
    blocking,
    capture_id_param,
    find_capture,
    json_body,
    no_retry,
)

CREATED_BY_ANNOTATION: Final = "kpcap.io/created-by"

log = logging.getLogger(__name__)


def rule_conflict(
    *, spec: CaptureSpec, existing: Sequence[Mapping[str, Any]], now: datetime, window: timedelta
) -> str | None:
    """The message naming the rule a new capture would break, or None (as the webhook decides it)."""
    refusal = admission.refusal(
        capture=admission.new_capture(name="(new)", capture_type=spec.type, now=now),
        others=admission.existing_captures(existing),
        window=window,
    )
    if refusal is None:
        return None
    metrics.refused(source="api", reason=refusal.reason)
    return refusal.message


async def list_captures(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "list")
    objects = await blocking(services.captures.list_captures, account)
    return web.json_response(list_success([capture_to_upstream(obj) for obj in newest(objects)]))


async def get_capture(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "get")
    found = await find_capture(services, account, capture_id_param(request))
    return web.json_response(success(capture_to_upstream(found)))


async def create_capture(request: web.Request) -> web.Response:
    services, caller, account = await authorized(request, "create")
    body = await json_body(request)
    now = services.now()
    spec, stored = request_to_spec(body, now=now)
    if spec.type == CaptureType.FULL and spec.destination is not None:
        records = await blocking(services.ownerships.list, account)
        if not own.is_owned(records, spec.destination):
            bucket = f"{spec.destination.scheme.value}://{spec.destination.bucket}"
            raise ApiError.one(
                400,
                ErrorCode.BUCKET_NOT_OWNED,
                f"destination_conf: bucket {bucket} is not validated for account {account}; prove it is "
                f"yours first: POST {PREFIX}/accounts/{account}/pcaps/ownership with this destination_conf, "
                "then POST .../pcaps/ownership/validate with the contents of the challenge file it writes",
            )
    existing = await blocking(services.captures.list_captures, account)
    window = timedelta(seconds=services.settings.simple_rate_window_seconds)
    message = rule_conflict(spec=spec, existing=existing, now=now, window=window)
    if message is not None:
        code = ErrorCode.CAPTURE_ALREADY_ACTIVE if spec.type == CaptureType.FULL else ErrorCode.RATE_LIMITED
        raise no_retry(429, code, message)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"generateName": "pcap-", "annotations": {CREATED_BY_ANNOTATION: caller.username}},
        "spec": stored,
    }
    try:
        created = await blocking(services.captures.create_capture, account, manifest)
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
        return no_retry(429, ErrorCode.RATE_LIMITED, message)
    if err.status in (400, 422):
        return ApiError.one(400, ErrorCode.INVALID_FIELD, message)
    if err.status == 404:
        return ApiError.one(404, ErrorCode.NOT_FOUND, f"account_id: {message}")
    return ApiError.one(502, ErrorCode.BACKEND_UNAVAILABLE, f"the Kubernetes API refused: {message}")


async def stop_capture(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "patch")
    found = await find_capture(services, account, capture_id_param(request))
    status = (found.get("status") or {}).get("status")
    if status not in TERMINAL and not (found.get("spec") or {}).get("stop"):
        await blocking(services.captures.request_stop, account, found["metadata"]["name"])
    return web.Response(status=204)


async def download_capture(request: web.Request) -> web.StreamResponse:
    services, _, account = await authorized(request, "get")
    wanted = capture_id_param(request)
    found = await find_capture(services, account, wanted)
    status = found.get("status") or {}
    state = status.get("status") or "pending"
    if state not in TERMINAL:
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
        download = await blocking(services.open_download, found)
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
        while (chunk := await blocking(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
    except (StorageError, PcapFormatError, OSError) as err:
        # The status line is sent: the only way to say "failed" is to cut the stream short.
        log.warning("download of %s/%s failed mid-stream: %s", account, wanted, err)
        if request.transport is not None:
            request.transport.close()
    finally:
        await blocking(download.close)
    return response
