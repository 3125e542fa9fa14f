"""The pure translations: upstream request <-> spec, object -> upstream capture, envelopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpcap.model import CaptureType
from kpcap_operator.api.capture_handlers import rule_conflict
from kpcap_operator.api.mapping import (
    ApiError,
    capture_to_upstream,
    failure,
    find_by_id,
    list_success,
    newest,
    request_to_spec,
    success,
    upstream_path,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def messages(body: Any) -> list[str]:
    with pytest.raises(ApiError) as caught:
        request_to_spec(body, now=NOW)
    assert caught.value.status == 400
    assert all(item.code >= 1000 for item in caught.value.errors)
    return [item.message for item in caught.value.errors]


def test_simple_request_maps_to_the_stored_spec() -> None:
    spec, stored = request_to_spec(
        {
            "type": "simple",
            "system": "magic-transit",
            "time_limit": 10,
            "packet_limit": 100.0,
            "filter_v1": {"source_address": "198.51.100.7", "destination_port": 53, "protocol": 17},
            "offset_time": "2026-05-01T11:00:00Z",
        },
        now=NOW,
    )
    assert spec.type is CaptureType.SIMPLE
    assert stored == {
        "type": "simple",
        "system": "host-network",
        "filter": {"sourceAddress": "198.51.100.7", "destinationPort": 53, "protocol": 17},
        "timeLimit": 10,
        "packetLimit": 100,
        "offsetTime": "2026-05-01T11:00:00Z",
        "stop": False,
    }


@pytest.mark.parametrize("colo_key", ["colo", "colo_name"])
def test_full_request_accepts_colo_and_colo_name(colo_key: str) -> None:
    _, stored = request_to_spec(
        {
            "type": "full",
            "system": "magic-transit",
            "time_limit": 300,
            "byte_limit": 1_000_000,
            colo_key: "colo-a",
            "destination_conf": "s3://bucket/dir?region=us-east-1",
        },
        now=NOW,
    )
    assert stored["colo"] == "colo-a"
    assert stored["destinationConf"] == "s3://bucket/dir?region=us-east-1"
    assert stored["packetLimit"] == 10_000


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"type": "simple", "time_limit": 0, "packet_limit": 1},
            "time_limit: must be an integer from 1 to 300, got 0",
        ),
        (
            {"type": "simple", "time_limit": "5", "packet_limit": 1},
            "time_limit: must be an integer from 1 to 300",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 10001},
            "packet_limit: must be an integer from 1 to 10000",
        ),
        ({"type": "simple", "time_limit": 5}, "packet_limit: required when type is 'simple'"),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "byte_limit": 5},
            "byte_limit: only allowed when type is 'full'",
        ),
        (
            {"type": "full", "time_limit": 5, "destination_conf": "s3://b1x/x"},
            "colo_name: required when type is 'full'",
        ),
        ({"type": "full", "time_limit": 5, "colo": "a"}, "destination_conf: required when type is 'full'"),
        ({"type": "nope", "time_limit": 5}, "type: must be one of 'simple', 'full'"),
        ({"type": "simple", "time_limit": 5, "packet_limit": 1, "system": "x"}, "system: must be one of"),
        ({"type": "simple", "time_limit": 5, "packet_limit": 1, "bogus": 1}, "bogus: unknown field"),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "filter_v1": {"port": 1}},
            "filter_v1.port: unknown field",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "filter_v1": []},
            "filter_v1: must be an object",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "filter_v1": {"source_port": 70000}},
            "filter_v1.source_port: must be an integer from 0 to 65535",
        ),
        (
            {
                "type": "simple",
                "time_limit": 5,
                "packet_limit": 1,
                "filter_v1": {"source_address": "1.2.3.4", "destination_address": "::1"},
            },
            "filter_v1.destination_address: must be the same IP version as filter_v1.source_address",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "offset_time": "2026-04-29T00:00:00Z"},
            "offset_time: must be within the last 24 hours",
        ),
        (
            {"type": "full", "time_limit": 5, "colo": "a", "destination_conf": "ftp://x"},
            "destination_conf: must be 's3://",
        ),
        (
            {"type": "full", "time_limit": 5, "colo": "a", "colo_name": "b", "destination_conf": "gs://bkt"},
            "colo: colo and colo_name are the same field",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "snap_length": 0},
            "snap_length: must be an integer from 1 to 262144 (bytes), got 0",
        ),
        (
            {"type": "simple", "time_limit": 5, "packet_limit": 1, "snap_length": "64"},
            "snap_length: must be an integer from 1 to 262144",
        ),
        ([1, 2], "request body: must be a JSON object"),
        ("text", "request body: must be a JSON object"),
    ],
)
def test_bad_requests_name_the_upstream_field(body: Any, expected: str) -> None:
    found = messages(body)
    assert any(message.startswith(expected) for message in found), found
    assert not any("spec." in message for message in found), found


@pytest.mark.parametrize("capture_type", ["simple", "full"])
def test_snap_length_extension_round_trips(capture_type: str) -> None:
    # snap_length is a kpcap extension (upstream has no such field), like node_selector.
    body: dict[str, Any] = {"type": capture_type, "time_limit": 5, "packet_limit": 1, "snap_length": 96}
    if capture_type == "full":
        body |= {"colo": "colo-a", "destination_conf": "s3://bucket/dir?region=us-east-1"}
    spec, stored = request_to_spec(body, now=NOW)
    assert (spec.snap_length, stored["snapLength"]) == (96, 96)
    shown = capture_to_upstream({"metadata": {"uid": UID}, "spec": stored, "status": {}})
    assert shown["snap_length"] == 96
    assert "snap_length" not in capture_to_upstream(
        {"metadata": {"uid": UID}, "spec": {**stored, "snapLength": None}}
    )


def test_colo_alias_is_named_as_given() -> None:
    assert any(
        m.startswith("colo: must be") for m in messages({"type": "full", "time_limit": 5, "colo": "-"})
    )


def test_every_problem_is_reported_at_once() -> None:
    found = messages({"type": "simple", "time_limit": 0, "packet_limit": 0, "x": 1})
    assert [m.split(":")[0] for m in found] == ["x", "time_limit", "packet_limit"]


def test_upstream_paths() -> None:
    assert upstream_path("spec.timeLimit") == "time_limit"
    assert upstream_path("spec.filter.sourcePort") == "filter_v1.source_port"
    assert upstream_path("spec.colo") == "colo_name"
    assert upstream_path("spec.colo", colo_field="colo") == "colo"
    assert upstream_path("spec.nodeSelector.a/b") == "node_selector.a/b"
    assert upstream_path("spec") == "request body"


def obj(uid: str, created: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"pcap-{uid[:4]}", "uid": uid, "creationTimestamp": created},
        "spec": {
            "type": "full",
            "system": "host-network",
            "timeLimit": 5,
            "packetLimit": 10,
            "colo": "colo-a",
            "destinationConf": "s3://b/p",
            "filter": {"sourceAddress": "10.0.0.1", "protocol": 6},
            "stop": False,
        },
        "status": status,
    }


UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def test_capture_to_upstream() -> None:
    shown = capture_to_upstream(
        obj(
            UID,
            "2026-05-01T12:00:00Z",
            status="failed",
            submitted="2026-05-01T12:00:01Z",
            errorMessage="boom",
        )
    )
    assert shown == {
        "id": "1b4e28ba2fa111d2883f0016d3cca427",
        "submitted": "2026-05-01T12:00:01Z",
        "type": "full",
        "system": "host-network",
        "filter_v1": {"source_address": "10.0.0.1", "protocol": 6},
        "time_limit": 5,
        "packet_limit": 10,
        "colo_name": "colo-a",
        "destination_conf": "s3://b/p",
        "status": "failed",
        "packets_captured": 0,
        "error_message": "boom",
        "name": "pcap-1b4e",
    }


def test_undecided_capture_is_pending() -> None:
    assert capture_to_upstream(obj(UID, "2026-05-01T12:00:00Z"))["status"] == "pending"


def test_newest_and_find() -> None:
    objects = [obj(f"{i:08x}-0000-0000-0000-000000000000", f"2026-05-01T12:00:{i:02d}Z") for i in range(60)]
    shown = newest(objects)
    assert len(shown) == 50
    assert shown[0]["metadata"]["creationTimestamp"] == "2026-05-01T12:00:59Z"
    assert find_by_id(objects, "0000000a000000000000000000000000") is objects[10]
    assert find_by_id(objects, "f" * 32) is None


def test_envelopes() -> None:
    assert success({"a": 1}) == {"result": {"a": 1}, "success": True, "errors": [], "messages": []}
    empty = list_success([])
    assert empty["result"] == []
    assert empty["result_info"] == {"count": 0, "page": 1, "per_page": 50, "total_count": 0}
    err = ApiError.one(429, 1005, "no")  # type: ignore[arg-type]
    assert failure(err.errors) == {
        "result": None,
        "success": False,
        "errors": [{"code": 1005, "message": "no"}],
        "messages": [],
    }


def test_rules_reuse_the_operator_decisions() -> None:
    spec, _ = request_to_spec({"type": "simple", "time_limit": 5, "packet_limit": 5}, now=NOW)
    recent = {
        "metadata": {"name": "earlier", "uid": UID, "creationTimestamp": "2026-05-01T11:59:30Z"},
        "spec": {"type": "simple", "timeLimit": 5, "packetLimit": 5},
        "status": {"status": "failed"},
    }
    message = rule_conflict(spec=spec, existing=[recent], now=NOW, window=timedelta(seconds=60))
    assert message is not None
    assert message.startswith("only one simple capture is allowed per namespace every 60 s")
    assert (
        rule_conflict(
            spec=spec, existing=[recent], now=NOW + timedelta(seconds=61), window=timedelta(seconds=60)
        )
        is None
    )
    full, _ = request_to_spec(
        {"type": "full", "time_limit": 5, "colo": "a", "destination_conf": "s3://bkt/x"}, now=NOW
    )
    running = obj(UID, "2026-05-01T11:00:00Z", status="running")
    message = rule_conflict(spec=full, existing=[running], now=NOW, window=timedelta(seconds=60))
    assert message is not None
    assert message.startswith("only one pending or running full capture is allowed per namespace")
    done = obj(UID, "2026-05-01T11:00:00Z", status="success")
    assert rule_conflict(spec=full, existing=[done], now=NOW, window=timedelta(seconds=60)) is None
