"""Faults during captures, on a local cluster of its own (real apiserver, moto's S3 server, real
agents and samplers, real packets): the apiserver restarted, the S3 server stopped and started
again or left down, a node lost, a sampler killed, capture pods refused by admission.

The cluster is this module's (not the session's): its faults would leak into other modules. Its
kubelets restart a crashed container after 10 s, as a real kubelet's CrashLoopBackOff does, so a
killed sampler stays down for the simple capture that asks it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kpcap.names import capture_id
from kpcap_localcluster import faults, network
from kpcap_localcluster.cluster import LocalCluster, default_nodes
from kpcap_localcluster.install import Samplers, deploy_samplers
from tests.support.captures import Captures, capture_body
from tests.support.kpcap_install import (
    CREDENTIALS_SECRET,
    OPERATOR_NAMESPACE,
    SAMPLER_VALUES,
    apply_storage_credentials,
    install_kpcap_objects,
)
from tests.support.operator import RunningOperator, operator_env, run_operator
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"
REPORT_GRACE = 24  # the agents' upload retries end 18 s (0.75 of it) after timeLimit
PORT = 7311
COLO_A = ("kpcap-node-1", "kpcap-node-2")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster.start(nodes=default_nodes(3), restart_backoff=10.0)
    try:
        install_kpcap_objects(started)
        apply_storage_credentials(started)
        yield started
    finally:
        started.stop()
        left = started.leftovers()
        assert not any(left.values()), f"the fault cluster's teardown left {left}"


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    env = operator_env(
        cluster=cluster,
        tmp_path_factory=tmp_path_factory,
        webhook=False,
        agent_image=AGENT_IMAGE,
        extra_env={
            "KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
            "KPCAP_REPORT_GRACE_SECONDS": str(REPORT_GRACE),
            # This cluster's samplers' CA, not the session cluster's.
            "KPCAP_SAMPLER_CA_FILE": str(tmp_path_factory.mktemp("fault-samplers") / "ca.crt"),
        },
    )
    yield from run_operator(cluster=cluster, env=env, tmp_path_factory=tmp_path_factory, webhook=False)


@pytest.fixture(scope="module")
def samplers(operator: RunningOperator) -> Iterator[Samplers]:
    deployed = deploy_samplers(operator.cluster, namespace=OPERATOR_NAMESPACE, sampler_values=SAMPLER_VALUES)
    Path(operator.env["KPCAP_SAMPLER_CA_FILE"]).write_bytes(deployed.ca_certificate())
    try:
        yield deployed
    finally:
        deployed.remove()


@pytest.fixture
def captures(operator: RunningOperator) -> Iterator[Captures]:
    core = client.CoreV1Api(operator.cluster.api_client())
    name = f"f-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    yield Captures(operator.cluster, name)
    core.delete_namespace(name)


def new_bucket(cluster: LocalCluster) -> str:
    assert cluster.s3 is not None
    bucket = f"faults-{secrets.token_hex(4)}"
    cluster.s3.s3_client().create_bucket(Bucket=bucket)
    return bucket


def full(cluster: LocalCluster, bucket: str, **overrides: Any) -> dict[str, Any]:
    assert cluster.s3 is not None
    return {
        "type": "full",
        "timeLimit": 6,
        "packetLimit": 1000,
        "colo": "colo-a",
        "destinationConf": f"s3://{bucket}/faults?region=us-east-1&endpoint={cluster.s3.endpoint}",
        "filter": {"protocol": 17, "destinationPort": PORT},
        **overrides,
    }


# A time limit with room for the two agents to start seconds apart (a kubelet still backing off a
# crashed sampler, or catching up after the apiserver's restart, starts its pod later): the cases
# that act while both nodes are running must see them running at once.
BOTH_RUNNING_SECONDS = 15


def wait_reports(
    captures: Captures, name: str, phases: set[str], nodes: tuple[str, ...], timeout: float
) -> None:
    def reached() -> bool:
        try:
            return all(captures.node_report(name, node).get("phase") in phases for node in nodes)
        except client.ApiException:
            return False  # not created yet

    wait_for(reached, timeout=timeout, interval=0.2, what=f"{nodes} of {name} to report {phases}")


def send(cluster: LocalCluster, dst: str, count: int, payload: str) -> None:
    cluster.send_udp(src="kpcap-node-3", dst=dst, port=PORT, count=count, payload=payload)


def object_payloads(cluster: LocalCluster, uri: str) -> list[bytes]:
    assert cluster.s3 is not None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = cluster.s3.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return [payload for _, payload in udp_payloads(body)]


def agent_logs(cluster: LocalCluster, capture: dict[str, Any]) -> str:
    cid = capture_id(capture["metadata"]["uid"])
    return cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod=f"kpcap-capture-{cid}-*")


def test_the_apiserver_restarted_mid_capture_the_capture_completes(captures: Captures) -> None:
    cluster = captures.cluster
    bucket = new_bucket(cluster)
    capture = captures.create(capture_body("restarted", **full(cluster, bucket, timeLimit=10)))
    wait_reports(captures, "restarted", {"running"}, COLO_A, timeout=60)
    for node in COLO_A:
        send(cluster, node, 5, f"before-{node}")
    started = time.monotonic()
    faults.restart_apiserver(cluster, down_seconds=1.0)
    print(f"\napiserver down and back in {time.monotonic() - started:.1f} s")
    final = captures.wait_status("restarted", {"success", "failed"}, timeout=90)
    assert final["status"] == "success", (final, agent_logs(cluster, capture)[-3000:])
    assert sorted(final["files"]) == sorted(
        f"s3://{bucket}/faults/pcap_{capture_id(capture['metadata']['uid'])}/{node}.pcap" for node in COLO_A
    )
    for node in COLO_A:
        uri = next(f for f in final["files"] if f.endswith(f"/{node}.pcap"))
        assert object_payloads(cluster, uri) == [f"before-{node}".encode()] * 5
    wait_for(lambda: not captures.daemonsets(capture), timeout=30, what="the DaemonSet to be deleted")


def test_s3_stopped_during_uploads_and_back_within_the_retry_window_the_capture_succeeds(
    captures: Captures,
) -> None:
    cluster = captures.cluster
    bucket = new_bucket(cluster)
    capture = captures.create(
        capture_body("s3-back", **full(cluster, bucket, timeLimit=BOTH_RUNNING_SECONDS))
    )
    wait_reports(captures, "s3-back", {"running"}, COLO_A, timeout=60)
    for node in COLO_A:
        send(cluster, node, 4, f"s3-back-{node}")
    faults.stop_s3(cluster)
    down = time.monotonic()
    try:
        wait_reports(captures, "s3-back", {"uploading"}, COLO_A, timeout=30)
        # Both agents have been refused twice before the server comes back (moto takes seconds to
        # start): the outage outlasts a count of 4 tries with their jittered back-off, not the deadline.
        wait_for(
            lambda: agent_logs(cluster, capture).count("failed (try 2 of") >= 2,
            timeout=30,
            interval=0.2,
            what="both agents' second upload try to fail",
        )
    finally:
        # moto keeps buckets in memory: it comes back with the bucket, as a persistent store would.
        faults.restart_s3(cluster, buckets=[bucket])
    print(f"\nS3 down {time.monotonic() - down:.1f} s; the agents' retries:")
    print("\n".join(line for line in agent_logs(cluster, capture).splitlines() if "failed (try" in line))
    final = captures.wait_status("s3-back", {"success", "failed"}, timeout=60)
    assert final["status"] == "success", (final, agent_logs(cluster, capture)[-3000:])
    assert len(final["files"]) == 2
    for node in COLO_A:
        uri = next(f for f in final["files"] if f.endswith(f"/{node}.pcap"))
        assert object_payloads(cluster, uri) == [f"s3-back-{node}".encode()] * 4


def test_s3_left_down_the_uploading_node_fails_naming_the_bucket_its_file_kept(captures: Captures) -> None:
    """One S3 server for every node: node 1 fills its packetLimit at once and uploads before the
    server stops; node 2 runs to its timeLimit and meets the outage."""
    cluster = captures.cluster
    bucket = new_bucket(cluster)
    capture = captures.create(
        capture_body("s3-down", **full(cluster, bucket, timeLimit=BOTH_RUNNING_SECONDS, packetLimit=5))
    )
    cid = capture_id(capture["metadata"]["uid"])
    wait_reports(captures, "s3-down", {"running"}, COLO_A, timeout=60)
    send(cluster, "kpcap-node-1", 5, "s3-down-first")
    wait_reports(captures, "s3-down", {"done"}, ("kpcap-node-1",), timeout=30)
    first = captures.node_report("s3-down", "kpcap-node-1")["objectUri"]
    assert object_payloads(cluster, first) == [b"s3-down-first"] * 5  # in the bucket before the outage
    faults.stop_s3(cluster)
    try:
        send(cluster, "kpcap-node-2", 3, "s3-down-second")
        final = captures.wait_status("s3-down", {"success", "failed"}, timeout=60)
        second = captures.node_report("s3-down", "kpcap-node-2")
    finally:
        faults.restart_s3(cluster)
    assert final["status"] == "failed", final
    assert second["phase"] == "failed"
    assert f"s3://{bucket}/faults/pcap_{cid}/kpcap-node-2.pcap" in second["error"]
    assert "kpcap-node-2" in final["errorMessage"]
    assert f"s3://{bucket}/" in final["errorMessage"]
    assert final["nodes"]["kpcap-node-2"]["phase"] == "failed"
    # The other node's file stays the capture's.
    assert final["files"] == [first]
    assert "files kept from kpcap-node-1" in final["errorMessage"]
    # The failed node's PCAP stays on its pod's volume (emptyDir), all 3 packets.
    node_dir = cluster.node("kpcap-node-2").state_dir
    [kept] = node_dir.glob(
        f"pods/{OPERATOR_NAMESPACE}_kpcap-capture-{cid}-*/volumes/*/pcap_{cid}/kpcap-node-2.pcap"
    )
    assert [p for _, p in udp_payloads(kept.read_bytes())] == [b"s3-down-second"] * 3


def _sampler_pid(cluster: LocalCluster, node: str) -> int:
    for pid in network.netns_pids(cluster.node(node).netns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"kpcap_agent" in argv and b"sample" in argv:
            return pid
    raise AssertionError(f"no sampler process on {node}")


def test_a_sampler_killed_during_a_simple_capture_is_named_and_the_others_count(
    captures: Captures, samplers: Samplers
) -> None:
    del samplers
    cluster = captures.cluster
    for node in COLO_A:
        send(cluster, node, 6, f"sampled-{node}")
    time.sleep(0.5)  # the samplers' kernel rings hand over blocks within their timeout
    os.kill(_sampler_pid(cluster, "kpcap-node-2"), signal.SIGKILL)
    spec = {
        "type": "simple",
        "timeLimit": 60,
        "packetLimit": 1000,
        "colo": "colo-a",
        "filter": {"protocol": 17, "destinationPort": PORT},
    }
    captures.create(capture_body("sampled", **spec))
    final = captures.wait_status("sampled", {"success", "failed"}, timeout=30)
    print(f"\nsimple capture with a killed sampler: {json.dumps(final.get('nodes'))}")
    assert final["status"] == "success", final
    assert final["nodesSummary"] == "1/2"
    assert final["nodes"]["kpcap-node-1"]["packets"] == 6
    assert final["nodes"]["kpcap-node-2"]["phase"] == "failed"
    assert final["packetsCaptured"] == 6
    assert "kpcap-node-2" in next(c["message"] for c in final["conditions"] if c["type"] == "Complete")


def test_a_node_lost_mid_capture_is_named_failed_the_other_succeeds(captures: Captures) -> None:
    cluster = captures.cluster
    bucket = new_bucket(cluster)
    capture = captures.create(
        capture_body("node-lost", **full(cluster, bucket, timeLimit=BOTH_RUNNING_SECONDS))
    )
    wait_reports(captures, "node-lost", {"running"}, COLO_A, timeout=60)
    send(cluster, "kpcap-node-1", 4, "node-lost")
    faults.kill_node(cluster, "kpcap-node-2")
    try:
        final = captures.wait_status("node-lost", {"success", "failed"}, timeout=60)
    finally:
        faults.restart_kubelet(cluster, "kpcap-node-2")
    assert final["status"] == "failed", final
    assert "no report from kpcap-node-2" in final["errorMessage"]
    assert final["nodes"]["kpcap-node-1"]["phase"] == "done"
    assert final["nodes"]["kpcap-node-2"]["phase"] == "running"  # its last report, then silence
    [uri] = final["files"]
    assert uri.endswith("/kpcap-node-1.pcap")
    assert object_payloads(cluster, uri) == [b"node-lost"] * 4
    assert next(c for c in final["conditions"] if c["type"] == "Failed")["reason"] == "NodesSilent"
    wait_for(lambda: not captures.daemonsets(capture), timeout=30, what="the DaemonSet to be deleted")


def _quota_in_force(cluster: LocalCluster) -> bool:
    shown = cluster.kubectl("get", "resourcequota", "no-more-pods", "-n", OPERATOR_NAMESPACE, "-o", "json")
    return "pods" in ((json.loads(shown.stdout).get("status") or {}).get("hard") or {})


def test_capture_pods_refused_by_admission_fail_the_capture_with_the_refusal(captures: Captures) -> None:
    """A real refusal of this v1.20 apiserver: a ResourceQuota allowing no more pods in the operator's
    namespace (PodSecurity's own wording is covered by test_pod_refusals: 1.20 has no PodSecurity)."""
    cluster = captures.cluster
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-more-pods", "namespace": OPERATOR_NAMESPACE},
        "spec": {"hard": {"pods": "0"}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(quota))
    try:
        wait_for(lambda: _quota_in_force(cluster), timeout=30, what="the quota to be in force")
        bucket = new_bucket(cluster)
        started = time.monotonic()
        capture = captures.create(capture_body("refused", **full(cluster, bucket, timeLimit=30)))
        final = captures.wait_status("refused", {"success", "failed"}, timeout=30)
        seconds = time.monotonic() - started
    finally:
        cluster.kubectl(
            "delete", "resourcequota", "no-more-pods", "-n", OPERATOR_NAMESPACE, "--ignore-not-found"
        )
    print(f"\nrefused pods: failed {seconds:.1f} s after create: {final['errorMessage']}")
    assert final["status"] == "failed", final
    message = final["errorMessage"]
    assert message.startswith(f"the apiserver refused the capture's pods in namespace {OPERATOR_NAMESPACE}")
    assert "no pod on kpcap-node-1, kpcap-node-2" in message
    assert "exceeded quota: no-more-pods" in message
    assert next(c for c in final["conditions"] if c["type"] == "Failed")["reason"] == "PodsRefused"
    assert seconds < 30, "failed at once, not after timeLimit + grace"
    wait_for(lambda: not captures.daemonsets(capture), timeout=30, what="the DaemonSet to be deleted")
