"""The operator under test runs as a real process against the local cluster.

Node reports are written the way the capture agent writes them: a merge patch of its own entry under
``status.nodes``, with the agent ServiceAccount's token, so its RBAC is exercised too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.controlplane import free_port
from kpcap_localcluster.crd import load_crd
from kpcap_localcluster.install import Samplers, deploy_samplers
from kpcap_localcluster.install import storage_credentials as local_storage_credentials
from kpcap_localcluster.processes import ManagedProcess, spawn
from tests.conftest import wait_for

GROUP, VERSION, PLURAL = "kpcap.io", "v1alpha1", "packetcaptures"
OPERATOR_NAMESPACE = "kpcap-system"
AGENT_SA = "kpcap-agent"
OPERATOR_SA = "kpcap-operator"
STAND_IN_AGENT_IMAGE = "registry.example/kpcap/kpcap-testbox:test"

AGENT_RULES = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
]


@pytest.fixture(scope="session")
def kpcap_installed(local_cluster: LocalCluster) -> LocalCluster:
    """The CRD (without CEL: the test apiserver is 1.20), the operator namespace, the agent's RBAC."""
    local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(load_crd(strip_cel=True)))
    local_cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": AGENT_SA, "namespace": OPERATOR_NAMESPACE},
        },
        # The operator process (admin kubeconfig) asks the TokenRequest API for this account's
        # tokens to prove itself to samplers, as it does in a pod with the chart's RBAC.
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "kpcap-agent"},
            "rules": AGENT_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kpcap-agent"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kpcap-agent",
            },
            "subjects": [{"kind": "ServiceAccount", "name": AGENT_SA, "namespace": OPERATOR_NAMESPACE}],
        },
    ]
    local_cluster.kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    )
    return local_cluster


CREDENTIALS_SECRET = "kpcap-storage-credentials"

# Every sampled packet kept (rate 1) so tests can count exactly; the operator's ServiceAccount
# (OPERATOR_SA, the chart's name for release "kpcap") is the one client the samplers answer.
SAMPLER_VALUES = {"samplingRate": 1, "snapLength": 256, "retention": "1h", "byteBudget": "16Mi"}


def sampler_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "sampler-ca.crt"


@pytest.fixture(scope="module")
def samplers(kpcap_installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Samplers]:
    """The chart's sampler DaemonSet (pods on every node), for one test module, then removed."""
    deployed = deploy_samplers(kpcap_installed, namespace=OPERATOR_NAMESPACE, sampler_values=SAMPLER_VALUES)
    # Where operator processes look for it (KPCAP_SAMPLER_CA_FILE): they verify the samplers.
    sampler_ca_file(tmp_path_factory).write_bytes(deployed.ca_certificate())
    try:
        yield deployed
    finally:
        deployed.remove()


@pytest.fixture(scope="session")
def storage_credentials(kpcap_installed: LocalCluster) -> LocalCluster:
    """The Secret whose keys the operator passes to capture agents: the local S3/GCS servers' access."""
    cluster = kpcap_installed
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": OPERATOR_NAMESPACE},
        "stringData": local_storage_credentials(cluster),
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    return cluster


@dataclass
class RunningOperator:
    cluster: LocalCluster
    process: ManagedProcess
    env: dict[str, str]
    log_path: Path

    def restart(self) -> None:
        self.process.stop(grace=10)
        self.process = _start(self.cluster, self.env, self.log_path)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start(cluster: LocalCluster, env: dict[str, str], log_path: Path) -> ManagedProcess:
    proc = spawn(
        name="kpcap-operator",
        argv=[sys.executable, "-m", "kpcap_operator"],
        log_path=log_path,
        run_id=cluster.run_id,
        env=env,
    )
    wait_for(
        lambda: (
            (proc.alive() and "Initial authentication has finished" in log_path.read_text(errors="replace"))
            or not proc.alive()
        ),
        timeout=30,
        what="the operator to start",
    )
    assert proc.alive(), log_path.read_text()
    time.sleep(1.0)  # Kopf has listed the captures and started its watch
    return proc


def operator_fixture(
    *, webhook: bool, agent_image: str = STAND_IN_AGENT_IMAGE, extra_env: dict[str, str] | None = None
) -> Callable[..., Iterator[RunningOperator]]:
    def fixture(
        kpcap_installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningOperator]:
        import os

        cluster = kpcap_installed
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "KPCAP_NAMESPACE": OPERATOR_NAMESPACE,
            "KPCAP_AGENT_IMAGE": agent_image,
            "KPCAP_AGENT_SERVICE_ACCOUNT": AGENT_SA,
            "KPCAP_REPORT_GRACE_SECONDS": "5",
            "KPCAP_WEBHOOK_ENABLED": "true" if webhook else "false",
            "KPCAP_WEBHOOK_HOST": cluster.net.gateway,
            "KPCAP_WEBHOOK_PORT": "9443",
            "KPCAP_METRICS_PORT": str(free_port()),
            "KPCAP_SAMPLE_STORE": str(tmp_path_factory.mktemp("samples")),
            "KPCAP_SAMPLER_CA_FILE": str(sampler_ca_file(tmp_path_factory)),
            **(extra_env or {}),
        }
        log_path = tmp_path_factory.mktemp("operator") / "operator.log"
        running = RunningOperator(
            cluster=cluster, process=_start(cluster, env, log_path), env=env, log_path=log_path
        )
        if webhook:
            wait_for(
                lambda: "kpcap.io" in cluster.kubectl("get", "validatingwebhookconfigurations").stdout,
                timeout=30,
                what="the operator's ValidatingWebhookConfiguration",
            )
        try:
            yield running
        finally:
            running.process.stop(grace=10)
            if webhook:
                cluster.kubectl("delete", "validatingwebhookconfiguration", "kpcap.io", "--ignore-not-found")

    return fixture


def capture_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PacketCapture",
        "metadata": {"name": name},
        "spec": spec,
    }


def full_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "full",
        "timeLimit": 30,
        "packetLimit": 100,
        "colo": "colo-a",
        "destinationConf": "s3://kpcap-test/captures?region=us-east-1",
        **overrides,
    }


class Captures:
    """Create, read and report on captures in one test namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(cluster.api_client())
        self.apps = client.AppsV1Api(cluster.api_client())
        self._agent_api: client.CustomObjectsApi | None = None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_status(self, name: str, wanted: set[str], *, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("status") in wanted and s,
            timeout=timeout,
            what=f"{name} to reach {wanted}",
        )

    def daemonsets(self, capture: dict[str, Any]) -> list[Any]:
        cid = capture["metadata"]["uid"].replace("-", "")
        return list(
            self.apps.list_namespaced_daemon_set(
                OPERATOR_NAMESPACE, label_selector=f"kpcap.io/capture-id={cid}"
            ).items
        )

    @property
    def agent_api(self) -> client.CustomObjectsApi:
        """The API as the agent's ServiceAccount sees it (a token from the TokenRequest API)."""
        if self._agent_api is None:
            core = client.CoreV1Api(self.cluster.api_client())
            token = core.create_namespaced_service_account_token(
                AGENT_SA,
                OPERATOR_NAMESPACE,
                client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
                ),
            ).status.token
            self._agent_api = client.CustomObjectsApi(self.cluster.token_client(token))
        return self._agent_api

    def report(self, name: str, node: str, **entry: Any) -> None:
        """What an agent does: merge-patch its own node's entry under status.nodes."""
        entry.setdefault("updated", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.agent_api.api_client.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}/status",
            "PATCH",
            body={"status": {"nodes": {node: entry}}},
            header_params={"Content-Type": "application/merge-patch+json"},
            auth_settings=["BearerToken"],
            response_type="object",
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
