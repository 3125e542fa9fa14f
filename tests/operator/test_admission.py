"""The one admission decision as its three callers (webhook, operator, REST API) use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kpcap.model import CaptureType
from kpcap_operator import admission, decisions
from kpcap_operator.decisions import CaptureRef

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


def ref(name: str, *, type: str, status: str | None = None, seconds: float = 0, uid: str = "") -> CaptureRef:
    return CaptureRef(
        name=name,
        uid=uid or f"uid-{name}",
        created=T0 + timedelta(seconds=seconds),
        type=type,
        status=status,
        refused_by_rule=False,
        valid=True,
    )


def test_a_new_capture_is_newer_than_every_existing_one() -> None:
    new_full = admission.new_capture(name="n", capture_type=CaptureType.FULL, now=T0)
    assert new_full.undecided
    assert new_full.order > ref("future", type="full", seconds=3600, uid="f" * 32).order
    new_simple = admission.new_capture(name="n", capture_type=CaptureType.SIMPLE, now=T0)
    assert new_simple.created == T0, "its rate window counts from now"
    assert new_simple.order > ref("same-second", type="simple", uid="f" * 32).order


def test_no_conflict_no_refusal() -> None:
    new = admission.new_capture(name="n", capture_type=CaptureType.FULL, now=T0)
    others = [ref("done", type="full", status="success"), ref("s", type="simple", status="pending")]
    assert admission.refusal(capture=new, others=others, window=WINDOW) is None


def test_a_full_capture_is_refused_by_an_undecided_older_one() -> None:
    new = admission.new_capture(name="n", capture_type=CaptureType.FULL, now=T0)
    got = admission.refusal(capture=new, others=[ref("a", type="full")], window=WINDOW)
    assert got == admission.Refusal(
        reason=decisions.REASON_CONCURRENCY,
        message="only one pending or running full capture is allowed per namespace; a (id uida) is pending",
    )


def test_a_simple_capture_is_refused_within_the_window() -> None:
    new = admission.new_capture(name="n", capture_type=CaptureType.SIMPLE, now=T0)
    got = admission.refusal(
        capture=new, others=[ref("s", type="simple", status="success", seconds=-30)], window=WINDOW
    )
    assert got is not None
    assert got.reason == decisions.REASON_RATE
    assert got.message.endswith("s was submitted at 2025-05-01T11:59:30Z")


def test_an_existing_object_is_judged_by_its_own_order() -> None:
    """The operator's case: the capture itself is listed too, and never blocks itself."""
    objects = [
        {
            "metadata": {"name": "a", "uid": "u-a", "creationTimestamp": "2025-05-01T12:00:00Z"},
            "spec": {"type": "simple", "timeLimit": 10, "packetLimit": 100},
        }
    ]
    [me] = admission.existing_captures(objects)
    assert admission.refusal(capture=me, others=[me], window=WINDOW) is None
