"""kpcap.spec_rules says what the CRD says (field by field: bounds, enums, patterns, lengths, formats,
defaults, required fields, the type rules of its CEL), and parse_spec enforces exactly those rules."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kpcap.errors import SpecInvalid
from kpcap.model import format_rfc3339, parse_spec
from kpcap.names import is_label_key, is_label_value
from kpcap.spec_rules import (
    BYTE_LIMIT_RANGE,
    FILTER_FIELDS,
    FULL_TARGET_FIELDS,
    ONLY_FOR_TYPE,
    PACKET_LIMIT_RANGE,
    PORT_PROTOCOLS,
    PORT_RANGE,
    PROTOCOL_RANGE,
    REQUIRED_BY_TYPE,
    REQUIRED_FIELDS,
    SPEC_FIELDS,
    TIME_LIMIT_RANGE,
    CaptureType,
    field_schemas,
    label_key_schema,
)
from tests.support.spec_cases import NOW, full, simple, without

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "packetcapture.yaml"
_CRD = yaml.safe_load(CRD_FILE.read_text())
CRD_SPEC: dict[str, Any] = _CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
CEL_RULES = {rule["rule"] for rule in CRD_SPEC["x-kubernetes-validations"]}
FILTER_CEL_RULES = {rule["rule"] for rule in CRD_SPEC["properties"]["filter"]["x-kubernetes-validations"]}

# Prose and CEL are not field schemas (CEL is compared rule by rule below).
_NOT_SCHEMA = {"description", "x-kubernetes-validations"}


def _schema_only(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _schema_only(value) for key, value in schema.items() if key not in _NOT_SCHEMA}
    if isinstance(schema, list):
        return [_schema_only(item) for item in schema]
    return schema


def test_the_crd_has_the_spec_fields_and_required_ones() -> None:
    assert set(CRD_SPEC["properties"]) == set(SPEC_FIELDS)
    assert set(CRD_SPEC["properties"]["filter"]["properties"]) == set(FILTER_FIELDS)
    assert CRD_SPEC["required"] == list(REQUIRED_FIELDS)


@pytest.mark.parametrize("name", SPEC_FIELDS)
def test_the_crd_states_each_field_as_spec_rules_does(name: str) -> None:
    assert _schema_only(CRD_SPEC["properties"][name]) == field_schemas()[name]


def test_the_crd_cel_rules_are_the_type_rules() -> None:
    for name, capture_type in ONLY_FOR_TYPE.items():
        assert f"self.type == '{capture_type}' || !has(self.{name})" in CEL_RULES
    for capture_type, names in REQUIRED_BY_TYPE.items():
        for name in names:
            assert f"self.type != '{capture_type}' || has(self.{name})" in CEL_RULES
    targets = " || ".join(f"has(self.{name})" for name in FULL_TARGET_FIELDS)
    assert f"self.type != 'full' || {targets}" in CEL_RULES
    protocols = ", ".join(str(number) for number in PORT_PROTOCOLS)
    assert any(f"self.protocol in [{protocols}]" in rule for rule in FILTER_CEL_RULES)


_OTHER = {CaptureType.SIMPLE: CaptureType.FULL, CaptureType.FULL: CaptureType.SIMPLE}
_VALID_VALUES = {
    "byteLimit": 1000,
    "destinationConf": "gs://bucket-a/x",
    "offsetTime": format_rfc3339(NOW - timedelta(hours=1)),
}


def _base(capture_type: CaptureType) -> dict[str, Any]:
    return simple() if capture_type is CaptureType.SIMPLE else full()


def _refused_fields(spec: object) -> tuple[str, ...]:
    with pytest.raises(SpecInvalid) as refused:
        parse_spec(spec, now=NOW)
    return refused.value.fields


@pytest.mark.parametrize(("name", "capture_type"), ONLY_FOR_TYPE.items())
def test_parse_spec_allows_a_type_only_field_for_that_type_alone(
    name: str, capture_type: CaptureType
) -> None:
    parse_spec({**_base(capture_type), name: _VALID_VALUES[name]}, now=NOW)
    assert f"spec.{name}" in _refused_fields({**_base(_OTHER[capture_type]), name: _VALID_VALUES[name]})


@pytest.mark.parametrize(
    ("capture_type", "name"), [(t, name) for t, names in REQUIRED_BY_TYPE.items() for name in names]
)
def test_parse_spec_requires_what_a_type_requires(capture_type: CaptureType, name: str) -> None:
    assert f"spec.{name}" in _refused_fields(without(_base(capture_type), name))


def test_a_full_capture_needs_a_target() -> None:
    spec = full()
    for name in FULL_TARGET_FIELDS:
        spec.pop(name, None)
    assert "spec.colo" in _refused_fields(spec)
    parse_spec({**spec, "nodeSelector": {"zone": "a"}}, now=NOW)


@pytest.mark.parametrize(
    ("make", "path", "bounds"),
    [
        (lambda v: simple(timeLimit=v), "spec.timeLimit", TIME_LIMIT_RANGE),
        (lambda v: simple(packetLimit=v), "spec.packetLimit", PACKET_LIMIT_RANGE),
        (lambda v: full(byteLimit=v), "spec.byteLimit", BYTE_LIMIT_RANGE),
        (lambda v: simple(filter={"sourcePort": v}), "spec.filter.sourcePort", PORT_RANGE),
        (lambda v: simple(filter={"destinationPort": v}), "spec.filter.destinationPort", PORT_RANGE),
        (lambda v: simple(filter={"protocol": v}), "spec.filter.protocol", PROTOCOL_RANGE),
    ],
)
def test_parse_spec_enforces_the_limits(make: Any, path: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    parse_spec(make(low), now=NOW)
    parse_spec(make(high), now=NOW)
    assert path in _refused_fields(make(low - 1))
    assert path in _refused_fields(make(high + 1))


_COLO = jsonschema_rs.validator_for(field_schemas()["colo"])
_LABEL_VALUE = jsonschema_rs.validator_for(field_schemas()["nodeSelector"]["additionalProperties"])
_LABEL_KEY = jsonschema_rs.validator_for(label_key_schema())
_label_text = st.text(alphabet="aZ09-_./ é", max_size=70)
_long_keys = st.builds(
    lambda prefix, name: f"{'a' * prefix}/{'b' * name}", st.integers(250, 256), st.integers(0, 66)
)


@given(_label_text)
def test_label_value_patterns_are_the_names_rules(text: str) -> None:
    assert _LABEL_VALUE.is_valid(text) == is_label_value(text)
    assert _COLO.is_valid(text) == (is_label_value(text) and text != "")


@given(_label_text | _long_keys)
def test_label_key_pattern_is_the_names_rule(text: str) -> None:
    assert _LABEL_KEY.is_valid(text) == is_label_key(text)
