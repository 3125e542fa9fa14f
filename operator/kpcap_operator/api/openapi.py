"""The OpenAPI 3.0 document of kpcap's PCAPs API (served at ``GET /client/v4/openapi.json``)."""

from __future__ import annotations

from typing import Any, Final

from kpcap.model import BYTE_LIMIT_RANGE, PACKET_LIMIT_RANGE, PORT_RANGE, PROTOCOL_RANGE, TIME_LIMIT_RANGE

PREFIX: Final = "/client/v4"
ACCOUNT: Final = "/accounts/{account_id}/pcaps"

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "minLength": 32, "maxLength": 32}


def _param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _int(bounds: tuple[int, int]) -> dict[str, Any]:
    return {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}


_ACCOUNT_PARAM = _param(
    "account_id", {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
)
_PCAP_PARAM = _param("pcap_id", _ID)
_OWNERSHIP_PARAM = _param("ownership_id", _ID)

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer", "minimum": 1000}, "message": {"type": "string"}},
    },
    "Failure": {
        "type": "object",
        "required": ["result", "success", "errors", "messages"],
        "properties": {
            "result": {"nullable": True},
            "success": {"type": "boolean", "enum": [False]},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/Error"}},
            "messages": {"type": "array", "items": {}},
        },
    },
    "Filter": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "source_address": {"type": "string", "description": "IPv4 or IPv6 address"},
            "destination_address": {"type": "string", "description": "IPv4 or IPv6 address"},
            "source_port": _int(PORT_RANGE),
            "destination_port": _int(PORT_RANGE),
            "protocol": _int(PROTOCOL_RANGE),
        },
    },
    "CreateRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "time_limit"],
        "properties": {
            "type": {"type": "string", "enum": ["simple", "full"]},
            "system": {"type": "string", "enum": ["magic-transit", "host-network"]},
            "time_limit": _int(TIME_LIMIT_RANGE),
            "packet_limit": _int(PACKET_LIMIT_RANGE),
            "byte_limit": {**_int(BYTE_LIMIT_RANGE), "description": "full only"},
            "colo_name": {"type": "string", "description": "a node label value; required for full"},
            "colo": {"type": "string", "description": "alias of colo_name"},
            "destination_conf": {
                "type": "string",
                "description": "full only: s3://bucket/prefix?region=R[&endpoint=URL] or gs://bucket/prefix",
            },
            "offset_time": {"type": "string", "format": "date-time", "description": "simple only"},
            "filter_v1": {"$ref": "#/components/schemas/Filter"},
            "node_selector": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "kpcap extension: node labels, ANDed with colo_name",
            },
        },
    },
    "Capture": {
        "type": "object",
        "required": ["id", "submitted", "type", "system", "status"],
        "properties": {
            "id": _ID,
            "submitted": {"type": "string"},
            "type": {"type": "string"},
            "system": {"type": "string"},
            "filter_v1": {"$ref": "#/components/schemas/Filter"},
            "time_limit": {"type": "integer"},
            "packet_limit": {"type": "integer"},
            "byte_limit": {"type": "integer"},
            "colo_name": {"type": "string"},
            "destination_conf": {"type": "string"},
            "offset_time": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "unknown",
                    "pending",
                    "running",
                    "conversion_pending",
                    "conversion_running",
                    "success",
                    "complete",
                    "failed",
                ],
            },
            "packets_captured": {"type": "integer"},
            "packets_remaining": {"type": "integer"},
            "stop_requested": {"type": "string"},
            "error_message": {"type": "string"},
        },
    },
    "OwnershipCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["destination_conf"],
        "properties": {"destination_conf": {"type": "string"}},
    },
    "OwnershipValidate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["destination_conf", "ownership_challenge"],
        "properties": {"destination_conf": {"type": "string"}, "ownership_challenge": {"type": "string"}},
    },
    "Ownership": {
        "type": "object",
        "required": ["id", "destination_conf", "filename", "status", "submitted"],
        "properties": {
            "id": _ID,
            "destination_conf": {"type": "string"},
            "filename": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "success", "failed"]},
            "submitted": {"type": "string"},
            "validated": {"type": "string"},
        },
    },
}


def _envelope(result: dict[str, Any], *, listing: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["result", "success", "errors", "messages"],
        "properties": {
            "result": {"type": "array", "items": result} if listing else result,
            "success": {"type": "boolean", "enum": [True]},
            "errors": {"type": "array", "maxItems": 0},
            "messages": {"type": "array"},
        },
    }
    if listing:
        schema["properties"]["result_info"] = {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("count", "page", "per_page", "total_count")},
        }
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    failure = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Failure"}}}}
    described = {
        400: "invalid request (the message names the field)",
        401: "missing or invalid bearer token",
        403: "the caller's RBAC does not allow this in the namespace",
        404: "no such capture or ownership",
        409: "not ready (a capture still running)",
        413: "request body too large",
        429: "a capture rule refused it (x-should-retry: false)",
    }
    return {str(s): {"description": described[s], **failure} for s in (401, 403, *statuses)}


def _body(name: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


_CAPTURE = {"$ref": "#/components/schemas/Capture"}
_OWNERSHIP = {"$ref": "#/components/schemas/Ownership"}
_NO_CONTENT = {"204": {"description": "done"}}


def openapi_document() -> dict[str, Any]:
    base = PREFIX + ACCOUNT
    paths: dict[str, Any] = {
        base: {
            "parameters": [_ACCOUNT_PARAM],
            "get": {
                "operationId": "pcaps.list",
                "summary": "List the 50 newest captures of the account (namespace)",
                "responses": {"200": _envelope(_CAPTURE, listing=True), **_errors()},
            },
            "post": {
                "operationId": "pcaps.create",
                "summary": "Create a capture (200, as upstream)",
                "requestBody": _body("CreateRequest"),
                "responses": {"200": _envelope(_CAPTURE), **_errors(400, 413, 429)},
            },
        },
        f"{base}/ownership": {
            "parameters": [_ACCOUNT_PARAM],
            "get": {
                "operationId": "pcaps.ownership.get",
                "summary": "List the bucket ownerships of the account",
                "responses": {"200": _envelope(_OWNERSHIP, listing=True), **_errors()},
            },
            "post": {
                "operationId": "pcaps.ownership.create",
                "summary": "Write a challenge file into the bucket; the ownership is pending",
                "requestBody": _body("OwnershipCreate"),
                "responses": {"200": _envelope(_OWNERSHIP), **_errors(400, 413)},
            },
        },
        f"{base}/ownership/validate": {
            "parameters": [_ACCOUNT_PARAM],
            "post": {
                "operationId": "pcaps.ownership.validate",
                "summary": "Post the challenge file's contents; the ownership succeeds if they match",
                "requestBody": _body("OwnershipValidate"),
                "responses": {"200": _envelope(_OWNERSHIP), **_errors(400, 404, 413)},
            },
        },
        f"{base}/ownership/{{ownership_id}}": {
            "parameters": [_ACCOUNT_PARAM, _OWNERSHIP_PARAM],
            "delete": {
                "operationId": "pcaps.ownership.delete",
                "summary": "Delete a bucket ownership",
                "responses": {**_NO_CONTENT, **_errors(404)},
            },
        },
        f"{base}/{{pcap_id}}": {
            "parameters": [_ACCOUNT_PARAM, _PCAP_PARAM],
            "get": {
                "operationId": "pcaps.get",
                "summary": "Get a capture",
                "responses": {"200": _envelope(_CAPTURE), **_errors(404)},
            },
        },
        f"{base}/{{pcap_id}}/download": {
            "parameters": [_ACCOUNT_PARAM, _PCAP_PARAM],
            "get": {
                "operationId": "pcaps.download.get",
                "summary": "The capture's PCAP (a full capture's node files merged by timestamp)",
                "responses": {
                    "200": {
                        "description": "a classic libpcap file",
                        "content": {
                            "application/vnd.tcpdump.pcap": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **_errors(404, 409),
                },
            },
        },
        f"{base}/{{pcap_id}}/stop": {
            "parameters": [_ACCOUNT_PARAM, _PCAP_PARAM],
            "put": {
                "operationId": "pcaps.stop",
                "summary": "Stop a running capture (it uploads what it has)",
                "responses": {**_NO_CONTENT, **_errors(404)},
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kpcap PCAPs API",
            "version": "v4",
            "description": "Packet captures on Kubernetes, compatible with the public PCAPs API. "
            "Account id = namespace. Every call needs 'Authorization: Bearer <Kubernetes token>'.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
