"""Metrics end to end: the chart installed on the local cluster, a full capture with real traffic,
and the operator's, a capture agent's and a sampler's /metrics scraped twice each: the counters move
between the scrapes, and every scrape passes ``promtool check metrics``.

One chart installation for the module (the cluster is the session's); about a minute warm.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import Installation, install
from kpcap_operator.manifests import ANNOTATION_METRICS_PORT
from tests.support.metrics import Samples, promtool_check, samples, scrape, value
from tests.support.waiting import wait_for

RELEASE = "kpcap-metrics"
NAMESPACE = "kpcap-system"
OPERATOR_METRICS_PORT = 8080  # the chart's default metrics.port
SAMPLER_METRICS_PORT = 9445  # the chart's default metrics.samplerPort
PORT = 7711


@pytest.fixture(scope="module")
def installation(local_cluster: LocalCluster) -> Iterator[Installation]:
    installed = install(
        local_cluster,
        release=RELEASE,
        namespace=NAMESPACE,
        values={"operator": {"reportGraceSeconds": 10}, "sampler": {"samplingRate": 1}},
    )
    try:
        yield installed
    finally:
        installed.uninstall()
        wait_for(lambda: not installed.operator_pods(), timeout=60, what="the operator pod to go")


def _json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _pods(cluster: LocalCluster, selector: str) -> list[dict[str, Any]]:
    items = _json(cluster, "get", "pods", "-n", NAMESPACE, "-l", selector)["items"]
    return [pod for pod in items if (pod.get("status") or {}).get("podIP")]


def _scraped(url: str) -> Samples:
    """One scrape, checked by promtool."""
    text = scrape(url)
    promtool_check(text)
    return samples(text)


def _answers(url: str) -> Samples | None:
    try:
        return _scraped(url)
    except OSError:
        return None


def _agent_with(url: str, *, packets: int) -> Samples | None:
    """The agent's scrape once it counts at least ``packets``."""
    found = _answers(url)
    return found if found is not None and value(found, "kpcap_agent_packets_total") >= packets else None


@pytest.mark.e2e
def test_operator_agent_and_sampler_counters_move_during_a_capture(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    assert cluster.s3 is not None
    bucket = f"kpcap-metrics-{secrets.token_hex(4)}"
    cluster.s3.s3_client().create_bucket(Bucket=bucket)

    (operator,) = installation.operator_pods()
    operator_url = f"http://{operator['status']['podIP']}:{OPERATOR_METRICS_PORT}/metrics"
    samplers = _pods(cluster, f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=sampler")
    sampler_ip = next(p["status"]["podIP"] for p in samplers if p["spec"]["nodeName"] == "kpcap-node-1")
    sampler_url = f"http://{sampler_ip}:{SAMPLER_METRICS_PORT}/metrics"
    operator_before = wait_for(lambda: _answers(operator_url), timeout=30, what="the operator's metrics")
    sampler_before = wait_for(lambda: _answers(sampler_url), timeout=30, what="the sampler's metrics")

    spec = {
        "type": "full",
        "colo": "colo-a",
        "timeLimit": 60,
        "packetLimit": 1000,
        "filter": {"protocol": 17, "destinationPort": PORT},
        "destinationConf": f"s3://{bucket}/m?region=us-east-1&endpoint={cluster.s3.endpoint}",
    }
    capture = {"apiVersion": "kpcap.io/v1alpha1", "kind": "PacketCapture", "metadata": {"name": "metered"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps({**capture, "spec": spec}))
    # A second full capture in the namespace while the first runs: the webhook refuses it (429).
    second = {**capture, "metadata": {"name": "refused"}, "spec": spec}
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(second), check=False)
    assert refused.returncode != 0
    uid = _json(cluster, "get", "pcap", "-n", namespace, "metered")["metadata"]["uid"]
    cid = uid.replace("-", "")

    def agent_url() -> str | None:
        for pod in _pods(cluster, f"kpcap.io/capture-id={cid}"):
            port = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_METRICS_PORT)
            if pod["spec"]["nodeName"] == "kpcap-node-1" and port:
                return f"http://{pod['status']['podIP']}:{port}/metrics"
        return None

    url = wait_for(agent_url, timeout=60, what="the capture agent pod on kpcap-node-1 with its metrics port")
    wait_for(
        lambda: (
            (_json(cluster, "get", "pcap", "-n", namespace, "metered").get("status") or {})
            .get("nodeCounts", {})
            .get("running")
        ),
        timeout=60,
        what="the agents running",
    )
    marker = f"m-{secrets.token_hex(4)}"
    cluster.send_udp(src="kpcap-node-3", dst="kpcap-node-1", port=PORT, count=20, payload=marker)
    agent_first = wait_for(
        lambda: _agent_with(url, packets=20),
        timeout=30,
        what="the agent's first 20 packets in its metrics",
    )
    cluster.send_udp(src="kpcap-node-3", dst="kpcap-node-1", port=PORT, count=30, payload=marker)
    agent_second = wait_for(
        lambda: _agent_with(url, packets=50),
        timeout=30,
        what="the agent's next 30 packets in its metrics",
    )
    for name in ("kpcap_agent_packets_total", "kpcap_agent_bytes_total"):
        assert value(agent_second, name) > value(agent_first, name), name
    assert value(agent_second, "kpcap_agent_kernel_drops_total") >= 0

    started = time.monotonic()
    cluster.kubectl(
        "patch", "pcap", "-n", namespace, "metered", "--type", "merge", "-p", '{"spec":{"stop":true}}'
    )
    wait_for(
        lambda: (
            (_json(cluster, "get", "pcap", "-n", namespace, "metered").get("status") or {}).get("status")
            in {"success", "failed"}
        ),
        timeout=60,
        what="the stopped capture to finish",
    )
    print(f"capture stopped -> finished in {time.monotonic() - started:.1f}s")
    operator_after = _scraped(operator_url)
    sampler_after = _scraped(sampler_url)

    def moved(before: Samples, after: Samples, name: str, labels: dict[str, str] | None = None) -> float:
        def get(found: Samples) -> float:
            try:
                return value(found, name, labels)
            except KeyError:
                return 0.0

        return get(after) - get(before)

    success = {"type": "full", "status": "success"}
    assert moved(operator_before, operator_after, "kpcap_captures_total", success) == 1
    assert moved(operator_before, operator_after, "kpcap_capture_duration_seconds_count", success) == 1
    refusal = {"source": "webhook", "reason": "FullCaptureAlreadyActive"}
    assert moved(operator_before, operator_after, "kpcap_admission_refusals_total", refusal) == 1
    assert moved(operator_before, operator_after, "kpcap_reported_uploads_total", {"result": "done"}) == 2
    # Every packet is sampled (samplingRate 1): the sampler saw the 50 datagrams arrive, and more.
    assert moved(sampler_before, sampler_after, "kpcap_sampler_frames_total") >= 50
    assert value(sampler_after, "kpcap_sampler_held_frames") > 0
