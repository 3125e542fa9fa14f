"""What a REST API handler reads from its request: the authorised caller and account, the JSON body,
the capture named in the path. Every refusal is an ``ApiError`` (the upstream failure envelope).

The Kubernetes and storage clients block, so handlers run every call to them through ``blocking``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final, ParamSpec, TypeVar

from aiohttp import web

from kpcap.names import is_capture_id
from kpcap_operator.api.auth import Caller, bearer_token
from kpcap_operator.api.mapping import ApiError, ErrorCode, ErrorItem, find_by_id
from kpcap_operator.api.services import SERVICES, Services

_ACCOUNT_MAX: Final = 63

P = ParamSpec("P")
T = TypeVar("T")


async def blocking(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(partial(function, *args, **kwargs))


def account(request: web.Request) -> str:
    name = request.match_info["account_id"]
    valid = (
        0 < len(name) <= _ACCOUNT_MAX
        and name.isascii()
        and all(ch.islower() or ch.isdigit() or ch == "-" for ch in name)
        and name[0] != "-"
        and name[-1] != "-"
    )
    if not valid:
        raise ApiError.one(
            404,
            ErrorCode.NOT_FOUND,
            f"account_id: must be a Kubernetes namespace name (1 to 63 lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit), got {name[:80]!r}",
        )
    return name


async def authorized(request: web.Request, verb: str) -> tuple[Services, Caller, str]:
    services = request.app[SERVICES]
    token = bearer_token(request.headers.get("Authorization"))
    caller = await blocking(services.authorizer.authenticate, token)
    namespace = account(request)
    await blocking(services.authorizer.authorize, caller, verb=verb, namespace=namespace)
    return services, caller, namespace


async def json_body(request: web.Request) -> object:
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


def fields(body: object, *, allowed: Sequence[str], required: Sequence[str]) -> Mapping[str, Any]:
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


def capture_id_param(request: web.Request) -> str:
    wanted = request.match_info["pcap_id"]
    if not is_capture_id(wanted):
        raise ApiError.one(
            404,
            ErrorCode.NOT_FOUND,
            f"pcap_id: must be a capture id (32 lowercase hexadecimal characters), got {wanted[:80]!r}",
        )
    return wanted


async def find_capture(services: Services, namespace: str, wanted: str) -> Mapping[str, Any]:
    found = find_by_id(await blocking(services.captures.list_captures, namespace), wanted)
    if found is None:
        raise ApiError.one(
            404, ErrorCode.NOT_FOUND, f"pcap_id: no capture with id {wanted} in account {namespace}"
        )
    return found


def no_retry(status: int, code: ErrorCode, message: str) -> ApiError:
    return ApiError.one(status, code, message, headers={"x-should-retry": "false"})
