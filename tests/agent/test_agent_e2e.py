"""The capture agent in DaemonSet pods on the simulated cluster: real traffic, real RBAC, real buckets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kpcap.pcap import GLOBAL_HEADER_SIZE, PcapRecords, parse_global_header
from kpcap_localcluster.cluster import LocalCluster
from tests.support.captures import Captures, capture_body
from tests.support.kpcap_install import AGENT_SA, CREDENTIALS_SECRET, OPERATOR_NAMESPACE
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"


_agent_operator = operator_fixture(
    webhook=False, agent_image=AGENT_IMAGE, extra_env={"KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET}
)


@pytest.fixture(scope="module")
def operator(
    storage_credentials: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOperator]:
    yield from _agent_operator(storage_credentials, tmp_path_factory)


@pytest.fixture
def captures(operator: RunningOperator, namespace: str) -> Captures:
    return Captures(operator.cluster, namespace)


def _s3(cluster: LocalCluster) -> Any:
    assert cluster.s3 is not None
    return cluster.s3.s3_client()


def _run_capture(
    captures: Captures,
    cluster: LocalCluster,
    *,
    name: str,
    destination: str,
    marker: str,
    **extra: Any,
) -> dict[str, Any]:
    spec = {
        "type": "full",
        "timeLimit": 8,
        "packetLimit": 1000,
        "colo": "colo-a",
        "destinationConf": destination,
        "filter": {"protocol": 17, "destinationPort": 7777},
        **extra,
    }
    captures.create(capture_body(name, **spec))
    try:
        wait_for(
            lambda: len(captures.status(name).get("nodes") or {}) == 2,
            timeout=60,
            what="both agents to report running",
        )
    except BaseException:
        print(cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod="kpcap-capture-*"))
        raise
    for dst in ("kpcap-node-1", "kpcap-node-2"):
        cluster.send_udp(src="kpcap-node-3", dst=dst, port=7777, count=25, payload=marker)
        cluster.send_udp(src="kpcap-node-3", dst=dst, port=8888, count=25, payload=marker)
    final = captures.wait_status(name, {"success", "failed"}, timeout=60)
    if final["status"] != "success":
        print(cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod="kpcap-capture-*"))
    assert final["status"] == "success", final
    return final


def test_full_capture_to_s3_holds_exactly_the_matching_packets(
    captures: Captures, operator: RunningOperator
) -> None:
    cluster = operator.cluster
    bucket = f"kpcap-{secrets.token_hex(4)}"
    _s3(cluster).create_bucket(Bucket=bucket)
    marker = f"m-{secrets.token_hex(6)}"
    final = _run_capture(
        captures,
        cluster,
        name="to-s3",
        destination=f"s3://{bucket}/captures?region=us-east-1"
        f"&endpoint={cluster.s3.endpoint if cluster.s3 else ''}",
        marker=marker,
    )
    assert final["packetsCaptured"] == 50
    capture = captures.get("to-s3")
    cid = capture["metadata"]["uid"].replace("-", "")
    for node in ("kpcap-node-1", "kpcap-node-2"):
        key = f"captures/pcap_{cid}/{node}.pcap"
        assert f"s3://{bucket}/{key}" in final["files"]
        body = _s3(cluster).get_object(Bucket=bucket, Key=key)["Body"].read()
        assert udp_payloads(body) == [(7777, marker.encode())] * 25, "only the matching packets, in order"
        assert final["nodes"][node]["packets"] == 25
    wait_for(lambda: not captures.daemonsets(capture), timeout=15, what="the DaemonSet to be deleted")


def test_snap_length_cuts_the_stored_packets(captures: Captures, operator: RunningOperator) -> None:
    # spec.snapLength 64 through the operator's DaemonSet to the agents' kernel filter: every stored
    # record holds the first 64 bytes, with the frame's whole length as its original length.
    cluster = operator.cluster
    assert cluster.s3 is not None
    bucket = f"kpcap-{secrets.token_hex(4)}"
    _s3(cluster).create_bucket(Bucket=bucket)
    payload = f"s-{secrets.token_hex(6)}".ljust(1000, "x")
    final = _run_capture(
        captures,
        cluster,
        name="snapped",
        destination=f"s3://{bucket}/c?region=us-east-1&endpoint={cluster.s3.endpoint}",
        marker=payload,
        snapLength=64,
    )
    cid = captures.get("snapped")["metadata"]["uid"].replace("-", "")
    wire_length = 14 + 20 + 8 + len(payload)  # Ethernet, IPv4, UDP headers
    for node in ("kpcap-node-1", "kpcap-node-2"):
        body = _s3(cluster).get_object(Bucket=bucket, Key=f"c/pcap_{cid}/{node}.pcap")["Body"].read()
        assert parse_global_header(body[:GLOBAL_HEADER_SIZE]).snaplen == 64
        records = list(PcapRecords([body]))
        assert [(r.captured_length, r.original_length) for r in records] == [(64, wire_length)] * 25
        assert {r.data[42:] for r in records} == {payload[:22].encode()}
        assert (final["nodes"][node]["packets"], final["nodes"][node]["bytes"]) == (25, 25 * 64)


def test_full_capture_to_gcs(captures: Captures, operator: RunningOperator) -> None:
    cluster = operator.cluster
    assert cluster.gcs is not None
    bucket = f"kpcap-{secrets.token_hex(4)}"
    gcs_client = cluster.gcs.gcs_client()
    gcs_client.create_bucket(bucket)
    marker = f"g-{secrets.token_hex(6)}"
    final = _run_capture(captures, cluster, name="to-gcs", destination=f"gs://{bucket}/pcaps", marker=marker)
    cid = captures.get("to-gcs")["metadata"]["uid"].replace("-", "")
    for node in ("kpcap-node-1", "kpcap-node-2"):
        blob = gcs_client.bucket(bucket).blob(f"pcaps/pcap_{cid}/{node}.pcap")
        assert udp_payloads(blob.download_as_bytes()) == [(7777, marker.encode())] * 25
    assert final["packetsCaptured"] == 50


def test_missing_bucket_fails_the_nodes_with_a_clear_error(
    captures: Captures, operator: RunningOperator
) -> None:
    cluster = operator.cluster
    assert cluster.s3 is not None
    spec = {
        "type": "full",
        "timeLimit": 2,
        "packetLimit": 10,
        "colo": "colo-a",
        "destinationConf": f"s3://no-such-bucket-{secrets.token_hex(3)}/x?region=us-east-1"
        f"&endpoint={cluster.s3.endpoint}",
    }
    captures.create(capture_body("nobucket", **spec))
    final = captures.wait_status("nobucket", {"success", "failed"}, timeout=60)
    assert final["status"] == "failed"
    assert "no-such-bucket" in final["errorMessage"]
    assert "does not exist" in final["errorMessage"]


def test_agent_service_account_is_refused_everything_else(captures: Captures) -> None:
    api = captures.agent_api.api_client

    def status_of(method: str, path: str, body: Any = None) -> int:
        try:
            api.call_api(
                path,
                method,
                body=body,
                auth_settings=["BearerToken"],
                response_type="object",
                header_params={"Content-Type": "application/json"},
            )
        except client.ApiException as err:
            return int(err.status)
        return 200

    ns = captures.namespace
    base = f"/apis/kpcap.io/v1alpha1/namespaces/{ns}/packetcaptures"
    assert status_of("GET", base) == 200
    assert status_of("POST", base, capture_body("sneaky", type="simple", timeLimit=1, packetLimit=1)) == 403
    assert status_of("GET", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets") == 403
    assert status_of("GET", f"/api/v1/namespaces/{ns}/pods") == 403
    assert status_of("GET", "/apis/apps/v1/daemonsets") == 403
    assert status_of("DELETE", f"{base}/anything") == 403
    assert AGENT_SA == "kpcap-agent"


def test_sigterm_mid_capture_uploads_what_was_captured(captures: Captures, operator: RunningOperator) -> None:
    """A capture pod deleted mid-capture gets SIGTERM, uploads and reports; its replacement does not redo it."""
    cluster = operator.cluster
    assert cluster.s3 is not None
    bucket = f"kpcap-{secrets.token_hex(4)}"
    _s3(cluster).create_bucket(Bucket=bucket)
    marker = f"t-{secrets.token_hex(6)}"
    spec = {
        "type": "full",
        "timeLimit": 120,
        "packetLimit": 1000,
        "colo": "colo-a",
        "destinationConf": f"s3://{bucket}/c?region=us-east-1&endpoint={cluster.s3.endpoint}",
        "filter": {"protocol": 17, "destinationPort": 7777},
    }
    capture = captures.create(capture_body("sigterm", **spec))
    wait_for(
        lambda: len(captures.status("sigterm").get("nodes") or {}) == 2, timeout=60, what="agents running"
    )
    cluster.send_udp(src="kpcap-node-3", dst="kpcap-node-1", port=7777, count=10, payload=marker)
    wait_for(
        lambda: captures.status("sigterm")["nodes"]["kpcap-node-1"].get("packets") == 10,
        timeout=20,
        what="node-1's progress report of 10 packets",
    )
    core = client.CoreV1Api(cluster.api_client())
    cid = capture["metadata"]["uid"].replace("-", "")
    [pod] = [
        p
        for p in core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector=f"kpcap.io/capture-id={cid}"
        ).items
        if p.spec.node_name == "kpcap-node-1"
    ]
    core.delete_namespaced_pod(pod.metadata.name, OPERATOR_NAMESPACE)
    entry = wait_for(
        lambda: (e := captures.status("sigterm")["nodes"]["kpcap-node-1"]).get("phase") == "done" and e,
        timeout=60,
        what="node-1 to upload after SIGTERM",
    )
    assert entry["packets"] == 10
    key = f"c/pcap_{cid}/kpcap-node-1.pcap"
    assert (
        udp_payloads(_s3(cluster).get_object(Bucket=bucket, Key=key)["Body"].read())
        == [(7777, marker.encode())] * 10
    )
    captures.custom.patch_namespaced_custom_object(
        "kpcap.io", "v1alpha1", captures.namespace, "packetcaptures", "sigterm", {"spec": {"stop": True}}
    )
    final = captures.wait_status("sigterm", {"success", "failed"}, timeout=60)
    assert final["status"] == "success", final
    assert final["nodes"]["kpcap-node-1"]["packets"] == 10, "the replacement pod did not capture again"
