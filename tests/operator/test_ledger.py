"""The admission ledger: decisions in flight are seen by later decisions, whenever their listing was read."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from kpcap.model import CaptureType
from kpcap_operator import admission
from kpcap_operator.decisions import CaptureRef
from kpcap_operator.ledger import FORGET_AFTER_SECONDS, AdmissionLedger

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


def ref(name: str, uid: str, *, status: str | None = None) -> CaptureRef:
    return CaptureRef(
        name=name,
        uid=uid,
        created=T0,
        type=CaptureType.FULL,
        status=status,
        refused_by_rule=False,
        valid=True,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_listed_capture_still_undecided_shows_the_decision_taken_here() -> None:
    ledger = AdmissionLedger()
    a = ref("a", "u-a")
    with ledger.turn(namespace="ns", others=[], observed_at=ledger.observing()) as turn:
        turn.decided(a, status="pending")
    with ledger.turn(namespace="ns", others=[a], observed_at=ledger.observing()) as turn:
        assert [r.status for r in turn.others] == ["pending"]


def test_a_capture_decided_after_the_listing_was_read_is_added() -> None:
    """A lists (B does not exist yet), B (same second, smaller uid: "older") is admitted seeing A
    undecided, then A decides: A must see B pending, so exactly one of them starts."""
    ledger = AdmissionLedger()
    a, b = ref("a", "u-z"), ref("b", "u-b")
    a_observed = ledger.observing()
    with ledger.turn(namespace="ns", others=[a], observed_at=ledger.observing()) as turn:
        assert admission.refusal(capture=b, others=turn.others, window=WINDOW) is None
        turn.decided(b, status="pending")
    with ledger.turn(namespace="ns", others=[], observed_at=a_observed) as turn:
        assert [(r.name, r.status) for r in turn.others] == [("b", "pending")]
        refusal = admission.refusal(capture=a, others=turn.others, window=WINDOW)
    assert refusal is not None
    assert "b (id ub) is pending" in refusal.message


def test_other_namespaces_decisions_are_not_added() -> None:
    ledger = AdmissionLedger()
    with ledger.turn(namespace="ns", others=[], observed_at=ledger.observing()) as turn:
        turn.decided(ref("b", "u-b"), status="pending")
    with ledger.turn(namespace="other", others=[], observed_at=ledger.observing()) as turn:
        assert turn.others == []


def test_a_decision_that_landed_before_the_listing_is_not_added_back() -> None:
    """Absent from a listing read after its status landed: the capture has been deleted."""
    clock = Clock()
    ledger = AdmissionLedger(clock=clock)
    with ledger.turn(namespace="ns", others=[], observed_at=ledger.observing()) as turn:
        turn.decided(ref("b", "u-b"), status="pending")
    clock.now += 1
    ledger.landed("u-b")
    clock.now += 1
    with ledger.turn(namespace="ns", others=[], observed_at=ledger.observing()) as turn:
        assert turn.others == []


def test_a_forgotten_decision_is_not_seen() -> None:
    ledger = AdmissionLedger()
    with ledger.turn(namespace="ns", others=[], observed_at=ledger.observing()) as turn:
        turn.decided(ref("b", "u-b"), status="pending")
    ledger.forget("u-b")
    with ledger.turn(namespace="ns", others=[ref("b", "u-b")], observed_at=ledger.observing()) as turn:
        assert [r.status for r in turn.others] == [None]


def test_decisions_are_forgotten_after_a_while() -> None:
    clock = Clock()
    ledger = AdmissionLedger(clock=clock)
    observed = ledger.observing()
    with ledger.turn(namespace="ns", others=[], observed_at=observed) as turn:
        turn.decided(ref("b", "u-b"), status="failed", refused_by_rule=True)
    with ledger.turn(namespace="ns", others=[], observed_at=observed) as turn:
        assert [(r.status, r.refused_by_rule) for r in turn.others] == [("failed", True)]
    clock.now += FORGET_AFTER_SECONDS + 1
    with ledger.turn(namespace="ns", others=[], observed_at=observed) as turn:
        assert turn.others == []


def test_turns_are_taken_one_at_a_time() -> None:
    ledger = AdmissionLedger()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with ledger.turn(namespace="ns", others=[], observed_at=0.0):
            inside.set()
            release.wait(5)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    waiter = threading.Thread(target=lambda: (ledger_turn(ledger), order.append("second")))
    waiter.start()
    waiter.join(0.2)
    assert order == []
    release.set()
    thread.join(5)
    waiter.join(5)
    assert order == ["first", "second"]


def ledger_turn(ledger: AdmissionLedger) -> None:
    with ledger.turn(namespace="ns", others=[], observed_at=0.0):
        pass
