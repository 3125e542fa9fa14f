"""The operator against the real control plane, with the webhook disabled (it can be raced or absent)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster
from tests.support.audit import AuditLog
from tests.support.captures import Captures, capture_body, full_spec
from tests.support.kpcap_install import OPERATOR_NAMESPACE
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

operator = pytest.fixture(scope="module")(operator_fixture(webhook=False))


@pytest.fixture
def captures(operator: RunningOperator, namespace: str) -> Captures:
    return Captures(operator.cluster, namespace)


def _pods_of(cluster: LocalCluster, capture: dict[str, Any]) -> list[Any]:
    core = client.CoreV1Api(cluster.api_client())
    cid = capture["metadata"]["uid"].replace("-", "")
    return list(
        core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=f"kpcap.io/capture-id={cid}").items
    )


def _wait_no_daemonset(captures: Captures, capture: dict[str, Any]) -> None:
    wait_for(
        lambda: not captures.daemonsets(capture), timeout=15, what="the capture's DaemonSet to be deleted"
    )


def test_full_capture_runs_on_the_colo_nodes_and_succeeds(
    captures: Captures, operator: RunningOperator
) -> None:
    capture = captures.create(capture_body("two-nodes", **full_spec()))
    status = captures.wait_status("two-nodes", {"pending", "running"})
    assert status["targetNodes"] == ["kpcap-node-1", "kpcap-node-2"]
    [daemonset] = wait_for(lambda: captures.daemonsets(capture), timeout=10, what="the DaemonSet")
    pod_spec = daemonset.spec.template.spec
    assert pod_spec.host_network is True
    agent = pod_spec.containers[0]
    assert agent.security_context.capabilities.add == ["NET_RAW", "NET_ADMIN"]
    assert agent.security_context.privileged is False
    pods = wait_for(
        lambda: (
            (p := _pods_of(operator.cluster, capture))
            and len(p) == 2
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
        timeout=60,
        what="agent pods on both colo-a nodes",
    )
    assert {p.spec.node_name for p in pods} == {"kpcap-node-1", "kpcap-node-2"}

    captures.report("two-nodes", "kpcap-node-1", phase="running", packets=3)
    assert captures.wait_status("two-nodes", {"running"})["packetsCaptured"] == 3
    captures.report(
        "two-nodes",
        "kpcap-node-1",
        phase="done",
        packets=10,
        bytes=1000,
        objectUri="s3://kpcap-test/captures/pcap_x/kpcap-node-1.pcap",
    )
    captures.report(
        "two-nodes",
        "kpcap-node-2",
        phase="done",
        packets=5,
        bytes=500,
        objectUri="s3://kpcap-test/captures/pcap_x/kpcap-node-2.pcap",
    )
    final = captures.wait_status("two-nodes", {"success"})
    assert final["packetsCaptured"] == 15
    assert final["nodesSummary"] == "2/2"
    assert sorted(final["files"]) == [
        "s3://kpcap-test/captures/pcap_x/kpcap-node-1.pcap",
        "s3://kpcap-test/captures/pcap_x/kpcap-node-2.pcap",
    ]
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["Complete"]["status"] == "True"
    _wait_no_daemonset(captures, capture)


def test_a_silent_node_fails_the_capture_after_the_deadline(captures: Captures) -> None:
    capture = captures.create(capture_body("silent", **full_spec(timeLimit=1)))
    captures.wait_status("silent", {"pending", "running"})
    captures.report("silent", "kpcap-node-1", phase="done", packets=4, objectUri="s3://b/p/kpcap-node-1.pcap")
    final = captures.wait_status("silent", {"failed"}, timeout=30)
    assert "kpcap-node-2" in final["errorMessage"]
    assert "no report from" in final["errorMessage"]
    assert final["files"] == ["s3://b/p/kpcap-node-1.pcap"], "what one node captured is kept"
    _wait_no_daemonset(captures, capture)


def _kubectl_wait(captures: Captures, name: str, condition: str) -> None:
    result = captures.cluster.kubectl(
        "wait",
        f"--for=condition={condition}",
        f"pcap/{name}",
        "-n",
        captures.namespace,
        "--timeout=60s",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "condition met" in result.stdout, result.stdout


def test_kubectl_waits_for_failed_and_for_complete_and_lists_kpcap(captures: Captures) -> None:
    """Job-style terminal conditions, observedGeneration, the kpcap category; and, with no webhook to
    refuse it, a spec edit that the operator ignores: it runs the spec it admitted."""
    captures.create(capture_body("edited", **full_spec(timeLimit=1)))
    captures.wait_status("edited", {"pending", "running"})
    captures.custom.patch_namespaced_custom_object(
        "kpcap.io", "v1alpha1", captures.namespace, "packetcaptures", "edited", {"spec": {"timeLimit": 300}}
    )
    _kubectl_wait(captures, "edited", "Failed")  # silent nodes after the admitted 1 s, not 300 s
    edited = captures.get("edited")
    assert edited["status"]["observedGeneration"] == edited["metadata"]["generation"] == 2
    conditions = {c["type"]: c for c in edited["status"]["conditions"]}
    assert conditions["Complete"]["status"] == "False"
    assert conditions["SpecChangeIgnored"]["status"] == "True"
    assert (
        "spec.timeLimit: immutable once the capture is created (was 1, now 300)"
        in (conditions["SpecChangeIgnored"]["message"])
    )

    captures.create(capture_body("succeeds", **full_spec(timeLimit=300)))
    captures.wait_status("succeeds", {"pending", "running"})
    for node in ("kpcap-node-1", "kpcap-node-2"):
        captures.report("succeeds", node, phase="done", packets=1, objectUri=f"s3://b/{node}.pcap")
    _kubectl_wait(captures, "succeeds", "Complete")
    final = captures.get("succeeds")
    assert {c["type"]: c["status"] for c in final["status"]["conditions"]}["Failed"] == "False"
    assert final["status"]["observedGeneration"] == final["metadata"]["generation"] == 1

    got = captures.cluster.kubectl("get", "kpcap", "-n", captures.namespace, "-o", "name", check=False)
    assert got.returncode == 0, got.stderr
    listed = got.stdout.split()
    assert {"packetcapture.kpcap.io/edited", "packetcapture.kpcap.io/succeeds"} <= set(listed), listed
    assert any(name.startswith("packetcapturereport.kpcap.io/") for name in listed), listed


def test_stop_ends_the_capture_early(captures: Captures) -> None:
    capture = captures.create(capture_body("stopper", **full_spec(timeLimit=300)))
    captures.wait_status("stopper", {"pending", "running"})
    captures.custom.patch_namespaced_custom_object(
        "kpcap.io", "v1alpha1", captures.namespace, "packetcaptures", "stopper", {"spec": {"stop": True}}
    )
    status = wait_for(
        lambda: (s := captures.status("stopper")).get("stopRequested") and s, timeout=10, what="stopRequested"
    )
    assert status["status"] in {"pending", "running"}
    for node in ("kpcap-node-1", "kpcap-node-2"):
        captures.report("stopper", node, phase="done", packets=1, objectUri=f"s3://b/{node}.pcap")
    captures.wait_status("stopper", {"success"})
    _wait_no_daemonset(captures, capture)


def test_zero_packets_is_reported_with_the_upstream_message(captures: Captures) -> None:
    captures.create(capture_body("empty", **full_spec(timeLimit=1)))
    captures.wait_status("empty", {"pending", "running"})
    for node in ("kpcap-node-1", "kpcap-node-2"):
        captures.report("empty", node, phase="done", packets=0, objectUri=f"s3://b/{node}.pcap")
    final = captures.wait_status("empty", {"failed"})
    assert final["errorMessage"] == "No packets matched the filter in the time limit given"


def test_no_matching_node_fails_with_a_message(captures: Captures) -> None:
    captures.create(capture_body("nowhere", **full_spec(colo="colo-z")))
    final = captures.wait_status("nowhere", {"failed"})
    assert "colo-z" in final["errorMessage"]
    assert "colo-a" in final["errorMessage"], "the message lists the colos that exist"


def test_deleting_a_running_capture_removes_daemonset_and_object_quickly(captures: Captures) -> None:
    capture = captures.create(capture_body("doomed", **full_spec()))
    wait_for(lambda: captures.daemonsets(capture), timeout=15, what="the DaemonSet")
    started = time.monotonic()
    captures.delete("doomed")

    def gone() -> bool:
        try:
            captures.get("doomed")
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=10, what="the capture object to be deleted")
    _wait_no_daemonset(captures, capture)
    assert time.monotonic() - started < 10


def test_simultaneous_full_captures_exactly_one_runs(captures: Captures) -> None:
    for attempt in range(20):
        names = [f"race-{attempt}-a", f"race-{attempt}-b"]
        barrier = threading.Barrier(2)

        def create(name: str, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            captures.create(capture_body(name, **full_spec()))

        threads = [threading.Thread(target=create, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = {n: captures.wait_status(n, {"pending", "running", "failed"}) for n in names}
        winners = [n for n, s in statuses.items() if s["status"] in {"pending", "running"}]
        losers = [n for n, s in statuses.items() if s["status"] == "failed"]
        assert len(winners) == 1, f"attempt {attempt}: {statuses}"
        assert winners[0] in statuses[losers[0]]["errorMessage"]
        for name in names:
            captures.delete(name)
        wait_for(
            lambda names=names: (
                not any(
                    n
                    in str(
                        captures.custom.list_namespaced_custom_object(
                            "kpcap.io", "v1alpha1", captures.namespace, "packetcaptures"
                        )
                    )
                    for n in names
                )
            ),
            timeout=20,
            what="the race's captures to be deleted",
        )


def test_restarting_the_operator_mid_capture_creates_no_second_daemonset(
    captures: Captures, operator: RunningOperator
) -> None:
    audit = AuditLog(operator.cluster.audit_log)
    since = audit.marker()
    capture = captures.create(capture_body("survivor", **full_spec()))
    wait_for(lambda: captures.daemonsets(capture), timeout=15, what="the DaemonSet")
    operator.process.popen.kill()  # no graceful shutdown: as if the pod was OOM-killed
    operator.process.popen.wait()
    captures.report("survivor", "kpcap-node-1", phase="done", packets=2, objectUri="s3://b/1.pcap")
    operator.restart()
    captures.report("survivor", "kpcap-node-2", phase="done", packets=3, objectUri="s3://b/2.pcap")
    final = captures.wait_status("survivor", {"success"})
    assert final["packetsCaptured"] == 5
    assert len(final["conditions"]) >= 2
    _wait_no_daemonset(captures, capture)
    # Counted by the apiserver, not from the operator's log: a SIGKILL can land between the create
    # and its log line. One create, accepted; the restarted operator saw it and made no other.
    creates = [
        entry.code
        for entry in audit.entries(since=since)
        if entry.verb == "create" and entry.resource == "daemonsets" and entry.namespace == OPERATOR_NAMESPACE
    ]
    assert creates == [201], creates


def test_second_simple_capture_within_the_window_is_refused(captures: Captures) -> None:
    simple = {"type": "simple", "timeLimit": 10, "packetLimit": 100}
    captures.create(capture_body("sample-1", **simple))
    first = captures.wait_status("sample-1", {"success", "failed"})
    captures.create(capture_body("sample-2", **simple))
    second = captures.wait_status("sample-2", {"success", "failed"})
    assert second["status"] == "failed"
    reasons = {c["type"]: c["reason"] for c in second["conditions"]}
    assert reasons["Admitted"] == "SimpleCaptureRateLimited"
    assert "sample-1" in second["errorMessage"]
    assert "every 60 s" in second["errorMessage"]
    assert {c["type"]: c["reason"] for c in first["conditions"]}["Admitted"] != "SimpleCaptureRateLimited"


def test_transitions_are_events_and_metrics(captures: Captures, operator: RunningOperator) -> None:
    captures.create(capture_body("observed", **full_spec(timeLimit=1)))
    captures.wait_status("observed", {"pending", "running"})
    for node in ("kpcap-node-1", "kpcap-node-2"):
        captures.report("observed", node, phase="done", packets=2, objectUri=f"s3://b/{node}.pcap")
    captures.wait_status("observed", {"success"})

    def reasons() -> set[str]:
        out = operator.cluster.kubectl(
            "get",
            "events",
            "-n",
            captures.namespace,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.name=observed",
        ).stdout
        return {event["reason"] for event in json.loads(out)["items"]}

    wait_for(lambda: {"Admitted", "Succeeded"} <= reasons(), timeout=15, what="Admitted and Succeeded events")
    port = operator.env["KPCAP_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    successes = [
        line
        for line in metrics.splitlines()
        if line.startswith("kpcap_captures_total{") and 'status="success"' in line and 'type="full"' in line
    ]
    assert successes, metrics
    assert float(successes[0].rsplit(" ", 1)[1]) >= 1
