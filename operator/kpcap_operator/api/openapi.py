"""The OpenAPI 3.1 document of kpcap's PCAPs API (served at ``GET /client/v4/openapi.json``).

The request schemas are derived from ``kpcap.spec_rules`` (the rules ``parse_spec`` enforces and the
CRD states), renamed to the upstream fields by ``mapping.REQUEST_FIELDS``: every limit, enum,
pattern and type rule the API enforces is in the document, so a client generated from it sends no
request the API refuses for its shape. What no schema can state is in the descriptions: the
``offset_time`` window (relative to now), the bucket-name rules beyond the URI's shape, a validated
bucket ownership, and the two capture rules (429).
"""

from __future__ import annotations

from typing import Any, Final

from kpcap import spec_rules
from kpcap.spec_rules import PORT_PROTOCOLS, CaptureType
from kpcap_operator.api.mapping import FILTER_FIELDS, REQUEST_FIELDS

PREFIX: Final = "/client/v4"
ACCOUNT: Final = "/accounts/{account_id}/pcaps"

Schema = dict[str, Any]

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "minLength": 32, "maxLength": 32}
_NULL: Final = {"type": "null"}


def _param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_ACCOUNT_PARAM = _param(
    "account_id",
    {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "minLength": 1, "maxLength": 63},
)
_PCAP_PARAM = _param("pcap_id", _ID)
_OWNERSHIP_PARAM = _param("ownership_id", _ID)

# Descriptions of what the schema keywords cannot say.
_DESCRIPTIONS: Final = {
    "type": "simple: sampled headers of past traffic, completes at once; full: live, to a bucket",
    "system": "magic-transit (upstream's value) is an alias of host-network",
    "time_limit": "seconds",
    "packet_limit": "required for simple; for full, defaults to the maximum",
    "byte_limit": "full only; counts the bytes kept (after snap_length), not the bytes on the wire",
    "snap_length": "kpcap extension (not in the upstream API): bytes kept of each packet, the rest "
    "cut in the kernel; each record keeps the packet's original length. Absent: the whole packet. "
    "Simple samples hold at most the samplers' own snap length (default 128 bytes)",
    "colo_name": "a value of the node label the operator is configured with; for full, colo_name or "
    "node_selector is required",
    "colo": "alias of colo_name (give one, not both)",
    "destination_conf": "full only, required for full: s3://bucket/prefix?region=R[&endpoint=URL] or "
    "gs://bucket/prefix, with valid S3/GCS bucket names and no credentials; the bucket must have "
    "a validated ownership in the account",
    "offset_time": "simple only: RFC 3339 with a time zone, not in the future and at most 24 h before "
    "the request",
    "filter_v1": "every field optional, all given fields must match; empty = all packets",
    "node_selector": "kpcap extension: node labels, ANDed with colo_name",
}


def _nullable(schema: Schema) -> Schema:
    # The API reads a JSON null as an absent field (as the apiserver prunes nulls).
    return {"anyOf": [schema, _NULL]}


def _given(name: str) -> Schema:
    """The field is there and not null."""
    return {"required": [name], "properties": {name: {"not": _NULL}}}


def _absent(*names: str) -> Schema:
    """Each field is absent or null."""
    return {"properties": dict.fromkeys(names, _NULL)}


def _request_names(spec_field: str) -> list[str]:
    return [snake for snake, camel in REQUEST_FIELDS.items() if camel == spec_field]


def filter_schema() -> Schema:
    """``filter_v1``: spec_rules' filter fields and the two consistency rules."""
    fields = spec_rules.filter_field_schemas()
    names = {camel: snake for snake, camel in FILTER_FIELDS.items()}
    source, destination = names["sourceAddress"], names["destinationAddress"]
    ports = (names["sourcePort"], names["destinationPort"])
    protocol = names["protocol"]
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {names[camel]: _nullable(schema) for camel, schema in fields.items()},
        "allOf": [
            {  # both addresses of one IP version, since no packet could match both otherwise
                "anyOf": [
                    _absent(source),
                    _absent(destination),
                    *(
                        {"properties": {source: {"format": version}, destination: {"format": version}}}
                        for version in ("ipv4", "ipv6")
                    ),
                ]
            },
            {  # a port filter needs a protocol that carries ports
                "anyOf": [
                    _absent(protocol),
                    _absent(*ports),
                    {"properties": {protocol: {"enum": list(PORT_PROTOCOLS)}}},
                ]
            },
        ],
        "description": _DESCRIPTIONS["filter_v1"],
    }


def _type_rules(capture_type: CaptureType) -> Schema:
    """What a capture of one type requires and forbids (spec_rules.REQUIRED_BY_TYPE, ONLY_FOR_TYPE)."""
    forbidden = [
        name
        for spec_field, only in spec_rules.ONLY_FOR_TYPE.items()
        if only is not capture_type
        for name in _request_names(spec_field)
    ]
    required = [
        name
        for spec_field in spec_rules.REQUIRED_BY_TYPE[capture_type]
        for name in _request_names(spec_field)
    ]
    rules: list[Schema] = [{"properties": {"type": {"enum": [capture_type.value]}}}, _absent(*forbidden)]
    rules += [_given(name) for name in required]
    if capture_type is CaptureType.FULL:
        targets = [
            name for spec_field in spec_rules.FULL_TARGET_FIELDS for name in _request_names(spec_field)
        ]
        rules.append({"anyOf": [_given(name) for name in targets]})
    return {"allOf": rules}


def create_request_schema() -> Schema:
    """The create request: every spec field under its upstream name, with the spec's rules."""
    fields = spec_rules.field_schemas()
    properties: dict[str, Schema] = {}
    for name, spec_field in REQUEST_FIELDS.items():
        if spec_field == "filter":
            schema = filter_schema()
        else:
            schema = {key: value for key, value in fields[spec_field].items() if key != "default"}
        if spec_field == "nodeSelector":
            schema["propertyNames"] = spec_rules.label_key_schema()
            # parse_spec allows an empty label value, but an apiserver (1.20 at least) reads "" in
            # a map of strings as null and refuses the object: the document asks for a value.
            schema["additionalProperties"]["minLength"] = 1
        if spec_field == "destinationConf":
            schema["allOf"] = [{"pattern": spec_rules.DESTINATION_CHARACTERS_PATTERN}]
        if name in _DESCRIPTIONS:
            schema["description"] = _DESCRIPTIONS[name]
        required = spec_field in spec_rules.REQUIRED_FIELDS
        properties[name] = schema if required else _nullable(schema)
    colo_names = _request_names("colo")
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for field in spec_rules.REQUIRED_FIELDS for name in _request_names(field)],
        "properties": properties,
        "oneOf": [_type_rules(capture_type) for capture_type in CaptureType],
        # colo and colo_name are one field: the schema cannot say "equal", so it says "one of them".
        "not": {"allOf": [_given(name) for name in colo_names]},
    }


def _destination_conf() -> Schema:
    return {
        **spec_rules.field_schemas()["destinationConf"],
        "allOf": [{"pattern": spec_rules.DESTINATION_CHARACTERS_PATTERN}],
        "description": "a bucket URI, as for a capture",
    }


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
            "result": _NULL,
            "success": {"type": "boolean", "enum": [False]},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/Error"}},
            "messages": {"type": "array", "items": {}},
        },
    },
    "Filter": filter_schema(),
    "CreateRequest": create_request_schema(),
    "Capture": {
        "type": "object",
        "required": ["id", "submitted", "type", "system", "status"],
        "properties": {
            "id": _ID,
            "name": {"type": "string", "description": "kpcap extension: the PacketCapture's name"},
            "submitted": {"type": "string"},
            "type": {"type": "string"},
            "system": {"type": "string"},
            "filter_v1": {"$ref": "#/components/schemas/Filter"},
            "time_limit": {"type": "integer"},
            "packet_limit": {"type": "integer"},
            "byte_limit": {"type": "integer"},
            "snap_length": {"type": "integer", "description": "kpcap extension: bytes kept of each packet"},
            "colo_name": {"type": "string"},
            "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
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
            "files": {"type": "array", "items": {"type": "string"}},
        },
    },
    "OwnershipCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["destination_conf"],
        "properties": {"destination_conf": _destination_conf()},
    },
    "OwnershipValidate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["destination_conf", "ownership_challenge"],
        "properties": {
            "destination_conf": _destination_conf(),
            "ownership_challenge": {
                "type": "string",
                "description": "the contents of the challenge file written into the bucket",
            },
        },
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
        404: "no such account (namespace name), capture or ownership",
        409: "not ready (a capture still running)",
        413: "request body too large",
        429: "a capture rule refused it (x-should-retry: false)",
        502: "the Kubernetes API or the bucket refused the operator",
        503: "the Kubernetes API or the bucket did not answer",
    }
    return {str(s): {"description": described[s], **failure} for s in sorted({401, 403, 404, 503, *statuses})}


def _links(parameter: str, *operations: str) -> dict[str, Any]:
    """OpenAPI links: the new object's id feeds the operations that take it."""
    return {
        operation: {"operationId": operation, "parameters": {parameter: "$response.body#/result/id"}}
        for operation in operations
    }


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
                "responses": {
                    "200": {
                        **_envelope(_CAPTURE),
                        "links": _links("pcap_id", "pcaps.get", "pcaps.download.get", "pcaps.stop"),
                    },
                    **_errors(400, 413, 429, 502),
                },
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
                "responses": {
                    "200": {
                        **_envelope(_OWNERSHIP),
                        "links": _links("ownership_id", "pcaps.ownership.delete"),
                    },
                    **_errors(400, 413),
                },
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
                    **_errors(404, 409, 502),
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
        "openapi": "3.1.0",
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
