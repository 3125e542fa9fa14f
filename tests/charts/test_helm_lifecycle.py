"""The chart's life with the real helm binary on the local cluster (issue 15, Helm lifecycle):
`helm install`, `helm test`, `helm upgrade` to a chart whose CRD adds a field (served afterwards),
`helm uninstall` while a full capture runs (nothing of kpcap is left, the uploaded files are), and
the PodSecurity check refusing a namespace that enforces baseline. One release, in test order."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpcap_localcluster.binaries import tool
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import TEST_IMAGES, Installation, storage_credentials
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kpcap"
RELEASE = "kpcap-life"  # its own names: the other suites' RBAC and releases stay untouched
NAMESPACE = "kpcap-life"
CRDS = ("packetcaptures.kpcap.io", "packetcapturereports.kpcap.io")
NEW_FIELD = "upgradeProbe"
PODSECURITY_MESSAGE = 'enforces PodSecurity level "baseline"'


@dataclass
class Release:
    cluster: LocalCluster
    values: Path
    installation: Installation
    installed: bool = True
    adopted_crds: bool = False

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return helm(self.cluster, *args, check=check, timeout=timeout)


def helm(
    cluster: LocalCluster, *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def kubectl_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl(*args, "-o", "json").stdout)
    return out


def _adopt_existing_crds(cluster: LocalCluster) -> bool:
    """CRDs applied by kubectl (other suites, or an older chart's crds/) join the release: what the
    chart README tells platform teams to do when moving to the chart-managed CRDs. True if any."""
    adopted = False
    for crd in CRDS:
        if cluster.kubectl("get", "crd", crd, check=False).returncode != 0:
            continue
        adopted = True
        cluster.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate",
            "--overwrite",
            "crd",
            crd,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={NAMESPACE}",
        )
    return adopted


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait_ready(installation: Installation, *, timeout: float = 120) -> None:
    """Every operator pod running and ready: the webhook Service has ready endpoints, none not ready."""
    cluster = installation.cluster

    def ready() -> bool:
        pods = installation.operator_pods()
        if not pods or any(p["metadata"].get("deletionTimestamp") for p in pods):
            return False
        endpoints = kubectl_json(cluster, "get", "endpoints", "-n", NAMESPACE, f"{RELEASE}-webhook")
        subsets = endpoints.get("subsets") or []
        ready = [(a["ip"], p["port"]) for s in subsets for a in s.get("addresses") or [] for p in s["ports"]]
        if len(ready) != len(pods) or any(s.get("notReadyAddresses") for s in subsets):
            return False
        return all(_accepts(address, port) for address, port in ready)

    wait_for(ready, timeout=timeout, interval=0.5, what="the operator pods ready behind the webhook Service")


def _create_namespace(cluster: LocalCluster, name: str, *labels: str) -> None:
    cluster.kubectl("create", "namespace", name)
    if labels:
        cluster.kubectl("label", "namespace", name, *labels)


@pytest.fixture(scope="module")
def release(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    cluster = local_cluster
    _create_namespace(cluster, NAMESPACE, "pod-security.kubernetes.io/enforce=privileged")
    secret = f"{RELEASE}-storage-credentials"
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        secret,
        "-n",
        NAMESPACE,
        *[f"--from-literal={k}={v}" for k, v in storage_credentials(cluster).items()],
    )
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "operator": {"image": TEST_IMAGES["operator"], "reportGraceSeconds": 10},
                "agent": {"image": TEST_IMAGES["agent"]},
                "storage": {"credentialsSecret": secret},
                "sampler": {"samplingRate": 1},
                "api": {"enabled": True},
                "uninstall": {"waitSeconds": 30},
            }
        ),
        encoding="utf-8",
    )
    adopted = _adopt_existing_crds(cluster)
    started = time.monotonic()
    helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values), "--wait")
    installation = Installation(
        cluster=cluster, release=RELEASE, namespace=NAMESPACE, manifests="", credentials_secret=secret
    )
    _wait_ready(installation)
    print(f"helm install -> operator and webhook ready in {time.monotonic() - started:.1f}s")
    state = Release(cluster=cluster, values=values, installation=installation, adopted_crds=adopted)
    try:
        yield state
    finally:
        if state.installed:
            print(installation.operator_logs()[-4000:])
            helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_helm_install_manages_the_crds_and_keeps_them(release: Release) -> None:
    for crd in CRDS:
        metadata = kubectl_json(release.cluster, "get", "crd", crd)["metadata"]
        assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
        assert metadata["annotations"]["meta.helm.sh/release-name"] == RELEASE
    listed = json.loads(release.helm("list", "--namespace", NAMESPACE, "--output", "json").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [(RELEASE, "deployed")]


def test_helm_test_checks_the_webhook_the_api_and_the_samplers(release: Release) -> None:
    started = time.monotonic()
    # No --logs: the process kubelet serves no log API; its files hold the Pod's output.
    result = release.helm("test", RELEASE, "--namespace", NAMESPACE, check=False)
    logs = release.cluster.pod_logs(namespace=NAMESPACE, pod=f"{RELEASE}-test")
    print(f"helm test in {time.monotonic() - started:.1f}s:\n{result.stdout}\n{result.stderr}\n{logs}")
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "Phase:          Succeeded" in result.stdout
    for line in (
        "ok   webhook",
        "ok   REST API: ",
        "ok   samplers: 3/3",
    ):
        assert line in logs, logs


def _upgraded_chart(directory: Path) -> Path:
    """The chart as version 0.1.1, its PacketCapture CRD with one more top-level property."""
    chart = directory / "kpcap"
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(
        meta.read_text(encoding="utf-8").replace("version: 0.1.0", "version: 0.1.1"), encoding="utf-8"
    )
    template = chart / "templates" / "crds" / "packetcapture.yaml"
    anchor = "          properties:\n            apiVersion:\n"
    text = template.read_text(encoding="utf-8")
    assert text.count(anchor) == 1
    template.write_text(
        text.replace(
            anchor,
            f"          properties:\n            {NEW_FIELD}:\n              type: string\n"
            "            apiVersion:\n",
        ),
        encoding="utf-8",
    )
    return chart


def _simple_capture(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """A simple capture carrying NEW_FIELD, created and read back."""
    body = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "probe", "namespace": namespace},
        NEW_FIELD: "v2",
        "spec": {"type": "simple", "timeLimit": 10, "packetLimit": 10},
    }
    # The server decides (prunes or keeps the field); kubectl's own schema check would refuse it first.
    created = cluster.kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(body), check=False)
    assert created.returncode == 0, created.stderr
    return kubectl_json(cluster, "get", "pcap", "-n", namespace, "probe")


def test_helm_upgrade_upgrades_the_crd_and_the_new_field_is_served(release: Release, tmp_path: Path) -> None:
    cluster = release.cluster
    before, after = f"t-{secrets.token_hex(4)}", f"t-{secrets.token_hex(4)}"
    for name in (before, after):
        _create_namespace(cluster, name)
    try:
        assert NEW_FIELD not in _simple_capture(cluster, before), "pruned before the upgrade"
        started = time.monotonic()
        release.helm(
            "upgrade",
            RELEASE,
            str(_upgraded_chart(tmp_path)),
            "--namespace",
            NAMESPACE,
            "--values",
            str(release.values),
            "--wait",
            # Adopted CRDs: their fields belong to kubectl's client-side apply until Helm's
            # server-side apply takes them over (the README's migration step says so).
            *(["--force-conflicts"] if release.adopted_crds else []),
        )
        schema = kubectl_json(cluster, "get", "crd", CRDS[0])["spec"]["versions"][0]["schema"]
        assert NEW_FIELD in schema["openAPIV3Schema"]["properties"]
        _wait_ready(release.installation)
        print(f"helm upgrade -> operator and webhook ready in {time.monotonic() - started:.1f}s")
        assert _simple_capture(cluster, after)[NEW_FIELD] == "v2", "served after the upgrade"
        listed = json.loads(release.helm("list", "--namespace", NAMESPACE, "--output", "json").stdout)
        assert [(r["chart"], r["revision"]) for r in listed] == [("kpcap-0.1.1", "2")] or [
            (r["chart"], int(r["revision"])) for r in listed
        ] == [("kpcap-0.1.1", 2)]
    finally:
        for name in (before, after):
            cluster.kubectl(
                "delete", "pcaps", "--all", "-n", name, "--wait=true", "--timeout=30s", check=False
            )
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _items(cluster: LocalCluster, *args: str) -> list[dict[str, Any]]:
    return list(kubectl_json(cluster, "get", *args)["items"])


def test_helm_uninstall_during_a_full_capture_leaves_nothing_but_the_uploads(release: Release) -> None:
    cluster = release.cluster
    assert cluster.s3 is not None
    s3 = cluster.s3.s3_client()
    bucket = f"kpcap-life-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    users = f"t-{secrets.token_hex(4)}"
    _create_namespace(cluster, users)
    marker = f"u-{secrets.token_hex(6)}"
    capture = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "long", "namespace": users},
        "spec": {
            "type": "full",
            "timeLimit": 120,  # still running when helm uninstall starts
            "packetLimit": 1000,
            "colo": "colo-a",
            "destinationConf": f"s3://{bucket}/c?region=us-east-1&endpoint={cluster.s3.endpoint}",
            "filter": {"protocol": 17, "destinationPort": 7777},
        },
    }
    try:
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(capture))

        def capturing() -> bool:
            nodes = (kubectl_json(cluster, "get", "pcap", "-n", users, "long").get("status") or {}).get(
                "nodes"
            )
            return len(nodes or {}) == 2 and all(n.get("phase") == "running" for n in nodes.values())

        wait_for(capturing, timeout=60, interval=0.3, what="both agents capturing")
        uid = kubectl_json(cluster, "get", "pcap", "-n", users, "long")["metadata"]["uid"].replace("-", "")
        for dst in ("kpcap-node-1", "kpcap-node-2"):
            cluster.send_udp(src="kpcap-node-3", dst=dst, port=7777, count=25, payload=marker)
        time.sleep(1.0)  # the agents see the datagrams before they are stopped

        started = time.monotonic()
        result = release.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "4m")
        release.installed = False
        hook_logs = cluster.pod_logs(namespace=NAMESPACE, pod=f"{RELEASE}-uninstall-*")
        print(f"helm uninstall (capture running) in {time.monotonic() - started:.1f}s: {result.stdout}")
        print(f"the pre-delete hook's log:\n{hook_logs}")
        assert "stopped capture" in hook_logs, hook_logs
        assert "deleted capture" in hook_logs, hook_logs

        # Nothing of kpcap is left but its kept CRDs...
        assert _items(cluster, "pcaps", "--all-namespaces") == []
        # The nodes' reports go with their capture by ownerReference: the garbage collector's
        # work, asynchronous (as the pods' below).
        wait_for(
            lambda: _items(cluster, "packetcapturereports", "--all-namespaces") == [],
            timeout=60,
            what="the capture's reports garbage-collected",
        )
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            assert cluster.kubectl("get", kind, "kpcap.io", check=False).returncode != 0, kind
        assert (
            _items(
                cluster,
                "daemonsets,deployments,jobs,serviceaccounts",
                "-n",
                NAMESPACE,
                "-l",
                f"app.kubernetes.io/instance={RELEASE}",
            )
            == []
        )
        assert [c for c in _items(cluster, "clusterroles") if c["metadata"]["name"].startswith(RELEASE)] == []
        wait_for(lambda: not _items(cluster, "pods", "-n", NAMESPACE), timeout=60, what="every pod gone")
        for crd in CRDS:
            assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"{crd} kept"
        # ... and the stopped capture's uploads, each node's with exactly its matching packets.
        for node in ("kpcap-node-1", "kpcap-node-2"):
            body = s3.get_object(Bucket=bucket, Key=f"c/pcap_{uid}/{node}.pcap")["Body"].read()
            assert udp_payloads(body) == [(7777, marker.encode())] * 25, node
    finally:
        cluster.kubectl("delete", "namespace", users, "--wait=false", check=False)


def test_the_podsecurity_check_refuses_a_namespace_enforcing_baseline(local_cluster: LocalCluster) -> None:
    name = f"t-{secrets.token_hex(4)}"
    _create_namespace(local_cluster, name, "pod-security.kubernetes.io/enforce=baseline")
    try:
        result = helm(
            local_cluster,
            "install",
            "kpcap-refused",
            str(CHART),
            "--namespace",
            name,
            "--set",
            "crds.enabled=false",
            check=False,
        )
        assert result.returncode != 0
        assert f"namespace {name} {PODSECURITY_MESSAGE}" in result.stderr, result.stderr
        assert "pod-security.kubernetes.io/enforce=privileged" in result.stderr
        assert helm(local_cluster, "list", "--namespace", name, "--short").stdout.strip() == ""
    finally:
        local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
