"""kpcap's objects on the local cluster for tests that run the operator as a process (not the chart):
the CRD, the operator namespace, the agent's and the operator's ServiceAccounts, the agent's RBAC, the
storage credentials Secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kpcap.kubeapi import GROUP, PLURAL, REPORT_PLURAL
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.crd import load_crds
from kpcap_localcluster.install import storage_credentials

OPERATOR_NAMESPACE = "kpcap-system"
AGENT_SA = "kpcap-agent"
OPERATOR_SA = "kpcap-operator"
STAND_IN_AGENT_IMAGE = "registry.example/kpcap/kpcap-testbox:test"
CREDENTIALS_SECRET = "kpcap-storage-credentials"

AGENT_RULES = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": [REPORT_PLURAL], "verbs": ["create", "get", "patch"]},
]

# Every sampled packet kept (rate 1) so tests can count exactly; the operator's ServiceAccount
# (OPERATOR_SA, the chart's name for release "kpcap") is the one client the samplers answer.
SAMPLER_VALUES = {"samplingRate": 1, "snapLength": 256, "retention": "1h", "byteBudget": "16Mi"}


def sampler_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where operator processes look for the samplers' CA (KPCAP_SAMPLER_CA_FILE)."""
    return tmp_path_factory.getbasetemp() / "sampler-ca.crt"


def _base_manifests() -> list[dict[str, Any]]:
    return [
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


def install_kpcap_objects(cluster: LocalCluster) -> None:
    """The CRDs (without CEL: the test apiserver is 1.20), the operator namespace, the agent's RBAC."""
    crds = load_crds(strip_cel=True)
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _base_manifests()}),
    )


def apply_storage_credentials(cluster: LocalCluster) -> None:
    """The Secret whose keys the operator passes to capture agents: the local S3/GCS servers' access."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": OPERATOR_NAMESPACE},
        "stringData": storage_credentials(cluster),
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
