"""Leader election's decision: one holder at a time, taken over only after a silent lease duration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from kpcap_operator.leader import Action, LeaseElector, LeaseRecord, decide, lease_spec


def lease(holder: str, *, seconds: int = 10, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_seconds=seconds, transitions=transitions, resource_version="7")


def test_no_lease_is_created() -> None:
    assert decide(lease=None, me="a", unchanged_since=0, now=0, lease_seconds=10).action is Action.CREATE


def test_own_lease_is_renewed_keeping_transitions() -> None:
    decision = decide(lease=lease("a"), me="a", unchanged_since=0, now=100, lease_seconds=10)
    assert (decision.action, decision.transitions) == (Action.RENEW, 3)


def test_a_renewing_holder_is_followed() -> None:
    assert (
        decide(lease=lease("b"), me="a", unchanged_since=95, now=104.9, lease_seconds=10).action
        is Action.FOLLOW
    )


def test_a_silent_holder_is_taken_over_after_its_duration_on_our_clock() -> None:
    decision = decide(lease=lease("b", seconds=10), me="a", unchanged_since=95, now=105, lease_seconds=30)
    assert (decision.action, decision.transitions) == (Action.TAKE_OVER, 4)


def test_the_records_own_duration_counts_not_ours() -> None:
    held = lease("b", seconds=30)
    assert decide(lease=held, me="a", unchanged_since=0, now=15, lease_seconds=10).action is Action.FOLLOW


def test_a_released_lease_is_taken_at_once() -> None:
    decision = decide(lease=lease("", seconds=1), me="a", unchanged_since=50, now=50, lease_seconds=10)
    assert decision.action is Action.TAKE_OVER


def test_lease_spec_sets_acquire_time_only_on_a_change_of_holder() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    renewed = lease_spec(holder="a", lease_seconds=10, transitions=2, acquired=False, now=now)
    assert renewed == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 10,
        "leaseTransitions": 2,
        "renewTime": "2026-01-02T03:04:05.678901Z",
    }
    assert lease_spec(holder="a", lease_seconds=10, transitions=2, acquired=True, now=now)["acquireTime"]


def test_the_renew_deadline_falls_before_anyone_may_take_over() -> None:
    with pytest.raises(ValueError, match="renew_deadline_seconds < lease_seconds"):
        LeaseElector(
            api=client.ApiClient(),
            namespace="ns",
            name="l",
            identity="a",
            lease_seconds=5,
            renew_deadline_seconds=6,
        )
