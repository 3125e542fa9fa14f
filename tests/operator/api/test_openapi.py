"""The OpenAPI document states what the API enforces, from kpcap.spec_rules: every body its create
schema allows is accepted by ``request_to_spec``, and every spec the model refuses is refused by the
schema too, except what no schema can state (named below)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from kpcap import spec_rules
from kpcap.model import format_rfc3339
from kpcap_operator.api.mapping import FILTER_FIELDS, REQUEST_FIELDS, ApiError, request_to_spec
from kpcap_operator.api.openapi import ACCOUNT, PREFIX, SCHEMAS, openapi_document
from tests.support.spec_cases import INVALID, NOW

DOCUMENT = openapi_document()
CREATE = jsonschema_rs.validator_for(SCHEMAS["CreateRequest"], validate_formats=True)
OWNERSHIP = jsonschema_rs.validator_for(SCHEMAS["OwnershipCreate"], validate_formats=True)
# What no schema can state: bucket-name rules beyond the URI's shape, and the offsetTime window
# (relative to now). The create description says both; the fuzz test's hooks respect them.
API_ONLY = {"destinationConf bad bucket", "offsetTime future", "offsetTime too old"}
OWNED = "s3://kpcap-captures/captures?region=us-east-1"


def upstream(spec: dict[str, Any]) -> dict[str, Any]:
    """A camelCase spec as an upstream create request."""
    names = {camel: snake for snake, camel in REQUEST_FIELDS.items() if snake != "colo"}
    inner = {camel: snake for snake, camel in FILTER_FIELDS.items()}
    body = {names.get(key, key): value for key, value in spec.items()}
    if isinstance(body.get("filter_v1"), dict):
        body["filter_v1"] = {inner.get(k, k): v for k, v in body["filter_v1"].items()}
    return body


def _refused(body: Any) -> bool:
    try:
        request_to_spec(body, now=NOW)
    except ApiError as error:
        return error.status == 400
    return False


def _request_property(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = SCHEMAS["CreateRequest"]["properties"][name]
    return schema.get("anyOf", [schema])[0]  # optional fields are "this or null"


@pytest.mark.parametrize(("spec_field", "bounds"), [
    ("timeLimit", spec_rules.TIME_LIMIT_RANGE),
    ("packetLimit", spec_rules.PACKET_LIMIT_RANGE),
    ("byteLimit", spec_rules.BYTE_LIMIT_RANGE),
])  # fmt: skip
def test_limits_come_from_spec_rules(spec_field: str, bounds: tuple[int, int]) -> None:
    name = next(snake for snake, camel in REQUEST_FIELDS.items() if camel == spec_field)
    schema = _request_property(name)
    assert (schema["minimum"], schema["maximum"]) == bounds


def test_every_spec_field_is_a_request_field_with_the_spec_rules() -> None:
    fields = spec_rules.field_schemas()
    for name, spec_field in REQUEST_FIELDS.items():
        schema = _request_property(name)
        for keyword in ("type", "enum", "minimum", "maximum", "pattern", "minLength", "maxLength", "format"):
            if spec_field != "filter":
                assert schema.get(keyword) == fields[spec_field].get(keyword), (name, keyword)


@pytest.mark.parametrize(
    ("case", "spec"),
    [(case, spec) for case, spec, _, _ in INVALID if isinstance(spec, dict) and "stop" not in spec],
)
def test_the_schema_refuses_what_the_api_refuses(case: str, spec: dict[str, Any]) -> None:
    body = upstream(spec)
    assert _refused(body)
    assert CREATE.is_valid(body) == (case in API_ONLY)


@pytest.mark.parametrize(
    "body",
    [
        # The fuzz run's findings: refused by the API, so now refused by the schema.
        {"type": "full", "time_limit": 5, "colo_name": "a", "destination_conf": ""},
        {"type": "simple", "time_limit": 5, "packet_limit": 5, "filter_v1": {"source_address": ""}},
        {"type": "simple", "time_limit": 5, "packet_limit": 5, "filter_v1": {"destination_address": ""}},
        {"type": "full", "time_limit": 5, "colo": "a", "colo_name": "b", "destination_conf": OWNED},
        {"type": "full", "time_limit": 5, "colo_name": "a", "destination_conf": "s3://b\x1ex/y"},
        {"type": "simple", "time_limit": 5, "packet_limit": 5, "node_selector": {"-bad": "x"}},
    ],
)
def test_fuzz_findings_are_refused_by_both(body: dict[str, Any]) -> None:
    assert _refused(body)
    assert not CREATE.is_valid(body)


def test_empty_node_selector_values_are_not_in_the_document() -> None:
    # request_to_spec takes them; the apiserver then refuses the object (found by the live fuzz run).
    body = {"type": "simple", "time_limit": 5, "packet_limit": 5, "node_selector": {"zone": ""}}
    assert not _refused(body)
    assert not CREATE.is_valid(body)


def test_ownership_destination_has_the_capture_rules() -> None:
    assert not OWNERSHIP.is_valid({"destination_conf": ""})
    assert OWNERSHIP.is_valid({"destination_conf": OWNED})


def test_valid_requests_are_schema_valid() -> None:
    bodies = [
        {"type": "simple", "system": "magic-transit", "time_limit": 5, "packet_limit": 10},
        {"type": "simple", "time_limit": 5, "packet_limit": 10, "colo": None, "byte_limit": None},
        {"type": "full", "time_limit": 5, "colo_name": "a", "destination_conf": OWNED, "byte_limit": 9},
        {"type": "full", "time_limit": 5, "node_selector": {"kubernetes.io/os": "linux"}, "destination_conf": OWNED},
        {
            "type": "simple",
            "time_limit": 5,
            "packet_limit": 10,
            "offset_time": format_rfc3339(NOW - timedelta(hours=1)),
            "filter_v1": {"source_address": "198.51.100.7", "destination_address": "192.0.2.1", "protocol": 6,
                          "destination_port": 80},
        },
    ]  # fmt: skip
    for body in bodies:
        assert CREATE.is_valid(body), body
        assert not _refused(body), body


_CREATE_OPERATION = schemathesis.openapi.from_dict(DOCUMENT)[PREFIX + ACCOUNT]["POST"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_every_schema_valid_create_body_is_accepted(data: st.DataObject) -> None:
    body = data.draw(_CREATE_OPERATION.as_strategy(GenerationMode.POSITIVE)).body
    # The two values that depend on state or the clock (as the fuzz test's hooks do): a bucket the
    # account owns, and an offset within the last 24 hours.
    if body.get("destination_conf") is not None:
        body["destination_conf"] = OWNED
    if body.get("offset_time") is not None:
        body["offset_time"] = format_rfc3339(NOW - timedelta(hours=1))
    assert not _refused(body), body
