"""The operator's pure decisions (admission rules, target nodes, status), without any cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpcap.model import CaptureSpec, CaptureStatus, CaptureType, parse_spec
from kpcap_operator import decisions
from kpcap_operator.decisions import CaptureRef, NodeInfo

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
GRACE = timedelta(seconds=10)
ZONE = "topology.kubernetes.io/zone"


def ref(
    name: str,
    *,
    type: str | None = CaptureType.FULL,
    status: str | None = None,
    created: datetime = T0,
    uid: str | None = None,
    refused_by_rule: bool = False,
    valid: bool = True,
) -> CaptureRef:
    return CaptureRef(
        name=name,
        uid=uid or f"uid-{name}",
        created=created,
        type=type,
        status=status,
        refused_by_rule=refused_by_rule,
        valid=valid,
    )


def simple_ref(name: str, *, seconds: float, **kwargs: Any) -> CaptureRef:
    return ref(name, type=CaptureType.SIMPLE, created=T0 + timedelta(seconds=seconds), **kwargs)


# --- capture_ref: facts read from an object ----------------------------------------------------


def capture_object(
    name: str, spec: dict[str, Any], *, status: dict[str, Any] | None = None, uid: str = "u-1"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "uid": uid, "creationTimestamp": "2025-05-01T12:00:00Z"},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


FULL_SPEC: dict[str, Any] = {
    "type": "full",
    "timeLimit": 30,
    "packetLimit": 100,
    "colo": "colo-a",
    "destinationConf": "s3://kpcap-test/captures?region=us-east-1",
}
SIMPLE_SPEC: dict[str, Any] = {"type": "simple", "timeLimit": 10, "packetLimit": 100}


def test_capture_ref_reads_the_object() -> None:
    got = decisions.capture_ref(capture_object("a", FULL_SPEC, status={"status": "running"}))
    assert got == ref("a", status="running", uid="u-1")
    assert not got.undecided


def test_capture_ref_marks_invalid_and_refused_by_rule() -> None:
    invalid = decisions.capture_ref(capture_object("a", {**FULL_SPEC, "timeLimit": 0}))
    assert not invalid.valid
    assert invalid.undecided
    refused = decisions.capture_ref(
        capture_object(
            "b",
            SIMPLE_SPEC,
            status={
                "status": "failed",
                "conditions": [{"type": "Admitted", "reason": decisions.REASON_RATE}],
            },
        )
    )
    assert refused.refused_by_rule
    other_failure = decisions.capture_ref(
        capture_object(
            "c",
            SIMPLE_SPEC,
            status={"status": "failed", "conditions": [{"type": "Admitted", "reason": "SamplersSilent"}]},
        )
    )
    assert not other_failure.refused_by_rule


# --- full_capture_conflict ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [CaptureStatus.PENDING, CaptureStatus.RUNNING])
def test_an_active_full_capture_blocks_even_if_newer(status: CaptureStatus) -> None:
    me = ref("me")
    active = ref("active", status=status, created=T0 + timedelta(hours=1))
    assert decisions.full_capture_conflict(capture=me, others=[me, active]) == active


def test_an_undecided_valid_older_full_capture_blocks() -> None:
    me = ref("me")
    older = ref("older", created=T0 - timedelta(seconds=1))
    assert decisions.full_capture_conflict(capture=me, others=[older, me]) == older


def test_an_undecided_invalid_older_full_capture_does_not_block() -> None:
    me = ref("me")
    older = ref("older", created=T0 - timedelta(seconds=1), valid=False)
    assert decisions.full_capture_conflict(capture=me, others=[older, me]) is None


def test_an_undecided_newer_full_capture_does_not_block() -> None:
    me = ref("me")
    newer = ref("newer", created=T0 + timedelta(seconds=1))
    assert decisions.full_capture_conflict(capture=me, others=[me, newer]) is None


@pytest.mark.parametrize("status", sorted(decisions.TERMINAL))
def test_a_finished_full_capture_does_not_block(status: str) -> None:
    me = ref("me")
    done = ref("done", status=status, created=T0 - timedelta(seconds=5))
    assert decisions.full_capture_conflict(capture=me, others=[done]) is None


def test_simple_captures_do_not_block_a_full_one() -> None:
    me = ref("me")
    simple = ref("s", type=CaptureType.SIMPLE, status="running", created=T0 - timedelta(seconds=1))
    assert decisions.full_capture_conflict(capture=me, others=[simple]) is None


def test_a_capture_does_not_block_itself() -> None:
    me = ref("me", status="running")
    assert decisions.full_capture_conflict(capture=me, others=[me]) is None


def test_the_oldest_blocker_is_named() -> None:
    me = ref("me")
    first = ref("first", status="running", created=T0 - timedelta(seconds=9))
    second = ref("second", created=T0 - timedelta(seconds=3))
    assert decisions.full_capture_conflict(capture=me, others=[second, first]) == first


def test_simultaneous_full_captures_tie_is_broken_by_uid() -> None:
    a = ref("a", uid="0000-a")
    b = ref("b", uid="ffff-b")
    assert decisions.full_capture_conflict(capture=a, others=[a, b]) is None
    assert decisions.full_capture_conflict(capture=b, others=[a, b]) == a


@given(
    uids=st.lists(st.uuids().map(str), min_size=2, max_size=8, unique=True),
    data=st.data(),
)
def test_exactly_one_of_n_simultaneous_full_captures_wins_in_any_evaluation_order(
    uids: list[str], data: st.DataObject
) -> None:
    """Every capture is evaluated against a listing where those evaluated before it are decided.

    Whatever the order (a webhook, one operator, a restarted one), exactly one is admitted.
    """
    order = data.draw(st.permutations(uids))
    decided: dict[str, str] = {}
    for uid in order:
        others = [ref(u, uid=u, status=decided.get(u)) for u in uids]
        me = ref(uid, uid=uid)
        blocker = decisions.full_capture_conflict(capture=me, others=others)
        decided[uid] = CaptureStatus.FAILED if blocker else CaptureStatus.PENDING
    winners = [u for u, s in decided.items() if s == CaptureStatus.PENDING]
    assert winners == [min(uids)]


@given(uids=st.lists(st.uuids().map(str), min_size=2, max_size=8, unique=True))
def test_simultaneous_full_captures_all_undecided_exactly_one_is_free(uids: list[str]) -> None:
    refs = [ref(u, uid=u) for u in uids]
    free = [r for r in refs if decisions.full_capture_conflict(capture=r, others=refs) is None]
    assert len(free) == 1


# --- simple_rate_conflict ----------------------------------------------------------------------


def rate(me: CaptureRef, *others: CaptureRef) -> CaptureRef | None:
    return decisions.simple_rate_conflict(capture=me, others=[me, *others], window=WINDOW)


def test_a_simple_capture_within_the_window_blocks() -> None:
    previous = simple_ref("previous", seconds=0)
    assert rate(simple_ref("me", seconds=59.999), previous) == previous


def test_the_window_edge_does_not_block() -> None:
    previous = simple_ref("previous", seconds=0)
    assert rate(simple_ref("me", seconds=60), previous) is None
    assert rate(simple_ref("me", seconds=61), previous) is None


def test_a_newer_simple_capture_does_not_block() -> None:
    assert rate(simple_ref("me", seconds=0), simple_ref("newer", seconds=1)) is None


def test_simple_captures_refused_by_a_rule_do_not_count() -> None:
    refused = simple_ref("refused", seconds=0, status="failed", refused_by_rule=True)
    assert rate(simple_ref("me", seconds=10), refused) is None


def test_invalid_simple_captures_do_not_count() -> None:
    invalid = simple_ref("invalid", seconds=0, status="failed", valid=False)
    assert rate(simple_ref("me", seconds=10), invalid) is None


def test_a_simple_capture_failed_for_another_reason_still_counts() -> None:
    """It was a submission (upstream counts submissions, not successes)."""
    failed = simple_ref("failed", seconds=0, status="failed")
    assert rate(simple_ref("me", seconds=10), failed) == failed


def test_full_captures_do_not_count_against_the_simple_rate() -> None:
    full = ref("full", status="running", created=T0)
    assert rate(simple_ref("me", seconds=1), full) is None


def test_the_most_recent_simple_blocker_is_named() -> None:
    old, recent = simple_ref("old", seconds=0), simple_ref("recent", seconds=30)
    assert rate(simple_ref("me", seconds=40), old, recent) == recent


def test_simultaneous_simple_captures_tie_is_broken_by_uid() -> None:
    a = simple_ref("a", seconds=0, uid="aaaa")
    b = simple_ref("b", seconds=0, uid="bbbb")
    assert rate(a, b) is None
    assert rate(b, a) == a


def test_conflict_messages_name_the_blocker() -> None:
    blocker = ref("first", uid="0a-1b", status="running")
    reason, message = decisions.conflict_message(capture_type="full", blocker=blocker, window=WINDOW)
    assert reason == decisions.REASON_CONCURRENCY
    assert "first" in message
    assert "0a1b" in message
    assert "running" in message
    reason, message = decisions.conflict_message(
        capture_type="simple", blocker=simple_ref("s1", seconds=0), window=WINDOW
    )
    assert reason == decisions.REASON_RATE
    assert "s1 was submitted at 2025-05-01T12:00:00Z" in message
    assert "every 60 s" in message


# --- target nodes ------------------------------------------------------------------------------


def spec_of(**fields: Any) -> CaptureSpec:
    return parse_spec({**FULL_SPEC, **fields}, now=None)


def node(
    name: str, *, zone: str | None = None, ready: bool = True, schedulable: bool = True, **labels: str
) -> NodeInfo:
    all_labels = dict(labels)
    if zone is not None:
        all_labels[ZONE] = zone
    return NodeInfo(name=name, labels=all_labels, ready=ready, schedulable=schedulable)


NODES = [
    node("n3", zone="colo-a", disk="ssd"),
    node("n1", zone="colo-a"),
    node("n2", zone="colo-b", disk="ssd"),
    node("n4", zone="colo-a", ready=False),
    node("n5", zone="colo-a", schedulable=False),
    node("n6"),
]


def test_node_info_reads_ready_and_schedulable() -> None:
    raw = {
        "metadata": {"name": "n", "labels": {ZONE: "colo-a"}},
        "spec": {"unschedulable": True},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "True"}, {"type": "Ready", "status": "True"}]
        },
    }
    assert decisions.node_info(raw) == NodeInfo(
        name="n", labels={ZONE: "colo-a"}, ready=True, schedulable=False
    )
    not_ready = {
        "metadata": {"name": "m"},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
    }
    assert decisions.node_info(not_ready) == NodeInfo(name="m", labels={}, ready=False, schedulable=True)


def test_colo_selects_by_the_configured_label_sorted_ready_schedulable_only() -> None:
    assert decisions.target_nodes(spec=spec_of(colo="colo-a"), nodes=NODES, colo_label=ZONE) == ["n1", "n3"]


def test_the_colo_label_is_configurable() -> None:
    nodes = [node("x", site="colo-a"), node("y", zone="colo-a")]
    assert decisions.target_nodes(spec=spec_of(colo="colo-a"), nodes=nodes, colo_label="site") == ["x"]


def test_node_selector_is_anded_with_colo() -> None:
    spec = spec_of(colo="colo-a", nodeSelector={"disk": "ssd"})
    assert decisions.target_nodes(spec=spec, nodes=NODES, colo_label=ZONE) == ["n3"]
    only_selector = parse_spec({**SIMPLE_SPEC, "nodeSelector": {"disk": "ssd"}}, now=None)
    assert decisions.target_nodes(spec=only_selector, nodes=NODES, colo_label=ZONE) == ["n2", "n3"]


def test_no_colo_no_selector_is_every_ready_schedulable_node() -> None:
    spec = parse_spec(SIMPLE_SPEC, now=None)
    assert decisions.target_nodes(spec=spec, nodes=NODES, colo_label=ZONE) == ["n1", "n2", "n3", "n6"]


def test_no_nodes_message_names_what_was_wanted_and_the_colos() -> None:
    spec = spec_of(colo="colo-z", nodeSelector={"disk": "ssd"})
    assert decisions.target_nodes(spec=spec, nodes=NODES, colo_label=ZONE) == []
    message = decisions.no_nodes_message(spec=spec, nodes=NODES, colo_label=ZONE)
    assert f"{ZONE}=colo-z (spec.colo)" in message
    assert "disk=ssd (spec.nodeSelector)" in message
    assert "no node has those labels" in message
    assert "['colo-a', 'colo-b']" in message


def test_no_nodes_message_says_when_matching_nodes_are_not_ready() -> None:
    nodes = [node("n4", zone="colo-c", ready=False), node("n5", zone="colo-c", schedulable=False)]
    spec = spec_of(colo="colo-c")
    assert decisions.target_nodes(spec=spec, nodes=nodes, colo_label=ZONE) == []
    message = decisions.no_nodes_message(spec=spec, nodes=nodes, colo_label=ZONE)
    assert "2 node(s) have those labels but none is Ready and schedulable" in message


# --- aggregate ---------------------------------------------------------------------------------


def agg(
    reports: dict[str, dict[str, Any]], *, after: float, targets: tuple[str, ...] = ("n1", "n2"), **spec: Any
) -> decisions.Outcome:
    return decisions.aggregate(
        spec=spec_of(timeLimit=30, packetLimit=100, **spec),
        targets=list(targets),
        reports=reports,
        started=T0,
        now=T0 + timedelta(seconds=after),
        grace=GRACE,
    )


def test_pending_until_a_node_reports() -> None:
    outcome = agg({}, after=1)
    assert outcome.status == CaptureStatus.PENDING
    assert not outcome.finished
    assert outcome.packets_remaining == 200
    assert outcome.nodes_summary == "0/2"


def test_running_while_nodes_report_before_the_deadline() -> None:
    outcome = agg(
        {
            "n1": {"phase": "running", "packets": 30},
            "n2": {"phase": "done", "packets": 7, "objectUri": "s3://b/n2.pcap"},
        },
        after=39.9,
    )
    assert outcome.status == CaptureStatus.RUNNING
    assert outcome.packets_captured == 37
    assert outcome.packets_remaining == 70, "only the nodes still capturing have packets to go"
    assert outcome.files == ("s3://b/n2.pcap",)
    assert outcome.nodes_summary == "1/2"


def test_reports_from_nodes_that_are_not_targets_are_ignored() -> None:
    outcome = agg({"stranger": {"phase": "done", "packets": 99}}, after=1)
    assert outcome.status == CaptureStatus.PENDING
    assert outcome.packets_captured == 0


def test_success_when_every_node_is_done() -> None:
    reports = {
        "n1": {"phase": "done", "packets": 10, "bytes": 1000, "objectUri": "s3://b/n1.pcap"},
        "n2": {"phase": "done", "packets": 5, "bytes": 500, "objectUri": "s3://b/n2.pcap"},
    }
    outcome = agg(reports, after=2)
    assert outcome.status == CaptureStatus.SUCCESS
    assert outcome.finished
    assert (outcome.packets_captured, outcome.bytes_captured, outcome.packets_remaining) == (15, 1500, 0)
    assert outcome.files == ("s3://b/n1.pcap", "s3://b/n2.pcap")
    assert outcome.error_message == ""


def test_failed_after_the_deadline_naming_the_silent_nodes_keeping_files() -> None:
    reports = {
        "n1": {"phase": "done", "packets": 4, "objectUri": "s3://b/n1.pcap"},
        "n3": {"phase": "running"},
    }
    outcome = agg(reports, after=40, targets=("n1", "n2", "n3"))
    assert outcome.status == CaptureStatus.FAILED
    assert outcome.silent_nodes == ("n2", "n3")
    assert "no report from n2, n3 within timeLimit + 10 s" in outcome.error_message
    assert "files kept from n1" in outcome.error_message
    assert outcome.files == ("s3://b/n1.pcap",)
    assert outcome.packets_remaining == 0


def test_still_running_just_before_the_deadline() -> None:
    assert agg({"n1": {"phase": "done", "packets": 1}}, after=39.999).status == CaptureStatus.RUNNING


def test_a_failed_node_fails_the_capture_with_its_error() -> None:
    reports = {
        "n1": {"phase": "done", "packets": 4, "objectUri": "s3://b/n1.pcap"},
        "n2": {"phase": "failed", "error": "upload: access denied"},
    }
    outcome = agg(reports, after=2)
    assert outcome.status == CaptureStatus.FAILED
    assert outcome.failed_nodes == {"n2": "upload: access denied"}
    assert outcome.error_message.startswith("n2: upload: access denied")
    assert outcome.files == ("s3://b/n1.pcap",)


def test_a_failed_node_without_a_message_still_says_so() -> None:
    outcome = agg({"n1": {"phase": "failed"}}, after=1, targets=("n1",))
    assert outcome.error_message == "n1: failed without a message"


def test_zero_packets_is_the_upstream_message() -> None:
    reports = {n: {"phase": "done", "packets": 0, "objectUri": f"s3://b/{n}.pcap"} for n in ("n1", "n2")}
    outcome = agg(reports, after=2)
    assert outcome.status == CaptureStatus.FAILED
    assert outcome.error_message == decisions.NO_PACKETS_MESSAGE


@given(
    packets=st.lists(st.integers(0, 100), min_size=1, max_size=5),
    done=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_packets_remaining_is_what_unfinished_nodes_may_still_capture(
    packets: list[int], done: list[bool]
) -> None:
    targets = tuple(f"n{i}" for i in range(len(packets)))
    reports = {
        n: {"phase": "done" if done[i] else "running", "packets": p}
        for i, (n, p) in enumerate(zip(targets, packets, strict=True))
    }
    outcome = agg(reports, after=1, targets=targets)
    expected = sum(100 - p for i, p in enumerate(packets) if not done[i])
    assert outcome.packets_remaining == (0 if outcome.finished else expected)
    assert outcome.packets_captured == sum(packets)


# --- conditions --------------------------------------------------------------------------------


def test_merge_conditions_keeps_the_transition_time_when_status_is_unchanged() -> None:
    t1, t2 = T0, T0 + timedelta(minutes=5)
    existing = [
        decisions.condition(kind="Admitted", ok=True, reason="Admitted", message="on 2 nodes", now=t1),
        decisions.condition(kind="Capturing", ok=True, reason="DaemonSetCreated", message="ds", now=t1),
    ]
    merged = decisions.merge_conditions(
        existing,
        [
            decisions.condition(kind="Capturing", ok=True, reason="Still", message="still", now=t2),
            decisions.condition(kind="Complete", ok=True, reason="Succeeded", message="done", now=t2),
        ],
    )
    by_type = {c["type"]: c for c in merged}
    assert by_type["Admitted"] == existing[0]
    assert by_type["Capturing"]["lastTransitionTime"] == "2025-05-01T12:00:00Z"
    assert by_type["Capturing"]["reason"] == "Still"
    assert by_type["Complete"]["lastTransitionTime"] == "2025-05-01T12:05:00Z"
    flipped = decisions.merge_conditions(
        merged, [decisions.condition(kind="Capturing", ok=False, reason="Succeeded", message="x", now=t2)]
    )
    assert {c["type"]: c for c in flipped}["Capturing"]["lastTransitionTime"] == "2025-05-01T12:05:00Z"
    assert [c["type"] for c in flipped] == ["Admitted", "Capturing", "Complete"]


def test_time_helpers() -> None:
    assert decisions.parse_time("2025-05-01T12:00:00Z") == T0
    assert decisions.parse_time(None) is None
    assert decisions.rfc3339(T0 + timedelta(microseconds=5)) == "2025-05-01T12:00:00Z"


def test_the_rollout_allowance_grows_with_the_targets() -> None:
    assert decisions.rollout_allowance(0) == 0
    assert decisions.rollout_allowance(18) < 1.0
    assert decisions.rollout_allowance(2000) == pytest.approx(100.0)
