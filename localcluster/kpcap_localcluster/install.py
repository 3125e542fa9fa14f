"""Install kpcap on a local cluster the way a platform team would: ``helm template`` of the chart.

The CRDs go in first (crds/*.yaml without their CEL rules: the local apiserver is 1.20), then the
rendered chart without its CRD templates and hook Jobs/Pods (`kubectl apply` would run a pre-delete
hook at once; the hooks' RBAC is applied, so the chart RBAC test checks it), so the operator and the
capture agents run as pods with exactly the chart's ServiceAccounts and RBAC. The real `helm
install/upgrade/uninstall` is tested in tests/charts/test_helm_lifecycle.py. Used by the chart's
end-to-end tests and by the demo (the README's main job).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kpcap_localcluster.binaries import REPO_ROOT, tool
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.crd import load_crds
from kpcap_localcluster.storage import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY

CHART = REPO_ROOT / "charts" / "kpcap"
TEST_IMAGES = {
    "operator": {"repository": "registry.example/kpcap/kpcap-operator", "tag": "test"},
    "agent": {"repository": "registry.example/kpcap/kpcap-agent", "tag": "test"},
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=check)


def render_chart(
    *, release: str, namespace: str, values: Mapping[str, Any] | None = None, kube_version: str = "1.20.2"
) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(dict(values or {}), values_file)
        values_file.flush()
        return helm(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            kube_version,
            "--values",
            values_file.name,
        ).stdout


def storage_credentials(cluster: LocalCluster) -> dict[str, str]:
    """What the agents need to reach the local S3 and GCS servers through the SDKs' standard chains."""
    assert cluster.gcs is not None  # noqa: S101 - the cluster was started with storage
    return {
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": TEST_REGION,
        "STORAGE_EMULATOR_HOST": cluster.gcs.endpoint,
    }


@dataclass(frozen=True, slots=True)
class Installation:
    cluster: LocalCluster
    release: str
    namespace: str
    manifests: str
    credentials_secret: str

    def operator_pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-o",
            "json",
            "-l",
            f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator",
        ).stdout
        return list(json.loads(out)["items"])

    def webhook_registered(self) -> bool:
        result = self.cluster.kubectl(
            "get", "validatingwebhookconfiguration", "kpcap.io", "-o", "json", check=False
        )
        if result.returncode != 0:
            return False
        hooks = json.loads(result.stdout).get("webhooks") or []
        service = f"{self.release}-webhook"
        return any((h.get("clientConfig", {}).get("service") or {}).get("name") == service for h in hooks)

    def webhook_serving(self) -> bool:
        """Every running operator replica accepts connections on its webhook port (the chart owns
        the configuration, so its presence says nothing about the servers behind the Service)."""
        pods = [p for p in self.operator_pods() if p["status"].get("phase") == "Running"]
        for pod in pods:
            ports = [
                port["containerPort"]
                for container in pod["spec"]["containers"]
                for port in container.get("ports") or []
                if port.get("name") == "webhook"
            ]
            address = pod["status"].get("podIP")
            for port in ports:
                try:
                    socket.create_connection((address, port), timeout=1).close()
                except OSError:
                    return False
        return bool(pods)

    def operator_logs(self) -> str:
        return "\n".join(
            self.cluster.pod_logs(namespace=self.namespace, pod=pod["metadata"]["name"])
            for pod in self.operator_pods()
        )

    def uninstall(self) -> None:
        kubectl = self.cluster.kubectl
        delete_manifests(self.cluster, self.manifests)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            kubectl("delete", kind, "kpcap.io", "--ignore-not-found", check=False)
        kubectl(
            "delete",
            "secret",
            "-n",
            self.namespace,
            self.credentials_secret,
            "--ignore-not-found",
            check=False,
        )


def without_hook_workloads(manifests: str) -> str:
    """``manifests`` without the Helm hooks' Jobs and Pods (helm runs them at their events; applied
    by kubectl they would run at once), their ServiceAccounts and RBAC kept."""
    docs = [
        doc
        for doc in yaml.safe_load_all(manifests)
        if doc
        and not (
            doc["kind"] in {"Job", "Pod"} and "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
        )
    ]
    return yaml.safe_dump_all(docs)


def delete_manifests(cluster: LocalCluster, manifests: str) -> None:
    """Delete what ``manifests`` created (absent objects are fine), waiting up to 60 s for each."""
    cluster.kubectl(
        "delete",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=60s",
        "-f",
        "-",
        stdin=manifests,
        check=False,
    )


def apply_crd(cluster: LocalCluster) -> None:
    """kpcap's CRDs (PacketCapture, PacketCaptureReport: what the chart's templates render), established."""
    crds = load_crds(strip_cel=True)
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def install(
    cluster: LocalCluster,
    *,
    release: str = "kpcap",
    namespace: str = "kpcap-system",
    values: Mapping[str, Any] | None = None,
    timeout: float = 90.0,
) -> Installation:
    """Apply CRD, namespace, storage credentials and the rendered chart; wait for operator and webhook."""
    apply_crd(cluster)
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", namespace)
    secret_name = f"{release}-storage-credentials"
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": namespace},
                "stringData": storage_credentials(cluster),
            }
        ),
    )
    chart_values: dict[str, Any] = {
        "operator": {"image": TEST_IMAGES["operator"]},
        "agent": {"image": TEST_IMAGES["agent"]},
        "storage": {"credentialsSecret": secret_name},
        "crds": {"enabled": False},  # applied above, by kubectl, as the other suites do
    }
    for key, value in (values or {}).items():
        if isinstance(value, Mapping) and isinstance(chart_values.get(key), dict):
            chart_values[key] = {**chart_values[key], **value}
        else:
            chart_values[key] = value
    rendered = render_chart(release=release, namespace=namespace, values=chart_values)
    manifests = without_hook_workloads(rendered)
    cluster.kubectl("apply", "-f", "-", stdin=manifests)
    installation = Installation(
        cluster=cluster,
        release=release,
        namespace=namespace,
        manifests=manifests,
        credentials_secret=secret_name,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = any(p["status"].get("phase") == "Running" for p in installation.operator_pods())
        if running and installation.webhook_registered() and installation.webhook_serving():
            return installation
        time.sleep(0.5)
    pods = cluster.kubectl("get", "pods,deploy,rs", "-n", namespace, "-o", "wide", check=False).stdout
    events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
    raise TimeoutError(
        f"kpcap did not come up within {timeout:.0f}s (operator running and webhook registered):\n{pods}\n"
        f"{events[-3000:]}\noperator logs:\n{installation.operator_logs()[-4000:]}"
    )


@dataclass(frozen=True, slots=True)
class Samplers:
    """The chart's sampler objects applied on their own (for an operator that runs outside a pod)."""

    cluster: LocalCluster
    namespace: str
    manifests: str

    def pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "json", "-l", "app.kubernetes.io/component=sampler"
        ).stdout
        return list(json.loads(out)["items"])

    def ca_certificate(self, *, release: str = "kpcap") -> bytes:
        """The CA certificate the samplers' serving certificates chain to (the chart's Secret)."""
        out = self.cluster.kubectl(
            "get", "secret", "-n", self.namespace, f"{release}-sampler-ca", "-o", "jsonpath={.data.ca\\.crt}"
        ).stdout
        return base64.b64decode(out)

    def answering(self, *, port: int) -> set[str]:
        """Nodes whose sampler answers its health check (HTTPS, self-signed) on the node's address."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        healthy = set()
        for pod in self.pods():
            address = pod["status"].get("podIP")
            if pod["status"].get("phase") != "Running" or not address:
                continue
            url = f"https://{address}:{port}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                    if answer.status == 200:
                        healthy.add(pod["spec"]["nodeName"])
            except OSError:
                continue
        return healthy

    def remove(self, *, timeout: float = 60.0) -> None:
        """Delete them and wait until no sampler pod is left (so the port is free for the next)."""
        delete_manifests(self.cluster, self.manifests)
        deadline = time.monotonic() + timeout
        while self.pods() and time.monotonic() < deadline:
            time.sleep(0.5)


def deploy_samplers(
    cluster: LocalCluster,
    *,
    release: str = "kpcap",
    namespace: str = "kpcap-system",
    sampler_values: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> Samplers:
    """Render the chart and apply only its sampler objects (ServiceAccount, RBAC, DaemonSet); wait
    until a sampler runs on every node."""
    sampler = {"enabled": True, **(sampler_values or {})}
    values = {"agent": {"image": TEST_IMAGES["agent"]}, "sampler": sampler}
    port = int(sampler.get("port", 9444))
    rendered = render_chart(release=release, namespace=namespace, values=values)
    docs = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "sampler"
    ]
    manifests = yaml.safe_dump_all(docs)
    cluster.kubectl("apply", "-f", "-", stdin=manifests)
    samplers = Samplers(cluster=cluster, namespace=namespace, manifests=manifests)
    nodes = {
        n["metadata"]["name"]
        for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if samplers.answering(port=port) >= nodes:
            return samplers
        time.sleep(0.5)
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    logs = "\n".join(
        cluster.pod_logs(namespace=namespace, pod=p["metadata"]["name"])[-2000:] for p in samplers.pods()
    )
    raise TimeoutError(f"samplers did not answer on every node within {timeout:.0f}s:\n{pods}\n{logs}")


def write_manifest(directory: Path, body: Mapping[str, Any]) -> Path:
    path = directory / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(dict(body), sort_keys=False))
    return path
