"""The reconcile pass and the full-capture reconciler, driven through the Cluster interface.

A plain in-memory cluster stands in for the Kubernetes API (the e2e suite proves the real one): each
test runs passes the way Kopf's timer does, writing each pass's status patch back into the object.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpcap.model import capture_id
from kpcap_operator import full_capture, spec_changes
from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.reconcile import reconcile
from kpcap_operator.result import Result
from kpcap_operator.settings import OperatorSettings
from tests.support.captures import full_spec
from tests.support.cluster_in_memory import InMemoryCluster, capture, node

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="kpcap-agent:test", report_grace_seconds=5)
FULL = full_spec()


class NoSamplers:
    def ask(self, **_: Any) -> list[Any]:
        raise AssertionError("a full capture asks no sampler")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster(
        nodes=[
            node("kpcap-node-2", zone="colo-a"),
            node("kpcap-node-1", zone="colo-a"),
            node("kpcap-node-3", zone="colo-b"),
            node("kpcap-node-4", zone="colo-a", ready=False),
        ]
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def run_pass(cluster: InMemoryCluster, clock: Clock) -> Callable[..., Result]:
    ledger = AdmissionLedger()

    def run(body: dict[str, Any], *, write: bool = True) -> Result:
        result = reconcile(
            body=cluster.get(body),
            settings=SETTINGS,
            cluster=cluster,
            ledger=ledger,
            samplers=NoSamplers(),
            sample_store=None,  # type: ignore[arg-type]  # full captures keep no sample
            now_fn=clock,
        )
        if write and result.status:
            cluster.patch_status(body, result.status)
        return result

    return run


def report(cluster: InMemoryCluster, body: dict[str, Any], node_name: str, **entry: Any) -> None:
    cluster.report(body, node_name, **entry)


def test_an_admitted_full_capture_gets_one_daemonset_on_its_colo_nodes(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("two-nodes", FULL, created=T0))
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "pending"
    assert status["targetNodes"] == ["kpcap-node-1", "kpcap-node-2"]
    assert status["nodesSummary"] == "0/2"
    assert status["packetsRemaining"] == 200
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Admitted": "Admitted",
        "Capturing": "DaemonSetCreated",
    }
    assert [e.reason for e in result.events] == ["Admitted"]
    [name] = cluster.daemonsets_of(body)
    assert name == f"kpcap-capture-{capture_id(body['metadata']['uid'])}"
    affinity = cluster.daemonsets[name]["spec"]["template"]["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchFields"][0]["values"] for t in terms] == [["kpcap-node-1"], ["kpcap-node-2"]]


def test_a_running_capture_makes_no_daemonset_write_per_pass(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], clock: Clock
) -> None:
    body = cluster.add(capture("steady", FULL, created=T0))
    for _ in range(30):
        run_pass(body)
        clock.advance(1)
    assert len(cluster.creates) == 1
    assert cluster.conflicts == 0
    assert cluster.get(body)["status"]["status"] == "pending"


def test_a_vanished_daemonset_is_created_again(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("vanishing", FULL, created=T0))
    run_pass(body)
    cluster.daemonsets.clear()  # a manual delete, or a crash between status and create
    run_pass(body)
    assert len(cluster.daemonsets_of(body)) == 1
    assert len(cluster.creates) == 2
    assert cluster.conflicts == 0


def test_a_daemonset_already_there_is_not_created_again(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    """An operator that died after creating the DaemonSet but before its status landed."""
    body = cluster.add(capture("survivor", FULL, created=T0))
    run_pass(body, write=False)
    assert len(cluster.creates) == 1
    restarted = AdmissionLedger()
    result = reconcile(
        body=cluster.get(body),
        settings=SETTINGS,
        cluster=cluster,
        ledger=restarted,
        samplers=NoSamplers(),
        sample_store=None,  # type: ignore[arg-type]
        now_fn=lambda: T0,
    )
    assert result.status["status"] == "pending"
    assert len(cluster.creates) == 1


def test_reports_fold_in_and_success_removes_the_daemonset(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("reported", FULL, created=T0))
    run_pass(body)
    report(cluster, body, "kpcap-node-1", phase="running", packets=3)
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "running"
    assert status["packetsCaptured"] == 3
    assert [e.reason for e in result.events] == ["Running"]
    assert result.finished is None
    report(cluster, body, "kpcap-node-1", phase="done", packets=10, bytes=1000, objectUri="s3://b/1.pcap")
    report(cluster, body, "kpcap-node-2", phase="done", packets=5, bytes=500, objectUri="s3://b/2.pcap")
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "success"
    assert status["packetsCaptured"] == 15
    assert status["bytesCaptured"] == 1500
    assert status["nodesSummary"] == "2/2"
    assert sorted(status["files"]) == ["s3://b/1.pcap", "s3://b/2.pcap"]
    assert "errorMessage" not in status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Complete"]["status"] == "True"
    assert conditions["Capturing"]["status"] == "False"
    assert [e.reason for e in result.events] == ["Succeeded"]
    assert result.finished is not None
    assert cluster.daemonsets_of(body) == []
    assert len(cluster.deletes) == 1


def test_a_finished_capture_is_left_alone(cluster: InMemoryCluster, run_pass: Callable[..., Result]) -> None:
    body = cluster.add(capture("old", FULL, created=T0, status={"status": "success"}))
    assert run_pass(body) == Result()
    assert cluster.creates == []
    assert cluster.deletes == []


def test_a_silent_node_fails_the_capture_after_the_deadline_keeping_files(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], clock: Clock
) -> None:
    body = cluster.add(capture("silent", {**FULL, "timeLimit": 1}, created=T0))
    run_pass(body)
    report(cluster, body, "kpcap-node-1", phase="done", packets=4, objectUri="s3://b/1.pcap")
    clock.advance(1 + 5 - 0.5)
    assert run_pass(body).finished is None
    clock.advance(1)
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert "no report from kpcap-node-2" in status["errorMessage"]
    assert status["files"] == ["s3://b/1.pcap"]
    assert [e.reason for e in result.events] == ["NodesSilent"]
    assert cluster.daemonsets_of(body) == []


def test_no_node_is_called_silent_while_the_reports_are_not_settled_after_a_break(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], clock: Clock
) -> None:
    """An apiserver restart: the agents' retried reports land within seconds of the operator's
    view coming back, so the deadline moves out by what is left of REPORTS_SETTLE_SECONDS."""
    body = cluster.add(capture("outage", {**FULL, "timeLimit": 1}, created=T0))
    run_pass(body)
    cluster.reports_in_step = 2.0  # the report watch came back 2 s ago
    clock.advance(1 + 5 + 1)  # past timeLimit + grace
    assert run_pass(body).finished is None
    clock.advance(full_capture.REPORTS_SETTLE_SECONDS - 2.0)
    cluster.reports_in_step = full_capture.REPORTS_SETTLE_SECONDS
    assert run_pass(body).finished is not None
    assert "no report from kpcap-node-1, kpcap-node-2" in cluster.get(body)["status"]["errorMessage"]


def test_zero_packets_is_the_upstream_message(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("empty", FULL, created=T0))
    run_pass(body)
    for name in ("kpcap-node-1", "kpcap-node-2"):
        report(cluster, body, name, phase="done", packets=0, objectUri=f"s3://b/{name}.pcap")
    run_pass(body)
    status = cluster.get(body)["status"]
    assert status["errorMessage"] == "No packets matched the filter in the time limit given"
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Complete"] == ["CaptureFailed"]


def test_stop_is_recorded_once_and_the_capture_keeps_running(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("stopper", {**FULL, "timeLimit": 300}, created=T0))
    run_pass(body)
    cluster.captures[("team-a", "stopper")]["spec"]["stop"] = True
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["stopRequested"] == "2025-05-01T12:00:00Z"
    assert status["status"] == "pending"
    assert [e.reason for e in result.events] == ["StopRequested"]
    assert "stopRequested" not in run_pass(body).status
    for name in ("kpcap-node-1", "kpcap-node-2"):
        report(cluster, body, name, phase="done", packets=1, objectUri=f"s3://b/{name}.pcap")
    run_pass(body)
    assert cluster.get(body)["status"]["status"] == "success"
    assert cluster.daemonsets_of(body) == []


def test_no_matching_node_fails_naming_the_colos(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("nowhere", {**FULL, "colo": "colo-z"}, created=T0))
    result = run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert "colo-z" in status["errorMessage"]
    assert "colo-a" in status["errorMessage"]
    assert {c["reason"] for c in status["conditions"]} == {"NoMatchingNodes"}
    assert result.events[0].type == "Warning"
    assert cluster.creates == []


def test_an_invalid_spec_fails_naming_the_field(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("bad", {**FULL, "timeLimit": 0}, created=T0))
    run_pass(body)
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert status["errorMessage"].startswith("spec.timeLimit")
    assert {c["reason"] for c in status["conditions"]} == {"InvalidSpec"}
    assert cluster.creates == []


def test_a_second_full_capture_is_refused_while_one_is_active(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    first = cluster.add(capture("first", FULL, created=T0))
    run_pass(first)
    second = cluster.add(capture("second", FULL, created=T0 + timedelta(seconds=1)))
    run_pass(second)
    status = cluster.get(second)["status"]
    assert status["status"] == "failed"
    assert "first" in status["errorMessage"]
    assert {c["reason"] for c in status["conditions"]} == {"FullCaptureAlreadyActive"}
    assert len(cluster.creates) == 1


def test_two_captures_whose_status_has_not_landed_exactly_one_runs(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    """The ledger: B is decided while A's status patch is still in flight (not written back)."""
    a = cluster.add(capture("a", FULL, created=T0, uid="f" * 32))
    first = run_pass(a, write=False)
    b = cluster.add(capture("b", FULL, created=T0, uid="0" * 32))  # same second, smaller uid: "older"
    second = run_pass(b, write=False)
    assert first.status["status"] == "pending"
    assert second.status["status"] == "failed"
    assert f"a (id {'f' * 32}) is pending" in second.status["errorMessage"]


def test_a_failed_start_is_retried_from_admission_and_blocks_nothing(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = cluster.add(capture("flaky", FULL, created=T0))

    def refuse(manifest: dict[str, Any]) -> bool:
        raise RuntimeError("apiserver unavailable")

    monkeypatch.setattr(cluster, "create_daemonset", refuse)
    with pytest.raises(RuntimeError):
        run_pass(body)
    monkeypatch.undo()
    other = cluster.add(capture("other", FULL, created=T0 + timedelta(seconds=1)))
    run_pass(body)
    assert cluster.get(body)["status"]["status"] == "pending"
    run_pass(other)
    assert "flaky" in cluster.get(other)["status"]["errorMessage"]


def test_remove_daemonsets_deletes_every_daemonset_of_the_capture(cluster: InMemoryCluster) -> None:
    body = cluster.add(capture("doomed", FULL, created=T0))
    cid = capture_id(body["metadata"]["uid"])
    for name in ("a", "b"):
        cluster.daemonsets[name] = {"metadata": {"name": name, "labels": {"kpcap.io/capture-id": cid}}}
    cluster.daemonsets["other"] = {"metadata": {"name": "other", "labels": {"kpcap.io/capture-id": "x"}}}
    assert full_capture.remove_daemonsets(cluster=cluster, body=body, why="deleted") == ["a", "b"]
    assert list(cluster.daemonsets) == ["other"]
    assert full_capture.remove_daemonsets(cluster=cluster, body=body, why="deleted") == []


# --- terminal conditions and the spec as admitted (issue 15) --------------------------------------


def _conditions(cluster: InMemoryCluster, body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in cluster.get(body)["status"]["conditions"]}


def test_success_is_complete_true_and_failed_false(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("ok", FULL, created=T0))
    run_pass(body)
    for name in ("kpcap-node-1", "kpcap-node-2"):
        report(cluster, body, name, phase="done", packets=1, objectUri=f"s3://b/{name}.pcap")
    run_pass(body)
    conditions = _conditions(cluster, body)
    assert conditions["Complete"] == ("True", "Succeeded")
    assert conditions["Failed"] == ("False", "Succeeded")


def test_failure_is_failed_true_and_complete_false(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    body = cluster.add(capture("bad", FULL, created=T0))
    run_pass(body)
    for name in ("kpcap-node-1", "kpcap-node-2"):
        report(cluster, body, name, phase="failed", error="upload refused")
    run_pass(body)
    conditions = _conditions(cluster, body)
    assert conditions["Failed"] == ("True", "CaptureFailed")
    assert conditions["Complete"] == ("False", "CaptureFailed")


def test_a_refused_capture_is_failed_true() -> None:
    cluster = InMemoryCluster(nodes=[])
    body = cluster.add(capture("nowhere", FULL, created=T0))
    result = reconcile(
        body=body,
        settings=SETTINGS,
        cluster=cluster,
        ledger=AdmissionLedger(),
        samplers=NoSamplers(),
        sample_store=None,  # type: ignore[arg-type]
        now_fn=lambda: T0,
    )
    conditions = {c["type"]: (c["status"], c["reason"]) for c in result.status["conditions"]}
    assert conditions["Failed"] == ("True", "NoMatchingNodes")
    assert conditions["Complete"] == ("False", "NoMatchingNodes")


def test_the_operator_runs_the_spec_it_admitted_whatever_the_spec_becomes(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], clock: Clock
) -> None:
    """Without the webhook and CEL an edit can land: the deadline stays the admitted timeLimit, the
    condition SpecChangeIgnored names the field, and stop still works."""
    body = cluster.add(capture("edited", {**FULL, "timeLimit": 1}, created=T0))
    run_pass(body)
    assert cluster.get(body)["status"]["admittedSpec"] == '{"colo":"colo-a","destinationConf":' + (
        '"s3://kpcap-test/captures?region=us-east-1","packetLimit":100,"timeLimit":1,"type":"full"}'
    )
    cluster.captures[("team-a", "edited")]["spec"]["timeLimit"] = 300
    result = run_pass(body)
    assert [e.reason for e in result.events] == ["SpecChangeIgnored"]
    status, reason = _conditions(cluster, body)["SpecChangeIgnored"]
    assert (status, reason) == ("True", "SpecChangeIgnored")
    message = next(c["message"] for c in cluster.get(body)["status"]["conditions"] if c["type"] == reason)
    assert "spec.timeLimit: immutable once the capture is created (was 1, now 300)" in message
    assert run_pass(body).events == [], "said once"
    cluster.captures[("team-a", "edited")]["spec"]["stop"] = True
    run_pass(body)
    assert cluster.get(body)["status"].get("stopRequested"), "stop is the one change that counts"
    cluster.captures[("team-a", "edited")]["spec"]["stop"] = False
    assert spec_changes.admitted(cluster.get(body))["stop"] is True, "and it cannot be taken back"
    clock.advance(1 + 5 + 1)  # the admitted timeLimit + grace, not 300 s
    assert run_pass(body).finished is not None
