"""parse_spec / spec_to_dict: every rule, every message naming its field, and the round trip."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpcap.destinations import DestinationScheme
from kpcap.errors import FieldError, SpecInvalid
from kpcap.model import (
    CaptureFilter,
    CaptureSpec,
    CaptureSystem,
    CaptureType,
    capture_id,
    parse_spec,
    spec_to_dict,
)
from tests.support.spec_cases import FULL, INVALID, NOW, SIMPLE, full, simple, without


@pytest.mark.parametrize(
    ("spec", "field", "fragment"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_spec_names_the_field(spec: object, field: str, fragment: str) -> None:
    with pytest.raises(SpecInvalid) as raised:
        parse_spec(spec, now=NOW)
    assert field in raised.value.fields, str(raised.value)
    messages = [error.message for error in raised.value.errors if error.field == field]
    assert any(fragment in message for message in messages), messages
    assert f"{field}: " in str(raised.value)
    # "; " separates errors in str(SpecInvalid): no message may contain it.
    assert all("; " not in error.message for error in raised.value.errors)


def test_every_error_is_collected() -> None:
    spec = {
        "type": "simple",
        "timeLimit": 0,
        "byteLimit": 5,
        "filter": {"sourcePort": 70000, "sourceAddress": "nope"},
        "stop": 1,
        "extra": True,
    }
    with pytest.raises(SpecInvalid) as raised:
        parse_spec(spec, now=NOW)
    assert set(raised.value.fields) == {
        "spec.extra",
        "spec.timeLimit",
        "spec.packetLimit",
        "spec.byteLimit",
        "spec.filter.sourcePort",
        "spec.filter.sourceAddress",
        "spec.stop",
    }
    assert str(raised.value).count("; ") == len(raised.value.errors) - 1


def test_error_string_joins_fields() -> None:
    error = SpecInvalid(
        [
            FieldError(field="spec.timeLimit", message="must be an integer from 1 to 300, got 0"),
            FieldError(field="spec.filter.protocol", message="must be an integer from 0 to 255, got 300"),
        ]
    )
    assert str(error) == (
        "spec.timeLimit: must be an integer from 1 to 300, got 0; "
        "spec.filter.protocol: must be an integer from 0 to 255, got 300"
    )
    with pytest.raises(ValueError, match="at least one"):
        SpecInvalid([])


def test_invalid_type_skips_type_dependent_verdicts() -> None:
    # With an unknown type there is no telling whether byteLimit belongs: only the type is reported.
    with pytest.raises(SpecInvalid) as raised:
        parse_spec({"type": "both", "timeLimit": 5, "byteLimit": 5}, now=NOW)
    assert raised.value.fields == ("spec.type",)


# --- valid specs -------------------------------------------------------------------------------------


def test_simple_defaults() -> None:
    spec = parse_spec(SIMPLE, now=NOW)
    assert spec == CaptureSpec(type=CaptureType.SIMPLE, time_limit=60, packet_limit=100)
    assert spec.system is CaptureSystem.HOST_NETWORK
    assert spec.filter.is_empty
    assert spec.stop is False
    assert spec.offset_time is None
    assert spec.destination is None


def test_full_defaults_and_destination() -> None:
    spec = parse_spec(FULL, now=NOW)
    assert spec.packet_limit == 10_000
    assert spec.byte_limit is None
    assert spec.snap_length is None  # the whole packet
    assert spec.destination is not None
    assert spec.destination.scheme is DestinationScheme.S3
    assert (spec.destination.bucket, spec.destination.prefix, spec.destination.region) == (
        "kpcap-captures",
        "captures",
        "us-east-1",
    )


@pytest.mark.parametrize(
    "spec",
    [
        simple(system="magic-transit"),
        simple(system=None, filter=None, stop=None),  # JSON null = absent
        simple(timeLimit=10.0, packetLimit=1.0),  # whole numbers from a JSON client
        simple(timeLimit=1, packetLimit=1),
        simple(timeLimit=300, packetLimit=10_000),
        simple(filter={}),
        simple(filter={"protocol": 0}),
        simple(filter={"protocol": 1}),
        simple(filter={"sourcePort": 0, "destinationPort": 65535, "protocol": 132}),
        simple(filter={"sourceAddress": "2001:db8::1", "destinationAddress": "::ffff:198.18.0.1"}),
        simple(offsetTime="2025-05-01T12:00:00Z"),  # exactly now
        simple(offsetTime="2025-04-30T12:00:00Z"),  # exactly 24 h ago
        simple(offsetTime="2025-05-01T13:30:00+02:00"),  # 11:30 UTC
        simple(offsetTime="2025-05-01t11:00:00.123456789z"),
        simple(colo="zone-a", nodeSelector={"kubernetes.io/os": "linux", "empty": ""}),
        simple(stop=True),
        full(byteLimit=1, packetLimit=1),
        full(byteLimit=1_000_000_000),
        full(snapLength=1, byteLimit=1),
        full(snapLength=262_144),
        simple(snapLength=64.0),  # a whole number from a JSON client
        without(full(nodeSelector={"kpcap.io/capture": "yes"}), "colo"),
        full(destinationConf="gs://kpcap_captures.example/a/b"),
        full(destinationConf="s3://kpcap-captures?endpoint=http://127.0.0.1:9000&region=auto"),
    ],
)
def test_valid_specs_parse_and_round_trip(spec: dict[str, Any]) -> None:
    parsed = parse_spec(spec, now=NOW)
    as_dict = spec_to_dict(parsed)
    json.dumps(as_dict)  # plain JSON, ready for a patch or an env var
    assert parse_spec(as_dict, now=NOW) == parsed
    assert spec_to_dict(parse_spec(as_dict, now=NOW)) == as_dict
    assert hash(parse_spec(as_dict, now=NOW)) == hash(parsed)


def test_offset_time_is_aware_and_cut_to_microseconds() -> None:
    spec = parse_spec(simple(offsetTime="2025-05-01T13:30:00.1234567+02:00"), now=NOW)
    assert spec.offset_time == datetime(2025, 5, 1, 11, 30, 0, 123456, tzinfo=UTC)
    assert spec.offset_time is not None
    assert spec.offset_time.utcoffset() == timedelta(hours=2)
    assert spec_to_dict(spec)["offsetTime"] == "2025-05-01T13:30:00.123456+02:00"
    utc = parse_spec(simple(offsetTime="2025-05-01T11:00:00Z"), now=NOW)
    assert spec_to_dict(utc)["offsetTime"] == "2025-05-01T11:00:00Z"


def test_now_none_skips_the_window_but_not_the_format() -> None:
    assert parse_spec(simple(offsetTime="2020-01-01T00:00:00Z"), now=None).offset_time is not None
    with pytest.raises(SpecInvalid):
        parse_spec(simple(offsetTime="2020-01-01"), now=None)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_spec(SIMPLE, now=datetime(2025, 5, 1, 12, 0))  # naive on purpose


def test_spec_is_immutable() -> None:
    labels = {"zone": "a"}
    spec = CaptureSpec(type=CaptureType.SIMPLE, time_limit=1, packet_limit=1, node_selector=labels)
    labels["zone"] = "b"
    assert spec.node_selector["zone"] == "a"
    with pytest.raises(TypeError):
        spec.node_selector["zone"] = "c"  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.time_limit = 5  # type: ignore[misc]


def test_filter_values_are_typed() -> None:
    spec = parse_spec(
        simple(
            filter={"sourceAddress": "198.18.0.1", "destinationAddress": "198.18.0.2", "destinationPort": 53}
        ),
        now=NOW,
    )
    assert spec.filter == CaptureFilter(
        source_address=ipaddress.IPv4Address("198.18.0.1"),
        destination_address=ipaddress.IPv4Address("198.18.0.2"),
        destination_port=53,
    )


# --- property: whatever parses, round-trips ----------------------------------------------------------

_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    capture_type = draw(st.sampled_from(["simple", "full"]))
    spec: dict[str, Any] = {"type": capture_type, "timeLimit": draw(st.integers(1, 300))}
    if draw(st.booleans()):
        spec["system"] = draw(st.sampled_from(["host-network", "magic-transit"]))
    address = st.ip_addresses(v=draw(st.sampled_from([4, 6]))).map(str)
    filter_spec: dict[str, Any] = {}
    optional_fields: tuple[tuple[str, st.SearchStrategy[Any]], ...] = (
        ("sourceAddress", address),
        ("destinationAddress", address),
        ("sourcePort", st.integers(0, 65535)),
        ("destinationPort", st.integers(0, 65535)),
    )
    for name, strategy in optional_fields:
        if draw(st.booleans()):
            filter_spec[name] = draw(strategy)
    if draw(st.booleans()):
        ports = "sourcePort" in filter_spec or "destinationPort" in filter_spec
        filter_spec["protocol"] = draw(st.sampled_from([6, 17, 132]) if ports else st.integers(0, 255))
    keep_empty_filter = draw(st.booleans())
    if filter_spec or keep_empty_filter:
        spec["filter"] = filter_spec
    if capture_type == "simple" or draw(st.booleans()):
        spec["packetLimit"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        spec["snapLength"] = draw(st.integers(1, 262_144))
    if capture_type == "full":
        spec["colo"] = draw(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True))
        spec["destinationConf"] = draw(
            st.sampled_from(
                ["s3://b-1/x", "gs://b_1/x/y", "s3://bb1?region=eu-west-3&endpoint=https://s3.local"]
            )
        )
        if draw(st.booleans()):
            spec["byteLimit"] = draw(st.integers(1, 1_000_000_000))
    elif draw(st.booleans()):
        seconds_ago = draw(st.integers(0, 24 * 3600))
        zone = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
        spec["offsetTime"] = (NOW - timedelta(seconds=seconds_ago)).astimezone(zone).isoformat()
    if draw(st.booleans()):
        spec["stop"] = draw(st.booleans())
    return spec


@settings(max_examples=300, deadline=None)
@given(spec=valid_specs())
def test_property_valid_specs_round_trip(spec: dict[str, Any]) -> None:
    parsed = parse_spec(spec, now=NOW)
    assert parse_spec(spec_to_dict(parsed), now=NOW) == parsed


@settings(max_examples=300, deadline=None)
@given(
    spec=st.dictionaries(
        st.sampled_from(["type", "timeLimit", "packetLimit", "filter", "stop", "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.floats(),
    )
)
def test_property_garbage_raises_only_spec_invalid(spec: dict[str, Any]) -> None:
    errors: tuple[FieldError, ...] = ()
    try:
        parse_spec(spec, now=NOW)
    except SpecInvalid as error:
        errors = error.errors
    # One error per field: no message joins another field's (a value echoed back may hold "; ").
    assert all(e.field.startswith("spec") and e.message and "; spec." not in e.message for e in errors)


# --- capture ids -------------------------------------------------------------------------------------


def test_capture_id() -> None:
    assert capture_id("4F3B1C2D-0000-4AAA-8BBB-123456789ABC") == "4f3b1c2d00004aaa8bbb123456789abc"
    for bad in ("", "not-a-uid", "4f3b1c2d-0000-4aaa-8bbb-123456789ab", "4f3b1c2d00004aaa8bbb123456789abcz"):
        with pytest.raises(ValueError, match="32 hexadecimal"):
            capture_id(bad)
