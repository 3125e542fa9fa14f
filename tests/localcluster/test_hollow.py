"""Light mode: 50 hollow nodes next to 2 real ones, Ready, running DaemonSets, taking part in a capture."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster, default_nodes
from kpcap_localcluster.light_nodes import light_node_names
from tests.support.captures import Captures, capture_body
from tests.support.kpcap_install import (
    CREDENTIALS_SECRET,
    apply_storage_credentials,
    install_kpcap_objects,
)
from tests.support.operator import RunningOperator, operator_env, run_operator
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

LIGHT = 50
TESTBOX = "registry.example/kpcap/kpcap-testbox:test"
AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = time.monotonic()
    with LocalCluster.start(nodes=default_nodes(2), light_nodes=LIGHT, timeout=60) as running:
        print(f"2 real + {LIGHT} light nodes Ready in {time.monotonic() - started:.1f}s")
        yield running
    assert not any(running.leftovers().values()), running.leftovers()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    core = client.CoreV1Api(cluster.api_client())
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})

    def default_sa_has_token() -> bool:
        try:
            return bool(core.read_namespaced_service_account("default", name).secrets)
        except client.ApiException as err:
            if err.status == 404:
                return False
            raise

    wait_for(default_sa_has_token, timeout=30, what="the default ServiceAccount's token")
    yield name
    core.delete_namespace(name)


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_light_nodes_are_ready_with_the_labels_of_real_ones(cluster: LocalCluster) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(cluster.api_client()).list_node().items}
    assert set(nodes) == {"kpcap-node-1", "kpcap-node-2", *light_node_names(LIGHT)}
    assert all(_ready(n) for n in nodes.values())
    light = nodes["kpcap-light-7"].metadata.labels
    assert light["kubernetes.io/hostname"] == "kpcap-light-7"
    assert light["topology.kubernetes.io/zone"] == "colo-b"


def test_a_daemonset_runs_on_every_node_and_its_pods_go_with_it(
    cluster: LocalCluster, namespace: str
) -> None:
    apps = client.AppsV1Api(cluster.api_client())
    core = client.CoreV1Api(cluster.api_client())
    labels = {"app": "everywhere"}
    apps.create_namespaced_daemon_set(
        namespace,
        {
            "metadata": {"name": "everywhere"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "hostNetwork": True,
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{"name": "box", "image": TESTBOX, "args": ["sleep", "3600"]}],
                    },
                },
            },
        },
    )

    def running_nodes() -> set[str] | None:
        pods = core.list_namespaced_pod(namespace).items
        ready = {p.spec.node_name for p in pods if p.status.phase == "Running"}
        return ready if len(ready) == LIGHT + 2 else None

    wait_for(running_nodes, timeout=120, what="a Running pod on each of the 52 nodes", interval=1)
    apps.delete_namespaced_daemon_set("everywhere", namespace)
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=90,
        what="the DaemonSet's pods to be removed",
        interval=1,
    )


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    install_kpcap_objects(cluster)
    apply_storage_credentials(cluster)
    env = operator_env(
        cluster=cluster,
        tmp_path_factory=tmp_path_factory,
        webhook=False,
        agent_image=AGENT_IMAGE,
        # 50 pods to create, bind and start on a shared 2-core machine: 5 s of grace is too tight.
        extra_env={"KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET, "KPCAP_REPORT_GRACE_SECONDS": "30"},
    )
    yield from run_operator(cluster=cluster, env=env, tmp_path_factory=tmp_path_factory, webhook=False)


def test_a_full_capture_on_the_light_nodes_stores_a_file_for_each(
    operator: RunningOperator, namespace: str
) -> None:
    cluster = operator.cluster
    assert cluster.s3 is not None
    s3 = cluster.s3.s3_client()
    bucket = f"kpcap-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    captures = Captures(cluster, namespace)
    spec = {
        "type": "full",
        "timeLimit": 10,
        "packetLimit": 3,
        "colo": "colo-b",
        "destinationConf": f"s3://{bucket}/captures?region=us-east-1&endpoint={cluster.s3.endpoint}",
    }
    captures.create(capture_body("light", **spec))
    final = captures.wait_status("light", {"success", "failed"}, timeout=120)
    if final["status"] != "success" and cluster.hollow is not None:
        print(cluster.hollow.log_tail(lines=60))
    assert final["status"] == "success", final
    cid = captures.get("light")["metadata"]["uid"].replace("-", "")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"captures/pcap_{cid}/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys == sorted(f"captures/pcap_{cid}/{n}.pcap" for n in light_node_names(LIGHT))
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    assert len(udp_payloads(body)) == 3, "at most packetLimit synthetic records"
    capture = captures.get("light")
    wait_for(lambda: not captures.daemonsets(capture), timeout=30, what="the DaemonSet to be deleted")
