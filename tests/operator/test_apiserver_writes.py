"""What the operator writes to the apiserver during a full capture, counted from the audit log.

A full capture of 30 s with real agents (the kpcap-agent image, to the local S3 server): the operator
must create its DaemonSet once, never by a create the apiserver refuses (409: observe before acting),
and the writes it made are printed by verb and resource. The operator runs with its own
ServiceAccount's token (bound to cluster-admin here; the chart's narrower RBAC is tested with the
chart) so its requests are told apart from the test's own (admin) ones.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.controlplane import write_kubeconfig
from kpcap_localcluster.pki import Identity
from kpcap_operator.manifests import progress_interval
from tests.support.audit import AuditLog, count_requests, format_counts
from tests.support.captures import Captures, capture_body
from tests.support.kpcap_install import AGENT_SA, CREDENTIALS_SECRET, OPERATOR_NAMESPACE, OPERATOR_SA
from tests.support.operator import RunningOperator, operator_env, run_operator
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
AGENT_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{AGENT_SA}"
ADMIN_BINDING = "kpcap-operator-audited"


def _operator_kubeconfig(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kubeconfig with a token of the operator's ServiceAccount (its own apiserver user)."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": ADMIN_BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}],
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(binding))
    token = (
        client.CoreV1Api(cluster.api_client())
        .create_namespaced_service_account_token(
            OPERATOR_SA,
            OPERATOR_NAMESPACE,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
        .status.token
    )
    path = tmp_path_factory.mktemp("operator-identity") / "kubeconfig"
    write_kubeconfig(
        path=path,
        server=cluster.server,
        ca_pem=cluster.ca_cert.read_bytes(),
        identity=Identity(user=OPERATOR_SA, groups=(), token=token),
    )
    return str(path)


@pytest.fixture(scope="module")
def operator(
    storage_credentials: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    cluster = storage_credentials
    try:
        env = operator_env(
            cluster=cluster,
            tmp_path_factory=tmp_path_factory,
            webhook=False,
            agent_image=AGENT_IMAGE,
            extra_env={
                "KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
                # Not what is measured: room for agents slowed by a loaded machine to upload and report.
                "KPCAP_REPORT_GRACE_SECONDS": "30",
                "KUBECONFIG": _operator_kubeconfig(cluster, tmp_path_factory),
            },
        )
        yield from run_operator(cluster=cluster, env=env, tmp_path_factory=tmp_path_factory, webhook=False)
    finally:
        cluster.kubectl("delete", "clusterrolebinding", ADMIN_BINDING, "--ignore-not-found")


@pytest.fixture
def captures(operator: RunningOperator, namespace: str) -> Captures:
    return Captures(operator.cluster, namespace)


def test_a_30s_full_capture_creates_its_daemonset_once_and_no_write_is_refused_as_a_conflict(
    captures: Captures, operator: RunningOperator
) -> None:
    cluster = operator.cluster
    assert cluster.s3 is not None
    bucket = f"kpcap-{secrets.token_hex(4)}"
    cluster.s3.s3_client().create_bucket(Bucket=bucket)
    audit = AuditLog(cluster.audit_log)
    marker = audit.marker()

    spec = {
        "type": "full",
        "timeLimit": 30,
        "packetLimit": 10000,
        "colo": "colo-a",
        "destinationConf": f"s3://{bucket}/captures?region=us-east-1&endpoint={cluster.s3.endpoint}",
        "filter": {"protocol": 17, "destinationPort": 7777},
    }
    capture = captures.create(capture_body("audited", **spec))
    wait_for(
        lambda: len(captures.status("audited").get("nodes") or {}) == 2,
        timeout=60,
        what="both agents to report running",
    )
    for dst in ("kpcap-node-1", "kpcap-node-2"):
        cluster.send_udp(src="kpcap-node-3", dst=dst, port=7777, count=10, payload="audited")
    final = captures.wait_status("audited", {"success", "failed"}, timeout=120)
    if final["status"] != "success":
        print(cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod="kpcap-capture-*"))
    wait_for(lambda: not captures.daemonsets(capture), timeout=30, what="the DaemonSet to be deleted")

    everyone = audit.entries(since=marker)
    writes = [entry for entry in everyone if entry.user == OPERATOR_USER]
    assert writes, f"no write by {OPERATOR_USER}; all writes:\n{format_counts(count_requests(everyone))}"
    print(f"\nthe operator's apiserver writes during one {spec['timeLimit']} s full capture:")
    print(format_counts(count_requests(writes)))
    daemonset_creates = [e for e in writes if e.resource == "daemonsets" and e.verb == "create"]
    refused = [e for e in daemonset_creates if e.code == 409]
    assert final["status"] == "success", final
    assert len(refused) == 0, "DaemonSet creates answered 409 (create only what is missing)"
    assert len(daemonset_creates) <= 1, f"{len(daemonset_creates)} DaemonSet creates for one capture"
    # The agents write only their own PacketCaptureReports (issue 17): a create, the uploading and
    # final reports, and a progress report per interval; nothing on the capture itself.
    by_agents = [e for e in everyone if e.user == AGENT_USER]
    print(f"the agents' apiserver writes ({len(by_agents)}, 2 nodes):")
    print(format_counts(count_requests(by_agents)))
    assert {e.resource for e in by_agents} == {"packetcapturereports"}, format_counts(
        count_requests(by_agents)
    )
    assert len([e for e in by_agents if e.verb == "create"]) == 2, "one report created per node"
    per_node = len(by_agents) / 2
    assert 3 <= per_node <= 3 + spec["timeLimit"] / progress_interval(2) + 1, per_node
