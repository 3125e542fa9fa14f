"""Two operator replicas from the chart: one leader reconciles, both serve the webhook.

- 20 full captures created at once in one namespace (through both webhook replicas): exactly one
  is admitted, the others refused (by the webhook or, raced past it, by the leader).
- The leader's process SIGKILLed mid-capture: the standby takes the Lease over within 15 s, the
  capture completes with exactly the packets sent, and there is never more than one DaemonSet.

The ten-in-a-row loop is benchmarks/failover.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kpcap.kubeapi import GROUP, PLURAL, VERSION
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import Installation, install
from tests.support.captures import Captures, capture_body, full_spec
from tests.support.ha import capture_daemonsets, lease_holder, run_failover, serving_replicas, wait_new_holder
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RELEASE = "kpcap-ha"
NAMESPACE = "kpcap-ha"
FAILOVER_LIMIT_SECONDS = 15.0
HANDOVER_LIMIT_SECONDS = 8.0  # below the 10 s lease: the Lease was released, not waited out


@pytest.fixture(scope="module")
def ha(local_cluster: LocalCluster) -> Iterator[Installation]:
    installation = install(
        local_cluster,
        release=RELEASE,
        namespace=NAMESPACE,
        values={
            "operator": {"replicas": 2, "reportGraceSeconds": 10},
            "sampler": {"enabled": False},  # full captures only: no sampler load on the nodes
        },
        timeout=180,
    )
    try:
        wait_for(lambda: serving_replicas(installation, count=2), timeout=120, what="both replicas serving")
        wait_for(lambda: lease_holder(installation), timeout=30, what="a leader")
        yield installation
    finally:
        installation.uninstall()


def _create(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> str:
    """Create through the webhook; 'created' or the refusal's status code."""
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as err:
        return f"refused {err.status}"
    return "created"


def _decided(captures: Captures, name: str) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        current = captures.status(name)
        return current if current.get("status") else None

    return wait_for(status, timeout=90, what=f"{name} decided")


def test_twenty_full_captures_at_once_admit_exactly_one(ha: Installation, namespace: str) -> None:
    cluster = ha.cluster
    spec = full_spec(timeLimit=5, destinationConf="s3://kpcap-ha-race/c?region=us-east-1")
    bodies = [capture_body(f"race-{i:02d}", **spec) for i in range(20)]
    clients = [client.CustomObjectsApi(cluster.api_client()) for _ in bodies]  # ready before the start
    start = threading.Barrier(len(bodies))

    def create(index: int) -> str:
        start.wait()
        return _create(clients[index], namespace, bodies[index])

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        outcomes = list(pool.map(create, range(len(bodies))))
    created = [b["metadata"]["name"] for b, o in zip(bodies, outcomes, strict=True) if o == "created"]
    assert created, outcomes
    assert all(o in {"created", "refused 429"} for o in outcomes), outcomes
    captures = Captures(cluster, namespace)
    statuses = {name: _decided(captures, name) for name in created}
    admitted = [n for n, s in statuses.items() if s["status"] != "failed"]
    print(
        f"20 at once: {len(created)} past the webhook, {outcomes.count('refused 429')} refused by it;"
        f" admitted {admitted}"
    )
    assert len(admitted) == 1, statuses
    for name, status in statuses.items():
        if name not in admitted:
            assert any(
                c["type"] == "Failed"
                and c["status"] == "True"
                and "only one pending or running" in c["message"]
                for c in status.get("conditions") or []
            ), status
    served = {
        pod["metadata"]["name"]: cluster.pod_logs(namespace=ha.namespace, pod=pod["metadata"]["name"]).count(
            "POST /validate"
        )
        for pod in ha.operator_pods()
    }
    print(f"webhook requests answered per replica: {served}")
    assert len(served) == 2, served
    assert all(served.values()), "both replicas' webhooks answered (the one certificate)"
    (winner,) = admitted
    assert len(capture_daemonsets(ha, captures.get(winner))) == 1
    cluster.kubectl("delete", "pcaps", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False)


def test_the_leader_killed_mid_capture_fails_over_and_the_capture_completes(
    ha: Installation, namespace: str
) -> None:
    run = run_failover(ha, namespace=namespace, name="failover")
    print(run)
    assert run.failover_seconds < FAILOVER_LIMIT_SECONDS, run
    assert run.result == "success", run
    assert run.packets == {"kpcap-node-1": 25, "kpcap-node-2": 25}, "exactly the matching packets"
    assert run.most_daemonsets == 1, "never two DaemonSets"


def test_a_leader_stopped_gracefully_hands_the_lease_over_at_once(ha: Installation) -> None:
    """A rollout or a drain (SIGTERM): the leader releases the Lease, a standby leads within a
    renewal or two instead of waiting out the 10 s lease."""
    old = wait_for(lambda: lease_holder(ha), timeout=30, what="a leader")
    deleted_at = time.monotonic()
    ha.cluster.kubectl("delete", "pod", "-n", ha.namespace, old.pod, "--wait=false")
    new, seconds = wait_new_holder(ha, old=old, since=deleted_at)
    print(f"graceful handover: {old.pod} -> {new.pod} in {seconds:.1f}s")
    assert new.pod != old.pod
    assert seconds < HANDOVER_LIMIT_SECONDS
    wait_for(lambda: serving_replicas(ha, count=2), timeout=120, what="the replacement replica serving")
