"""Refused capture pods end the capture failed, naming the refusal (PodSecurity by name).

The classification is pure logic: the local apiserver (v1.20) has no PodSecurity admission, so its
wording is taken from the apiserver's message format (the e2e fault tests refuse pods for real with a
ResourceQuota). The reconciler is driven through the in-memory Cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kpcap.model import capture_id
from kpcap_operator import pod_refusals
from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.reconcile import reconcile
from kpcap_operator.result import Result
from kpcap_operator.settings import OperatorSettings
from tests.support.captures import full_spec
from tests.support.cluster_in_memory import InMemoryCluster, capture, node

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="kpcap-agent:test", report_grace_seconds=5)
POD_SECURITY = (
    'Error creating: pods "kpcap-capture-0f3a-x7k2p" is forbidden: violates PodSecurity "baseline:latest": '
    "host namespaces (hostNetwork=true), non-default capabilities "
    '(container "agent" must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)'
)
QUOTA = (
    'Error creating: pods "kpcap-capture-0f3a-9qq8d" is forbidden: exceeded quota: no-pods, '
    "requested: pods=1, used: pods=3, limited: pods=0"
)
PASSING = (
    "Error creating: Timeout: request did not complete within requested timeout context deadline exceeded"
)


def test_only_admission_refusals_count_each_once_without_the_controllers_prefix() -> None:
    assert pod_refusals.admission_refusals([PASSING, QUOTA, QUOTA, POD_SECURITY]) == [
        QUOTA.removeprefix("Error creating: "),
        POD_SECURITY.removeprefix("Error creating: "),
    ]
    assert pod_refusals.admission_refusals([PASSING]) == []


def test_podsecurity_is_named_when_the_message_is_podsecuritys() -> None:
    assert pod_refusals.refusal_reason(POD_SECURITY) == "PodSecurity"
    assert pod_refusals.refusal_reason(QUOTA) == "PodsRefused"
    message = pod_refusals.refusal_message(refusal=POD_SECURITY, namespace="kpcap", unreported=["n1", "n2"])
    assert message.startswith("PodSecurity admission of namespace kpcap refused the capture's pods")
    assert "pod-security.kubernetes.io/enforce=privileged" in message
    assert "no pod on n1, n2" in message
    assert message.endswith(POD_SECURITY)
    quota = pod_refusals.refusal_message(refusal=QUOTA, namespace="kpcap", unreported=["n1"])
    assert quota.startswith("the apiserver refused the capture's pods in namespace kpcap; no pod on n1")
    assert "PodSecurity" not in quota


def _pass(cluster: InMemoryCluster, body: dict[str, Any], now: datetime) -> Result:
    result = reconcile(
        body=cluster.get(body),
        settings=SETTINGS,
        cluster=cluster,
        ledger=AdmissionLedger(),
        samplers=None,  # type: ignore[arg-type]  # full captures ask no sampler
        sample_store=None,  # type: ignore[arg-type]
        now_fn=lambda: now,
    )
    if result.status:
        cluster.patch_status(body, result.status)
    return result


def test_refused_pods_fail_the_capture_at_once_naming_podsecurity() -> None:
    cluster = InMemoryCluster(
        nodes=[node("kpcap-node-1", zone="colo-a"), node("kpcap-node-2", zone="colo-a")]
    )
    body = cluster.add(capture("refused", full_spec(), created=T0))
    _pass(cluster, body, T0)
    [daemonset] = cluster.daemonsets_of(body)
    assert _pass(cluster, body, T0 + timedelta(seconds=1)).finished is None  # no refusal yet: it waits
    cluster.refusals[daemonset] = [PASSING, POD_SECURITY]
    result = _pass(cluster, body, T0 + timedelta(seconds=2))
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert "PodSecurity admission of namespace kpcap-system" in status["errorMessage"]
    assert "no pod on kpcap-node-1, kpcap-node-2" in status["errorMessage"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["status"] == "True"
    assert conditions["Failed"]["reason"] == "PodSecurity"
    assert [e.reason for e in result.events] == ["PodSecurity"]
    assert cluster.daemonsets_of(body) == []  # removed: the controller would retry forever


def test_refusals_are_not_read_once_a_node_has_reported() -> None:
    cluster = InMemoryCluster(
        nodes=[node("kpcap-node-1", zone="colo-a"), node("kpcap-node-2", zone="colo-a")]
    )
    body = cluster.add(capture("running", full_spec(), created=T0))
    _pass(cluster, body, T0)
    cluster.refusals[cluster.daemonsets_of(body)[0]] = [QUOTA]  # e.g. a quota that refused one pod
    cluster.report(body, "kpcap-node-1", phase="running", packets=1)
    reads = cluster.refusal_reads
    assert _pass(cluster, body, T0 + timedelta(seconds=1)).finished is None
    assert cluster.refusal_reads == reads
    assert cluster.get(body)["status"]["status"] == "running"
    assert capture_id(body["metadata"]["uid"]) in cluster.reports
