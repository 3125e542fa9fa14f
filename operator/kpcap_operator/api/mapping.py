"""Pure translations between the upstream PCAPs API and PacketCapture objects (no I/O here).

* ``request_to_spec``: an upstream create request (snake_case) -> the validated CaptureSpec and the
  camelCase spec to store. Validation is ``kpcap.model.parse_spec`` itself, so the rules and the
  wording are those of the webhook and the operator; only the field names in the messages are
  rewritten to the upstream ones (``spec.timeLimit`` -> ``time_limit``).
* ``capture_to_upstream``: a PacketCapture object -> the upstream capture object.
* ``success`` / ``failure``: the upstream envelope; ``ApiError`` carries an HTTP status, error codes
  and extra headers to the web layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Final

from kpcap.errors import FieldError, SpecInvalid, describe_value
from kpcap.model import CaptureSpec, parse_spec, spec_to_dict
from kpcap.names import capture_id
from kpcap_operator import spec_changes

Json = dict[str, Any]

LIST_LIMIT: Final = 50
DEFAULT_STATUS: Final = "pending"  # an object the operator has not decided yet


class ErrorCode(IntEnum):
    """``errors[].code`` values (all >= 1000, as upstream); stable, clients may match them."""

    INTERNAL = 1000
    MALFORMED_REQUEST = 1001
    INVALID_FIELD = 1002
    FORBIDDEN = 1003
    NOT_FOUND = 1004
    RATE_LIMITED = 1005
    CAPTURE_ALREADY_ACTIVE = 1006
    BUCKET_NOT_OWNED = 1007
    BODY_TOO_LARGE = 1008
    METHOD_NOT_ALLOWED = 1009
    NOT_READY = 1010
    BACKEND_UNAVAILABLE = 1011
    STORAGE = 1012
    AUTHENTICATION = 10000  # upstream's own code for "Authentication error"


@dataclass(frozen=True, slots=True)
class ErrorItem:
    code: int
    message: str


class ApiError(Exception):
    """A refusal to render in the upstream failure envelope with ``status``."""

    def __init__(
        self,
        status: int,
        errors: Sequence[ErrorItem] | ErrorItem,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.errors: tuple[ErrorItem, ...] = (errors,) if isinstance(errors, ErrorItem) else tuple(errors)
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__("; ".join(item.message for item in self.errors))

    @classmethod
    def one(
        cls, status: int, code: ErrorCode, message: str, *, headers: Mapping[str, str] | None = None
    ) -> ApiError:
        return cls(status, ErrorItem(int(code), message), headers=headers)


def success(result: Any, *, result_info: Json | None = None) -> Json:
    envelope: Json = {"result": result, "success": True, "errors": [], "messages": []}
    if result_info is not None:
        envelope["result_info"] = result_info
    return envelope


def list_success(items: Sequence[Any]) -> Json:
    """A list result: always ``"result": []`` when empty, with ``result_info``."""
    return success(
        list(items),
        result_info={"count": len(items), "page": 1, "per_page": LIST_LIMIT, "total_count": len(items)},
    )


def failure(errors: Iterable[ErrorItem]) -> Json:
    return {
        "result": None,
        "success": False,
        "errors": [{"code": item.code, "message": item.message} for item in errors],
        "messages": [],
    }


# --- request -> spec ------------------------------------------------------------------------------

# Upstream (and kpcap's extensions ``node_selector`` and ``snap_length``) request fields -> spec fields.
REQUEST_FIELDS: Final = {
    "type": "type",
    "system": "system",
    "time_limit": "timeLimit",
    "packet_limit": "packetLimit",
    "byte_limit": "byteLimit",
    "snap_length": "snapLength",
    "colo_name": "colo",
    "colo": "colo",
    "destination_conf": "destinationConf",
    "offset_time": "offsetTime",
    "filter_v1": "filter",
    "node_selector": "nodeSelector",
}
FILTER_FIELDS: Final = {
    "source_address": "sourceAddress",
    "destination_address": "destinationAddress",
    "source_port": "sourcePort",
    "destination_port": "destinationPort",
    "protocol": "protocol",
}
_SPEC_PATH = re.compile(r"spec(?:\.[A-Za-z][A-Za-z0-9]*)+|\bspec\b")


def _invalid(errors: Sequence[FieldError]) -> ApiError:
    return ApiError(400, [ErrorItem(int(ErrorCode.INVALID_FIELD), str(error)) for error in errors])


def upstream_path(path: str, *, colo_field: str = "colo_name") -> str:
    """``spec.filter.sourcePort`` -> ``filter_v1.source_port``; ``spec.timeLimit`` -> ``time_limit``."""
    parts = path.split(".")
    if parts[0] != "spec":
        return path
    if len(parts) == 1:
        return "request body"
    top = {camel: snake for snake, camel in REQUEST_FIELDS.items() if snake != "colo"}
    top["colo"] = colo_field
    head = top.get(parts[1], parts[1])
    if parts[1] == "filter" and len(parts) > 2:
        inner = {camel: snake for snake, camel in FILTER_FIELDS.items()}
        return ".".join([head, inner.get(parts[2], parts[2]), *parts[3:]])
    return ".".join([head, *parts[2:]])


def upstream_error(error: FieldError, *, colo_field: str = "colo_name") -> FieldError:
    """The same error in upstream names, in its field and in its message text."""
    message = _SPEC_PATH.sub(lambda m: upstream_path(m.group(0), colo_field=colo_field), error.message)
    return FieldError(field=upstream_path(error.field, colo_field=colo_field), message=message)


def request_to_spec(body: object, *, now: datetime) -> tuple[CaptureSpec, Json]:
    """Validate an upstream create request; the typed spec and the camelCase spec to store.

    Raises ApiError(400) listing every problem, each naming its upstream field.
    """
    if not isinstance(body, Mapping):
        raise _invalid(
            [FieldError(field="request body", message=f"must be a JSON object, got {_kind(body)}")]
        )
    errors: list[FieldError] = []
    spec: Json = {}
    for name, value in body.items():
        if name not in REQUEST_FIELDS:
            errors.append(
                FieldError(
                    field=str(name),
                    message=f"unknown field, the fields of a capture request are {', '.join(REQUEST_FIELDS)}",
                )
            )
            continue
        if value is None:
            continue
        spec[REQUEST_FIELDS[name]] = _filter_to_spec(value, errors) if name == "filter_v1" else value
    colo_field = "colo" if body.get("colo") is not None and body.get("colo_name") is None else "colo_name"
    if body.get("colo") is not None and body.get("colo_name") is not None:
        spec["colo"] = body["colo_name"]
        if body["colo"] != body["colo_name"]:
            errors.append(
                FieldError(
                    field="colo",
                    message="colo and colo_name are the same field (give one), got "
                    f"{describe_value(body['colo'])} and {describe_value(body['colo_name'])}",
                )
            )
    try:
        parsed = parse_spec(spec, now=now)
    except SpecInvalid as invalid:
        errors.extend(upstream_error(error, colo_field=colo_field) for error in invalid.errors)
        raise _invalid(errors) from None
    if errors:
        raise _invalid(errors)
    return parsed, spec_to_dict(parsed)


def _filter_to_spec(value: object, errors: list[FieldError]) -> object:
    if not isinstance(value, Mapping):
        return value  # parse_spec reports it (as filter_v1) with the allowed shape
    converted: Json = {}
    for name, inner in value.items():
        if name not in FILTER_FIELDS:
            errors.append(
                FieldError(
                    field=f"filter_v1.{name}",
                    message=f"unknown field, the fields of filter_v1 are {', '.join(FILTER_FIELDS)}",
                )
            )
        elif inner is not None:
            converted[FILTER_FIELDS[name]] = inner
    return converted


def _kind(value: object) -> str:
    return describe_value(value, limit=40)


# --- object -> upstream ---------------------------------------------------------------------------


def capture_to_upstream(obj: Mapping[str, Any]) -> Json:
    """The upstream capture object of a PacketCapture (fields absent from the object are left out)."""
    meta = obj.get("metadata") or {}
    spec = spec_changes.admitted(obj)  # what runs (spec_changes), not a later edit
    status = obj.get("status") or {}
    filter_spec = spec.get("filter") or {}
    inner = {camel: snake for snake, camel in FILTER_FIELDS.items()}
    result: Json = {
        "id": capture_id(str(meta.get("uid", ""))),
        "submitted": status.get("submitted") or meta.get("creationTimestamp") or "",
        "type": spec.get("type"),
        "system": spec.get("system") or "host-network",
        "filter_v1": {inner[k]: v for k, v in filter_spec.items() if k in inner},
        "time_limit": spec.get("timeLimit"),
        "packet_limit": spec.get("packetLimit"),
        "status": status.get("status") or DEFAULT_STATUS,
        "packets_captured": int(status.get("packetsCaptured") or 0),
    }
    optional = {
        "byte_limit": spec.get("byteLimit"),
        "snap_length": spec.get("snapLength"),
        "colo_name": spec.get("colo"),
        "destination_conf": spec.get("destinationConf"),
        "offset_time": spec.get("offsetTime"),
        "packets_remaining": status.get("packetsRemaining"),
        "stop_requested": status.get("stopRequested"),
        "error_message": status.get("errorMessage"),
        "node_selector": spec.get("nodeSelector"),
        "files": status.get("files"),
        "name": meta.get("name"),
    }
    result.update({key: value for key, value in optional.items() if value is not None})
    return result


def creation_order(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("uid") or ""))


def newest(objects: Iterable[Mapping[str, Any]], *, limit: int = LIST_LIMIT) -> list[Mapping[str, Any]]:
    """The ``limit`` newest objects, newest first (RFC 3339 UTC stamps sort as text)."""
    return sorted(objects, key=creation_order, reverse=True)[:limit]


def find_by_id(objects: Iterable[Mapping[str, Any]], wanted: str) -> Mapping[str, Any] | None:
    for obj in objects:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        if uid.replace("-", "").lower() == wanted:
            return obj
    return None
