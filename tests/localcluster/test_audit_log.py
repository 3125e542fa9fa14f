"""The audit-log reader (tests.support.audit) on lines the local apiserver wrote (1.20, Metadata level)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.audit import AuditLog, RequestKey, count_requests, format_counts, parse_entry, parse_lines

SAMPLE = Path(__file__).parent / "data" / "audit-sample.log"
ADMIN = "kpcap-admin"


def _lines() -> list[str]:
    return SAMPLE.read_text().splitlines(keepends=True)


def test_every_line_is_one_finished_request_with_its_object_and_code() -> None:
    entries = parse_lines(_lines())
    assert len(entries) == 13
    first = entries[0]
    assert (first.user, first.verb, first.resource, first.name, first.namespace, first.code) == (
        ADMIN,
        "create",
        "namespaces",
        "audit-sample",
        "",
        201,
    )
    assert first.groups == ("system:masters", "system:authenticated")
    assert first.received == datetime(2026, 12, 2, 16, 45, 9, 224882, tzinfo=UTC)
    assert first.api_group == ""
    refused = entries[6]
    assert (refused.api_group, refused.resource, refused.code) == ("apps", "daemonsets", 409)
    assert refused.uri == "/apis/apps/v1/namespaces/audit-sample/daemonsets"
    status = entries[9]
    assert (status.verb, status.resource, status.subresource) == ("patch", "daemonsets", "status")


def test_counts_by_user_verb_resource_subresource_and_code() -> None:
    counts = count_requests(e for e in parse_lines(_lines()) if e.user == ADMIN)
    assert counts == {
        RequestKey(ADMIN, "create", "namespaces", "", 201): 1,
        RequestKey(ADMIN, "create", "daemonsets", "", 201): 1,
        RequestKey(ADMIN, "create", "daemonsets", "", 409): 1,
        RequestKey(ADMIN, "patch", "daemonsets", "status", 200): 1,
        RequestKey(ADMIN, "delete", "daemonsets", "", 200): 1,
    }
    table = format_counts(counts)
    assert len(table.splitlines()) == 5
    assert "daemonsets/status" in table
    assert " 409 kpcap-admin" in table


def test_since_a_marker_only_what_followed_and_only_whole_lines(tmp_path: Path) -> None:
    lines = _lines()
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    assert log.marker() == 0, "no log yet"
    path.write_text("".join(lines[:6]))
    marker = log.marker()
    half = len(lines[12]) // 2
    with path.open("a") as out:
        out.write("".join(lines[6:12]) + lines[12][:half])  # the apiserver is mid-line
    assert [e.verb for e in log.entries(since=marker)] == [
        "create",
        "create",
        "update",
        "patch",
        "delete",
        "delete",
    ]
    with path.open("a") as out:
        out.write(lines[12][half:])
    assert len(log.entries(since=marker)) == 7
    assert len(log.entries()) == 13


def test_a_time_window_by_when_the_request_was_received(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("".join(_lines()))
    start = datetime(2026, 12, 2, 16, 45, 9, 346603, tzinfo=UTC)
    end = datetime(2026, 12, 2, 16, 45, 9, 465610, tzinfo=UTC)
    window = AuditLog(path).entries(start=start, end=end)
    # Lines are written when the response completes, so received times are not in file order.
    assert sorted((e.received, e.code) for e in window) == [
        (start, 409),
        (datetime(2026, 12, 2, 16, 45, 9, 374166, tzinfo=UTC), 201),
        (datetime(2026, 12, 2, 16, 45, 9, 383488, tzinfo=UTC), 200),
        (datetime(2026, 12, 2, 16, 45, 9, 419590, tzinfo=UTC), 200),
    ]


def test_a_stage_that_does_not_end_the_request_is_not_an_entry() -> None:
    event = json.loads(_lines()[0])
    assert parse_entry(event) is not None
    assert parse_entry({**event, "stage": "ResponseStarted"}) is None
    assert parse_entry({**event, "stage": "RequestReceived"}) is None


def test_a_log_rotated_after_the_marker_is_an_error_not_a_short_count(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("".join(_lines()))
    marker = AuditLog(path).marker()
    path.write_text("".join(_lines()[:2]))
    with pytest.raises(RuntimeError, match="rotated"):
        AuditLog(path).entries(since=marker)
