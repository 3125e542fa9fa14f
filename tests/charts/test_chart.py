"""The Helm chart: lint, schema, rendering, server-side dry-run, and kpcap installed from it end to end.

Rendering uses the real helm binary (hack/install-tools.sh caches it). The e2e tests apply the
rendered chart to the local cluster, so the operator and the capture agents run as pods through the
process kubelet with exactly the chart's ServiceAccounts and RBAC.
"""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kpcap.model import parse_spec
from kpcap_localcluster.binaries import tool
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import Installation, apply_crd, install
from kpcap_operator.manifests import capture_daemonset
from kpcap_operator.settings import OperatorSettings
from tests.support.operator_crds import foreign_crds
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kpcap"
HERE = Path(__file__).parent
EVERYTHING = HERE / "values-everything.yaml"
KUBE_VERSION = "1.20.2"  # the local apiserver's

RELEASE = "kpcap-chart"  # distinct names from the other suites' hand-made kpcap-agent RBAC
NAMESPACE = "kpcap-system"
OPERATOR_SA = f"{RELEASE}-operator"
LEADER_LEASE = f"{RELEASE}-operator-leader"
AGENT_SA = f"{RELEASE}-agent"
SAMPLER_SA = f"{RELEASE}-sampler"
UNINSTALL_SA = f"{RELEASE}-uninstall"  # the pre-delete hook's (its RBAC is applied, its Job is not)
SELFTEST_SA = f"{RELEASE}-test"  # helm test's
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the API listens on the pod's interfaces, for its Service


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=check)


def render(
    *,
    release: str = "kpcap",
    namespace: str = NAMESPACE,
    values: tuple[Path, ...] = (),
    kube_version: str = KUBE_VERSION,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version]
    for path in values:
        args += ["--values", str(path)]
    return helm(*args, check=check)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


# --- no cluster needed ------------------------------------------------------------------------


def test_helm_lint_passes_with_default_and_every_setting() -> None:
    for extra in ([], ["--values", str(EVERYTHING)]):
        for kube in ("1.20.2", "1.30.0"):
            result = helm("lint", str(CHART), "--strict", "--kube-version", kube, *extra, check=False)
            assert result.returncode == 0, result.stdout + result.stderr


def _leaves(values: Any, prefix: str = "") -> dict[str, Any]:
    """Paths to scalars, lists and empty maps (the settable things) of a values tree."""
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: values}


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError(path)
        node = node[part]
    return node


def test_the_every_setting_values_file_changes_every_value() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    everything = yaml.safe_load(EVERYTHING.read_text(encoding="utf-8"))
    unchanged = [
        path
        for path, value in _leaves(defaults).items()
        if isinstance(_lookup(everything, path), KeyError) or _lookup(everything, path) == value
    ]
    # Booleans that must stay true for the rest to render (a disabled sampler/webhook/metrics/PDB
    # would hide its settings); the disabled paths are rendered in test_switches_remove_their_objects.
    kept_true = {
        "crds.enabled",  # off: no CRD to check (test_chart_crds.py renders it off)
        "uninstall.enabled",  # off: no hook (test_chart_hooks.py renders it off)
        "operator.leaderElection.enabled",
        "api.tls.enabled",  # off: plain HTTP, nothing of api.tls to check (test_api_tls_chart.py)
        "operator.serviceAccount.create",
        "agent.serviceAccount.create",
        "webhook.enabled",
        "metrics.enabled",
        "podDisruptionBudget.enabled",
        "sampler.enabled",
        "operator.podSecurityContext.runAsNonRoot",
        "operator.podSecurityContext.seccompProfile.type",
        "operator.securityContext.allowPrivilegeEscalation",
        "operator.securityContext.privileged",
        "operator.securityContext.readOnlyRootFilesystem",
        "operator.securityContext.capabilities.drop",
    }
    assert set(unchanged) <= kept_true, f"values-everything.yaml leaves these at their default: {unchanged}"


def test_every_value_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    uncommented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        value = stripped.split(":", 1)[1].strip()
        if value == "" and index + 1 < len(lines):
            next_line = lines[index + 1]
            if len(next_line) - len(next_line.lstrip()) > indent and not next_line.strip().startswith("-"):
                continue  # a section: its keys carry the comments
        above = lines[index - 1].strip() if index else ""
        parent_documented = indent > 0 and above and not above.startswith("#") and ":" in above
        if not above.startswith("#") and not parent_documented:
            uncommented.append(stripped)
    assert not uncommented, f"values without a comment: {uncommented}"


@pytest.mark.parametrize(
    ("values", "messages"),
    [
        (
            {"operator": {"reportGraceSeconds": "sixty"}},
            ["/operator/reportGraceSeconds", "got string, want integer"],
        ),
        ({"operator": {"replica": 2}}, ["/operator", "additional properties 'replica' not allowed"]),
        ({"sampler": {"enabled": "yes"}}, ["/sampler/enabled", "got string, want boolean"]),
        ({"webhook": {"failurePolicy": "Maybe"}}, ["/webhook/failurePolicy", "'Fail', 'Ignore'"]),
        ({"operator": {"reportGraceSeconds": 1}}, ["/operator/reportGraceSeconds", "minimum"]),
        ({"agent": {"image": {"repository": ""}}}, ["/agent/image/repository"]),
        ({"storage": {"credentialsSecret": "Not_A_Name"}}, ["/storage/credentialsSecret"]),
        ({"api": {"service": {"tls": True}}}, ["/api/service", "additional properties 'tls' not allowed"]),
        ({"api": {"port": 0}}, ["/api/port", "minimum"]),
        ({"mystery": True}, ["additional properties 'mystery' not allowed"]),
    ],
)
def test_bad_values_fail_with_the_schema_message_naming_the_key(
    tmp_path: Path, values: dict[str, Any], messages: list[str]
) -> None:
    result = render(values=(values_file(tmp_path, values),), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


def test_any_image_repository_is_accepted(tmp_path: Path) -> None:
    """A mirror may rename the images: the chart takes any repository (the local cluster maps images
    by a table of its own, kpcap_localcluster.cluster.KNOWN_IMAGES, not through the chart)."""
    images = {
        "operator": {"image": {"repository": "mirror.example:5000/platform/pcap-controller", "tag": "1"}},
        "agent": {"image": {"repository": "mirror.example/platform/capture", "tag": "2"}},
    }
    rendered = render(values=(values_file(tmp_path, images),)).stdout
    assert "mirror.example:5000/platform/pcap-controller:1" in rendered
    assert "mirror.example/platform/capture:2" in rendered


def test_more_replicas_need_leader_election(tmp_path: Path) -> None:
    values = {"operator": {"replicas": 2, "leaderElection": {"enabled": False}}}
    result = render(values=(values_file(tmp_path, values),), check=False)
    assert result.returncode != 0
    assert "operator.replicas > 1 needs operator.leaderElection.enabled" in result.stderr


def test_every_replica_serves_the_charts_one_webhook_certificate() -> None:
    docs = documents(render().stdout)
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    ca, serving = secrets["kpcap-ca"]["data"], secrets["kpcap-webhook-tls"]["data"]
    assert serving["ca.crt"] == ca["ca.crt"]
    (config,) = by_kind(docs, "ValidatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["clientConfig"] == {
        "service": {"name": "kpcap-webhook", "namespace": "kpcap-system", "port": 443, "path": "/validate"},
        "caBundle": ca["ca.crt"],
    }
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KPCAP_WEBHOOK_CERT_DIR"] == "/etc/kpcap/webhook-tls"
    assert env["KPCAP_WEBHOOK_CONFIG_MANAGED"] == "false"  # no replica patches the caBundle
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == "kpcap-webhook-tls"


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ({"tlsSecret": "mine"}, 'webhook.tlsSecret "mine": the apiserver needs the CA that signed it'),
        (
            {"certManager": {"enabled": True}},
            "webhook.certManager.enabled needs webhook.certManager.issuerRef.name",
        ),
    ],
)
def test_a_webhook_certificate_without_its_ca_is_refused(
    tmp_path: Path, webhook: dict[str, Any], message: str
) -> None:
    result = render(values=(values_file(tmp_path, {"webhook": webhook}),), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_cert_manager_issues_the_webhook_certificate_and_injects_its_ca(tmp_path: Path) -> None:
    issuer = {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    values = {"webhook": {"certManager": {"enabled": True, "issuerRef": issuer}}}
    docs = documents(render(values=(values_file(tmp_path, values),)).stdout)
    (certificate,) = by_kind(docs, "Certificate")
    assert certificate["spec"]["secretName"] == "kpcap-webhook-tls"
    assert certificate["spec"]["issuerRef"] == issuer
    (config,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kpcap-system/kpcap-webhook"
    }
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert "kpcap-webhook-tls" not in {d["metadata"]["name"] for d in by_kind(docs, "Secret")}


def _crd_or_hook(doc: dict[str, Any]) -> bool:
    return doc["kind"] == "CustomResourceDefinition" or "helm.sh/hook" in (
        doc["metadata"].get("annotations") or {}
    )


def test_default_render_is_locked_down() -> None:
    docs = documents(render().stdout)
    # The CRDs, hooks and helm test: tests/charts/test_chart_crds.py and test_chart_hooks.py.
    kinds = sorted(doc["kind"] for doc in docs if not _crd_or_hook(doc))
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "DaemonSet",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",  # the chart's CA
            "Secret",  # the webhook's serving certificate, shared by every replica
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ServiceAccount",
            "ValidatingWebhookConfiguration",
        ]
    )
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # Leader election: a new replica stands by until the old one hands the Lease over.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kpcap/kpcap-operator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/var/tmp"} in container["volumeMounts"]
    assert {"name": "TMPDIR", "value": "/var/tmp"} in container["env"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KPCAP_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["KPCAP_AGENT_IMAGE"] == "ghcr.io/kpcap/kpcap-agent:0.1.0"
    assert env["KPCAP_AGENT_SERVICE_ACCOUNT"] == "kpcap-agent"
    assert env["KPCAP_WEBHOOK_SERVICE"] == "kpcap-webhook"
    assert env["KPCAP_LEADER_LEASE"] == "kpcap-operator-leader"
    assert "KPCAP_AGENT_CREDENTIALS_SECRET" not in env
    (agent_role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "kpcap-agent"]
    assert agent_role["rules"] == [
        {"apiGroups": ["kpcap.io"], "resources": ["packetcaptures"], "verbs": ["get"]},
        {
            "apiGroups": ["kpcap.io"],
            "resources": ["packetcapturereports"],
            "verbs": ["create", "get", "patch"],
        },
    ]
    (webhook_service,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "kpcap-webhook"]
    assert webhook_service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    # The REST API is off: no Service, no env, no port, and none of its RBAC (least privilege).
    assert "KPCAP_API_PORT" not in env
    assert "KPCAP_API_HOST" not in env
    assert all(port["name"] != "api" for port in container["ports"])
    assert all(not d["metadata"]["name"].endswith("-api") for d in by_kind(docs, "Service"))
    assert _api_rules(docs, "kpcap") == ([], [])
    # The sampler is on by default: TokenReviews only, hostNetwork, two capabilities, memory-only ring.
    (sampler_role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "kpcap-sampler"]
    assert sampler_role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    (sampler,) = by_kind(docs, "DaemonSet")
    sampler_pod = sampler["spec"]["template"]["spec"]
    assert sampler_pod["serviceAccountName"] == "kpcap-sampler"
    assert sampler_pod["hostNetwork"] is True
    (sampler_container,) = sampler_pod["containers"]
    sampler_env = {e["name"]: e.get("value") for e in sampler_container["env"]}
    assert sampler_env["KPCAP_SAMPLER_CLIENT"] == f"system:serviceaccount:{NAMESPACE}:kpcap-operator"
    assert sampler_env["KPCAP_SAMPLER_BYTE_BUDGET"] == "128Mi"
    assert sampler_container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_RAW", "NET_ADMIN"],
    }
    assert sampler_container["securityContext"]["readOnlyRootFilesystem"] is True
    assert [v for v in sampler_pod["volumes"] if "emptyDir" in v] == [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    ]
    # The samplers' CA: generated by the chart; samplers get certificate and key, the operator
    # only the certificate (it verifies, it does not issue).
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    # Beside it: the chart's CA for the operator's serving pairs (key mounted nowhere) and the
    # webhook's pair it signs.
    assert sorted(secrets) == ["kpcap-ca", "kpcap-sampler-ca", "kpcap-webhook-tls"]
    assert sorted(secrets["kpcap-ca"]["data"]) == ["ca.crt", "ca.key"]
    ca = secrets["kpcap-sampler-ca"]
    assert sorted(ca["data"]) == ["ca.crt", "ca.key"]
    assert {
        "name": "sampler-ca",
        "secret": {
            "secretName": "kpcap-sampler-ca",
            "defaultMode": 0o400,
            "items": [{"key": "ca.crt", "path": "ca.crt"}, {"key": "ca.key", "path": "ca.key"}],
        },
    } in sampler_pod["volumes"]
    assert {
        "name": "sampler-ca",
        "secret": {"secretName": "kpcap-sampler-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]
    assert env["KPCAP_SAMPLER_CA_FILE"] == "/etc/kpcap/sampler-ca/ca.crt"
    assert sampler_env["KPCAP_SAMPLER_CA_DIR"] == "/etc/kpcap/sampler-ca"
    assert env["KPCAP_SAMPLE_STORE"] == "/var/lib/kpcap/samples"
    assert {"name": "samples", "mountPath": "/var/lib/kpcap/samples"} in container["volumeMounts"]
    assert {"name": "samples", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "kpcap-operator"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in role["rules"]
    assert {
        "apiGroups": [""],
        "resources": ["serviceaccounts/token"],
        "resourceNames": ["kpcap-operator"],
        "verbs": ["create"],
    } in role["rules"]


# The REST API's extra grants (operator/kpcap_operator/api): cluster-wide in the operator's
# ClusterRole, ConfigMaps in its Role (the release namespace).
API_CLUSTER_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    {"apiGroups": ["kpcap.io"], "resources": ["packetcaptures"], "verbs": ["create"]},
]
API_NAMESPACE_RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]}]


def _api_rules(docs: list[dict[str, Any]], fullname: str) -> tuple[list[Any], list[Any]]:
    """The operator's ClusterRole and Role rules that only the REST API needs (or anything like them)."""

    def of_api(rule: dict[str, Any]) -> bool:
        return (
            bool({"authentication.k8s.io", "authorization.k8s.io"} & set(rule["apiGroups"]))
            or "configmaps" in rule["resources"]
            or ("packetcaptures" in rule["resources"] and "create" in rule["verbs"])
        )

    name = f"{fullname}-operator"
    (cluster_role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == name]
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == name]
    return (
        [r for r in cluster_role["rules"] if of_api(r)],
        [r for r in role["rules"] if of_api(r)],
    )


def test_api_enabled_adds_its_service_env_port_and_rbac(tmp_path: Path) -> None:
    docs = documents(render(values=(values_file(tmp_path, {"api": {"enabled": True}}),)).stdout)
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KPCAP_API_PORT"] == "8000"
    assert env["KPCAP_API_HOST"] == ALL_INTERFACES
    assert {"name": "api", "containerPort": 8000} in container["ports"]
    (service,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "kpcap-api"]
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "api", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "kpcap",
        "app.kubernetes.io/instance": "kpcap",
        "app.kubernetes.io/component": "operator",
    }
    cluster_rules, namespace_rules = _api_rules(docs, "kpcap")
    assert cluster_rules == API_CLUSTER_RULES
    assert namespace_rules == API_NAMESPACE_RULES
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "kpcap-operator"]
    assert role["metadata"]["namespace"] == NAMESPACE, "ownership ConfigMaps: the release namespace only"


def test_samples_volume_is_an_existing_claim_when_named(tmp_path: Path) -> None:
    values = {"samples": {"existingClaim": "kept-samples"}}
    docs = documents(render(values=(values_file(tmp_path, values),)).stdout)
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert {"name": "samples", "persistentVolumeClaim": {"claimName": "kept-samples"}} in pod["volumes"]
    assert "envFrom" not in pod["containers"][0], "no bucket and no API: the operator needs no credentials"


def test_api_port_must_not_collide_with_the_operators_other_ports(tmp_path: Path) -> None:
    values = {"api": {"enabled": True, "port": 8080}}
    result = render(values=(values_file(tmp_path, values),), check=False)
    assert result.returncode != 0
    assert "api.port 8080 is already used" in result.stderr, result.stderr
    values["metrics"] = {"enabled": False}
    assert render(values=(values_file(tmp_path, values),), check=False).returncode == 0


def test_pdb_api_version_follows_the_server() -> None:
    def pdb(kube: str, *extra: str) -> str:
        out = helm(
            "template",
            "kpcap",
            str(CHART),
            "--kube-version",
            kube,
            *extra,
            "--show-only",
            "templates/pdb.yaml",
        ).stdout
        return str(documents(out)[0]["apiVersion"])

    assert pdb("1.20.2") == "policy/v1beta1"
    assert pdb("1.30.0") == "policy/v1"


def test_switches_remove_their_objects(tmp_path: Path) -> None:
    off = {
        "webhook": {"enabled": False},
        "metrics": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "operator": {"serviceAccount": {"create": False}},
        "agent": {"serviceAccount": {"create": False}},
        "sampler": {"enabled": False},
    }
    docs = documents(render(values=(values_file(tmp_path, off),)).stdout)
    assert not by_kind(docs, "DaemonSet")
    assert not by_kind(docs, "Secret")
    assert all(not d["metadata"]["name"].endswith("-sampler") for d in docs)
    role = next(d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "kpcap-operator")
    assert all(
        "pods" not in r["resources"] and "serviceaccounts/token" not in r["resources"] for r in role["rules"]
    )
    assert not by_kind(docs, "Service")
    assert not by_kind(docs, "PodDisruptionBudget")
    assert not [d for d in by_kind(docs, "ServiceAccount") if not _crd_or_hook(d)], "hooks have their own"
    operator_role = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "kpcap-operator")
    assert all("admissionregistration.k8s.io" not in r["apiGroups"] for r in operator_role["rules"])
    env = {
        e["name"]: e.get("value")
        for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KPCAP_WEBHOOK_ENABLED"] == "false"
    assert env["KPCAP_METRICS_PORT"] == "0"


def test_every_setting_reaches_the_manifests() -> None:
    docs = documents(render(values=(EVERYTHING,)).stdout)
    (sampler,) = by_kind(docs, "DaemonSet")
    spec = sampler["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["automountServiceAccountToken"] is True  # for its TokenReviews
    (container,) = spec["containers"]
    assert container["args"] == ["sample"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert container["securityContext"]["privileged"] is False
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KPCAP_AGENT_IMAGE"] == ("registry.example/kpcap/kpcap-agent@sha256:" + "1" * 64)
    assert env["KPCAP_LEADER_LEASE"] == "kpcap-every-operator-leader"
    assert env["KPCAP_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["KPCAP_AGENT_CREDENTIALS_SECRET"] == "kpcap-storage"
    assert env["KPCAP_WEBHOOK_CERT_DIR"] == "/etc/kpcap/webhook-tls"
    assert env["KPCAP_LIVENESS_ENDPOINT"] == "http://0.0.0.0:18081/healthz"
    rules = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "kpcap-every-operator")[
        "rules"
    ]
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in rules
    assert env["KPCAP_API_PORT"] == "18000"
    assert env["KPCAP_API_HOST"] == ALL_INTERFACES
    # Simple captures kept in a bucket: no volume, and the operator gets the storage credentials.
    assert env["KPCAP_SAMPLE_STORE"] == "s3://kpcap-samples/simple?region=eu-west-1"
    assert env["KPCAP_SAMPLER_TIMEOUT_MS"] == "1500"
    assert env["KPCAP_SAMPLER_PORT"] == "19444"
    assert env["KPCAP_AGENT_CPU_REQUEST"] == "100m"
    assert env["KPCAP_AGENT_MEMORY_REQUEST"] == "96Mi"
    assert env["KPCAP_AGENT_MEMORY_LIMIT"] == "320Mi"
    operator_pod = deployment["spec"]["template"]["spec"]
    assert all(v["name"] != "samples" for v in operator_pod["volumes"])
    assert operator_pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "kpcap-storage"}}]
    # The samplers' CA is the named Secret: none is generated, both sides mount that one.
    assert not by_kind(docs, "Secret")
    ca_volumes = [v for v in [*spec["volumes"], *operator_pod["volumes"]] if v["name"] == "sampler-ca"]
    assert [v["secret"]["secretName"] for v in ca_volumes] == ["kpcap-sampler-ca-from-cert-manager"] * 2
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "api", "containerPort": 18000} in ports
    (api_service,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "kpcap-every-api"]
    assert api_service["spec"]["type"] == "NodePort"
    assert api_service["spec"]["ports"] == [
        {"name": "https", "port": 8088, "targetPort": "api", "protocol": "TCP"}
    ]
    assert _api_rules(docs, "kpcap-every") == (API_CLUSTER_RULES, API_NAMESPACE_RULES)


class _ReadLog(dict[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("values", [(), (EVERYTHING,)], ids=["defaults", "everything"])
def test_every_operator_variable_the_chart_sets_reaches_the_settings(values: tuple[Path, ...]) -> None:
    (deployment,) = by_kind(documents(render(values=values).stdout), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # Downward-API values stand in for what the kubelet fills in.
    downward = {"KPCAP_NAMESPACE": NAMESPACE, "KPCAP_POD_IP": "198.18.0.10"}
    env = _ReadLog({e["name"]: e.get("value", downward.get(e["name"], "")) for e in container["env"]})
    settings = OperatorSettings.from_env(env)
    chart_sets = {name for name in env if name.startswith("KPCAP_")}
    assert chart_sets <= env.read, f"set by the chart, read by no setting: {sorted(chart_sets - env.read)}"
    agent = capture_daemonset(
        settings=settings,
        capture_id="0" * 32,
        capture_name="c",
        capture_namespace="team-a",
        spec=parse_spec(
            {
                "type": "full",
                "colo": "colo-a",
                "timeLimit": 10,
                "packetLimit": 10,
                "destinationConf": "s3://bucket/p?region=r",
            },
            now=None,
        ),
        targets=["node-1"],
    )["spec"]["template"]["spec"]["containers"][0]
    assert agent["resources"] == {
        "requests": {"cpu": env["KPCAP_AGENT_CPU_REQUEST"], "memory": env["KPCAP_AGENT_MEMORY_REQUEST"]},
        "limits": {"memory": env["KPCAP_AGENT_MEMORY_LIMIT"]},
    }


# --- against the local apiserver --------------------------------------------------------------


def _ensure_namespace(cluster: LocalCluster, name: str) -> None:
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)


@pytest.mark.e2e
@pytest.mark.parametrize("values", [(), (EVERYTHING,)], ids=["defaults", "every-setting"])
def test_server_side_dry_run_accepts_the_rendered_chart(
    local_cluster: LocalCluster, values: tuple[Path, ...]
) -> None:
    apply_crd(local_cluster)
    _ensure_namespace(local_cluster, "kpcap-dryrun")
    # Not helm test's Pod: a Pod's ServiceAccount must exist, and a dry run creates none (it runs
    # for real in test_helm_lifecycle.py).
    manifests = yaml.safe_dump_all(
        [
            d
            for d in documents(render(namespace="kpcap-dryrun", values=values).stdout)
            if not (d["kind"] == "Pod" and _crd_or_hook(d))
        ]
    )
    # The Certificate, ServiceMonitor and PodMonitor kinds registered, as on a cluster running
    # cert-manager and the Prometheus Operator (the settings that render them assume both).
    with foreign_crds(local_cluster):
        result = local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests, check=False)
    assert result.returncode == 0, result.stderr
    created = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == len(documents(manifests)), result.stdout


# --- installed from the chart, end to end -----------------------------------------------------


@pytest.fixture(scope="module")
def installation(local_cluster: LocalCluster) -> Iterator[Installation]:
    started = time.monotonic()
    installed = install(
        local_cluster,
        release=RELEASE,
        namespace=NAMESPACE,
        # Every packet sampled, so the simple capture's count is exact.
        values={"operator": {"reportGraceSeconds": 10}, "sampler": {"samplingRate": 1}},
    )
    print(f"chart installed, operator running, webhook registered in {time.monotonic() - started:.1f}s")
    try:
        yield installed
    finally:
        print(installed.operator_logs()[-6000:])
        installed.uninstall()
        wait_for(lambda: not installed.operator_pods(), timeout=60, what="the operator pod to go")


@pytest.fixture(scope="module")
def installed(installation: Installation) -> LocalCluster:
    return installation.cluster


def _pcaps_row(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    """`kubectl get pcaps` as a user reads it: NAME TYPE STATUS PACKETS AGE."""
    out = cluster.kubectl("get", "pcaps", "-n", namespace, name, "--no-headers", check=False).stdout
    return out.split()


def _capture(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "pcap", "-n", namespace, name, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _daemonsets(cluster: LocalCluster, cid: str) -> list[Any]:
    out = cluster.kubectl(
        "get", "daemonsets", "-n", NAMESPACE, "-l", f"kpcap.io/capture-id={cid}", "-o", "json"
    ).stdout
    return list(json.loads(out)["items"])


def _run_capture(
    cluster: LocalCluster,
    namespace: str,
    tmp_path: Path,
    *,
    name: str,
    destination: str,
    marker: str,
    time_limit: int = 5,  # the README quotes kubectl apply -> success for a 5 s capture
) -> tuple[dict[str, Any], list[str]]:
    """kubectl apply a full capture on colo-a; send traffic from kpcap-node-3; wait for the end."""
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kpcap.io/v1alpha1",
                "kind": "PacketCapture",
                "metadata": {"name": name},
                "spec": {
                    "type": "full",
                    "timeLimit": time_limit,
                    "packetLimit": 1000,
                    "colo": "colo-a",
                    "destinationConf": destination,
                    "filter": {"protocol": 17, "destinationPort": 7777},
                },
            }
        ),
        encoding="utf-8",
    )
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", str(manifest))
    seen: list[str] = []
    sent = False
    deadline = time.monotonic() + 120
    row: list[str] = []
    while time.monotonic() < deadline:
        row = _pcaps_row(cluster, namespace, name)
        if len(row) >= 3 and row[2] not in seen:
            seen.append(row[2])
        if len(row) >= 3 and row[2] in {"success", "failed"}:
            break
        if not sent and len((_capture(cluster, namespace, name).get("status") or {}).get("nodes") or {}) == 2:
            for dst in ("kpcap-node-1", "kpcap-node-2"):
                cluster.send_udp(src="kpcap-node-3", dst=dst, port=7777, count=25, payload=marker)
                cluster.send_udp(src="kpcap-node-3", dst=dst, port=8888, count=25, payload=marker)
            sent = True
        time.sleep(0.2)
    print(
        f"{name}: kubectl apply -> {row[2] if len(row) > 2 else '?'} in {time.monotonic() - started:.1f}s;"
        f" statuses seen {seen}; last row {row}"
    )
    return _capture(cluster, namespace, name), seen


def _cleanup(cluster: LocalCluster, namespace: str) -> None:
    # While the operator still runs, so its finalizer comes off.
    cluster.kubectl("delete", "pcaps", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False)


@pytest.mark.e2e
def test_installed_chart_runs_a_full_capture_to_s3(
    installed: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    cluster = installed
    assert cluster.s3 is not None
    s3 = cluster.s3.s3_client()
    bucket = f"kpcap-chart-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    marker = f"c-{secrets.token_hex(6)}"
    destination = f"s3://{bucket}/captures?region=us-east-1&endpoint={cluster.s3.endpoint}"
    try:
        final, seen = _run_capture(
            cluster, namespace, tmp_path, name="chart-s3", destination=destination, marker=marker
        )
        status = final.get("status") or {}
        assert status.get("status") == "success", status
        assert "pending" in seen or "running" in seen, f"kubectl get pcaps went {seen}"
        row = _pcaps_row(cluster, namespace, "chart-s3")
        assert row[1:4] == ["full", "success", "50"], row
        cid = final["metadata"]["uid"].replace("-", "")
        for node in ("kpcap-node-1", "kpcap-node-2"):
            key = f"captures/pcap_{cid}/{node}.pcap"
            assert f"s3://{bucket}/{key}" in status["files"]
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert udp_payloads(body) == [(7777, marker.encode())] * 25, "exactly the matching packets"
        wait_for(lambda: not _daemonsets(cluster, cid), timeout=30, what="the capture's DaemonSet to go")
    finally:
        _cleanup(cluster, namespace)


@pytest.mark.e2e
def test_installed_chart_answers_a_simple_capture_from_its_samplers(
    installed: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """The operator pod, with exactly the chart's RBAC, finds the sampler pods, gets its token and
    is answered by every node's sampler (which checks that token with its own RBAC)."""
    cluster = installed
    marker = f"chart-simple-{namespace}"
    cluster.send_udp(src="kpcap-node-3", dst="kpcap-node-1", port=6363, count=10, payload=marker)
    time.sleep(0.5)
    manifest = tmp_path / "simple.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kpcap.io/v1alpha1",
                "kind": "PacketCapture",
                "metadata": {"name": "sampled"},
                "spec": {
                    "type": "simple",
                    "timeLimit": 60,
                    "packetLimit": 100,
                    "filter": {"destinationPort": 6363},
                },
            }
        ),
        encoding="utf-8",
    )
    cluster.kubectl("apply", "-n", namespace, "-f", str(manifest))
    status = wait_for(
        lambda: (
            (s := _capture(cluster, namespace, "sampled").get("status") or {}).get("status")
            in {"success", "failed"}
            and s
        ),
        timeout=15,
        interval=0.1,
        what="the simple capture to finish",
    )
    assert status["status"] == "success", status
    assert status["nodesSummary"] == "3/3"
    # Every packet is sampled here: node 3 saw the 10 datagrams leave, node 1 saw them arrive.
    assert status["packetsCaptured"] == 20
    assert {n: e.get("packets") for n, e in status["nodes"].items()} == {
        "kpcap-node-1": 10,
        "kpcap-node-2": 0,
        "kpcap-node-3": 10,
    }
    row = _pcaps_row(cluster, namespace, "sampled")
    assert row[1:4] == ["simple", "success", str(status["packetsCaptured"])]


@pytest.mark.e2e
def test_installed_chart_runs_a_full_capture_to_gcs(
    installed: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    cluster = installed
    assert cluster.gcs is not None
    bucket = f"kpcap-chart-{secrets.token_hex(4)}"
    storage = cluster.gcs.gcs_client()
    storage.create_bucket(bucket)
    marker = f"g-{secrets.token_hex(6)}"
    try:
        final, _ = _run_capture(
            cluster, namespace, tmp_path, name="chart-gcs", destination=f"gs://{bucket}/pcaps", marker=marker
        )
        status = final.get("status") or {}
        assert status.get("status") == "success", status
        assert status["packetsCaptured"] == 50
        cid = final["metadata"]["uid"].replace("-", "")
        for node in ("kpcap-node-1", "kpcap-node-2"):
            blob = storage.bucket(bucket).blob(f"pcaps/pcap_{cid}/{node}.pcap")
            assert udp_payloads(blob.download_as_bytes()) == [(7777, marker.encode())] * 25
        wait_for(lambda: not _daemonsets(cluster, cid), timeout=30, what="the capture's DaemonSet to go")
    finally:
        _cleanup(cluster, namespace)


# --- RBAC: sufficient (the tests above) and minimal (below) ------------------------------------
# Every API call the operator (with Kopf) and the agent make, from reading their code, and the
# behaviour that needs it. Each verb of each rule of the chart's roles must be the only grant of at
# least one of these calls.

Call = tuple[str, str, str, str, str, str]  # verb, group, resource (with /subresource), namespace, name, why
OPERATOR_CALLS: list[Call] = [
    ("list", "kpcap.io", "packetcaptures", "", "", "Kopf lists captures in every namespace"),
    ("watch", "kpcap.io", "packetcaptures", "", "", "Kopf watches captures (new ones start)"),
    ("patch", "kpcap.io", "packetcaptures", "users-ns", "c", "Kopf adds/removes finalizer kpcap.io/cleanup"),
    ("patch", "kpcap.io", "packetcaptures/status", "users-ns", "c", "the reconciled status is written"),
    ("list", "kpcap.io", "packetcapturereports", "", "", "the nodes' reports are listed in every namespace"),
    ("watch", "kpcap.io", "packetcapturereports", "", "", "the nodes' reports are watched into the index"),
    ("create", "", "events", "users-ns", "", "events on the capture"),
    ("list", "", "nodes", "", "", "target nodes resolved from colo/nodeSelector"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", "", "", "Kopf notices a (re)created CRD"),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", "", "Kopf notices a (re)created CRD"),
    ("create", "coordination.k8s.io", "leases", NAMESPACE, "", "the first replica creates the leader Lease"),
    ("get", "coordination.k8s.io", "leases", NAMESPACE, LEADER_LEASE, "replicas read the leader Lease"),
    (
        "patch",
        "coordination.k8s.io",
        "leases",
        NAMESPACE,
        LEADER_LEASE,
        "the leader renews, a standby takes over",
    ),
    ("create", "apps", "daemonsets", NAMESPACE, "", "a full capture's DaemonSet is created"),
    ("list", "apps", "daemonsets", NAMESPACE, "", "a capture's DaemonSets are found by label"),
    ("watch", "apps", "daemonsets", NAMESPACE, "", "a running capture's DaemonSet is seen, not re-created"),
    ("delete", "apps", "daemonsets", NAMESPACE, "x", "the DaemonSet is deleted when the capture ends"),
    ("list", "", "events", NAMESPACE, "", "pods refused for a capture's DaemonSet are found (FailedCreate)"),
    ("list", "", "pods", NAMESPACE, "", "simple captures find the sampler pods (their nodes' addresses)"),
    (
        "create",
        "",
        "serviceaccounts/token",
        NAMESPACE,
        OPERATOR_SA,
        "simple captures: the operator's token for the samplers",
    ),
]
AGENT_CALLS: list[Call] = [
    ("get", "kpcap.io", "packetcaptures", "users-ns", "c", "the agent reads its capture (stop, restarts)"),
    ("create", "kpcap.io", "packetcapturereports", "users-ns", "", "the agent's first report creates it"),
    ("get", "kpcap.io", "packetcapturereports", "users-ns", "r", "a restarted agent reads its report"),
    ("patch", "kpcap.io", "packetcapturereports", "users-ns", "r", "the agent reports progress and result"),
]
SAMPLER_CALLS: list[Call] = [
    ("create", "authentication.k8s.io", "tokenreviews", "", "", "the sampler checks its callers' tokens"),
]
# operator/kpcap_operator/uninstall.py (defaults: deleteCaptures and the webhook on).
UNINSTALL_CALLS: list[Call] = [
    ("list", "kpcap.io", "packetcaptures", "", "", "the hook lists captures in every namespace"),
    (
        "patch",
        "kpcap.io",
        "packetcaptures",
        "users-ns",
        "c",
        "the hook stops captures, removes the finalizer",
    ),
    ("delete", "kpcap.io", "packetcaptures", "users-ns", "c", "the hook deletes the stopped captures"),
    (
        "get",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "",
        "kpcap.io",
        "the hook reads whether an operator (not the chart) made kpcap.io",
    ),
    (
        "get",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "",
        "kpcap.io",
        "the hook reads whether Kopf made the mutating kpcap.io",
    ),
    (
        "delete",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "",
        "kpcap.io",
        "the hook deletes the webhook configuration an operator created",
    ),
    (
        "delete",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "",
        "kpcap.io",
        "the hook deletes the mutating configuration Kopf created",
    ),
    ("list", "apps", "daemonsets", NAMESPACE, "", "the hook finds capture DaemonSets left behind"),
    ("delete", "apps", "daemonsets", NAMESPACE, "x", "the hook deletes them"),
]
# operator/kpcap_operator/selftest.py (api.enabled off here: no services/proxy).
SELFTEST_CALLS: list[Call] = [
    ("create", "kpcap.io", "packetcaptures", NAMESPACE, "", "helm test's webhook probe (a dry run)"),
    ("get", "apps", "daemonsets", NAMESPACE, SAMPLER_SA, "helm test reads the samplers' wanted count"),
    ("list", "", "pods", NAMESPACE, "", "helm test finds the sampler pods' addresses"),
]
NOT_GRANTED: list[tuple[str, Call]] = [
    (UNINSTALL_SA, ("delete", "apps", "daemonsets", "default", "x", "")),
    (UNINSTALL_SA, ("get", "", "secrets", NAMESPACE, "", "")),
    (
        UNINSTALL_SA,
        ("delete", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "other", ""),
    ),
    (UNINSTALL_SA, ("patch", "kpcap.io", "packetcaptures/status", "users-ns", "c", "")),
    (SELFTEST_SA, ("create", "kpcap.io", "packetcaptures", "users-ns", "", "")),
    (SELFTEST_SA, ("get", "apps", "daemonsets", NAMESPACE, "other", "")),
    (SELFTEST_SA, ("get", "", "secrets", NAMESPACE, "", "")),
    (OPERATOR_SA, ("create", "", "serviceaccounts/token", NAMESPACE, AGENT_SA, "")),
    (OPERATOR_SA, ("get", "", "pods", NAMESPACE, "x", "")),
    (OPERATOR_SA, ("list", "", "pods", "users-ns", "", "")),
    (SAMPLER_SA, ("get", "", "secrets", NAMESPACE, "", "")),
    (SAMPLER_SA, ("list", "", "pods", NAMESPACE, "", "")),
    (SAMPLER_SA, ("create", "", "serviceaccounts/token", NAMESPACE, OPERATOR_SA, "")),
    (SAMPLER_SA, ("get", "kpcap.io", "packetcaptures", "users-ns", "c", "")),
    (OPERATOR_SA, ("get", "", "secrets", NAMESPACE, "", "")),
    (OPERATOR_SA, ("create", "", "pods", NAMESPACE, "", "")),
    (OPERATOR_SA, ("create", "apps", "daemonsets", "default", "", "")),
    (OPERATOR_SA, ("delete", "kpcap.io", "packetcaptures", "users-ns", "c", "")),
    (
        OPERATOR_SA,
        ("patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "kpcap.io", ""),
    ),
    (OPERATOR_SA, ("patch", "coordination.k8s.io", "leases", NAMESPACE, "other", "")),
    # The REST API's grants, absent while api.enabled is false (the default the installation uses).
    (OPERATOR_SA, ("create", "authentication.k8s.io", "tokenreviews", "", "", "")),
    (OPERATOR_SA, ("create", "authorization.k8s.io", "subjectaccessreviews", "", "", "")),
    (OPERATOR_SA, ("create", "kpcap.io", "packetcaptures", "users-ns", "", "")),
    (OPERATOR_SA, ("get", "", "configmaps", NAMESPACE, "kpcap-ownership-users-ns", "")),
    (OPERATOR_SA, ("update", "", "configmaps", NAMESPACE, "kpcap-ownership-users-ns", "")),
    (AGENT_SA, ("list", "kpcap.io", "packetcaptures", "", "", "")),
    (AGENT_SA, ("create", "kpcap.io", "packetcaptures", "users-ns", "", "")),
    (AGENT_SA, ("patch", "kpcap.io", "packetcaptures", "users-ns", "c", "")),
    (AGENT_SA, ("get", "", "secrets", NAMESPACE, "", "")),
    (AGENT_SA, ("patch", "kpcap.io", "packetcaptures/status", "users-ns", "c", "")),
    (AGENT_SA, ("list", "kpcap.io", "packetcapturereports", "users-ns", "", "")),
    (AGENT_SA, ("delete", "kpcap.io", "packetcapturereports", "users-ns", "r", "")),
    (OPERATOR_SA, ("patch", "kpcap.io", "packetcapturereports", "users-ns", "r", "")),
    (OPERATOR_SA, ("create", "kpcap.io", "packetcapturereports", "users-ns", "", "")),
]


def _allowed(authz: client.AuthorizationV1Api, sa: str, call: Call) -> bool:
    verb, group, resource, namespace, name, _ = call
    resource, _, subresource = resource.partition("/")
    review = authz.create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{NAMESPACE}:{sa}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{NAMESPACE}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                    "name": name,
                },
            },
        }
    )
    return bool(review.status.allowed)


def _denied(authz: client.AuthorizationV1Api, sa: str, calls: list[Call]) -> list[Call]:
    return [call for call in calls if not _allowed(authz, sa, call)]


def _all_allowed(authz: client.AuthorizationV1Api, sa: str, calls: list[Call]) -> bool:
    return all(_allowed(authz, sa, call) for call in calls)


def _roles(cluster: LocalCluster) -> list[tuple[str, str, list[Call]]]:
    """(kubectl kind/name, namespace, calls of its subject) for the chart's three roles."""
    del cluster
    return [
        (f"clusterrole/{RELEASE}-operator", "", OPERATOR_CALLS),
        (f"role/{RELEASE}-operator", NAMESPACE, OPERATOR_CALLS),
        (f"clusterrole/{RELEASE}-agent", "", AGENT_CALLS),
        (f"clusterrole/{RELEASE}-sampler", "", SAMPLER_CALLS),
        (f"clusterrole/{UNINSTALL_SA}", "", UNINSTALL_CALLS),
        (f"role/{UNINSTALL_SA}", NAMESPACE, UNINSTALL_CALLS),
        (f"role/{SELFTEST_SA}", NAMESPACE, SELFTEST_CALLS),
    ]


def _subject(ref: str) -> str:
    """The ServiceAccount bound to a role of ``_roles``."""
    name = ref.split("/", 1)[1]
    if name in {UNINSTALL_SA, SELFTEST_SA}:
        return name
    return AGENT_SA if "agent" in ref else SAMPLER_SA if "sampler" in ref else OPERATOR_SA


@pytest.mark.e2e
def test_rbac_each_verb_of_each_rule_is_needed(installation: Installation) -> None:
    cluster = installation.cluster
    authz = client.AuthorizationV1Api(cluster.api_client())
    for call in OPERATOR_CALLS:
        assert _allowed(authz, OPERATOR_SA, call), f"operator cannot {call}"
    for call in AGENT_CALLS:
        assert _allowed(authz, AGENT_SA, call), f"agent cannot {call}"
    for call in SAMPLER_CALLS:
        assert _allowed(authz, SAMPLER_SA, call), f"sampler cannot {call}"
    for sa, calls in ((UNINSTALL_SA, UNINSTALL_CALLS), (SELFTEST_SA, SELFTEST_CALLS)):
        for call in calls:
            assert _allowed(authz, sa, call), f"{sa} cannot {call}"
    for sa, call in NOT_GRANTED:
        assert not _allowed(authz, sa, call), f"{sa} may {call} but should not"

    # Sufficient for the operator itself: refused nothing while every grant was in place (the
    # module's captures ran before). The loop below takes grants away, and refusals then are due.
    pods = installation.operator_pods()
    logs = cluster.pod_logs(namespace=NAMESPACE, pod=pods[0]["metadata"]["name"])
    assert "Forbidden" not in logs, logs[-4000:]

    table: list[str] = []
    for ref, namespace, calls in _roles(cluster):
        sa = _subject(ref)
        ns_args = ["-n", namespace] if namespace else []
        original = json.loads(cluster.kubectl("get", ref, *ns_args, "-o", "json").stdout)
        for index, rule in enumerate(original["rules"]):
            for verb in rule["verbs"]:
                reduced = json.loads(json.dumps(original))
                for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "annotations"):
                    reduced["metadata"].pop(key, None)
                rest = [v for v in rule["verbs"] if v != verb]
                if rest:
                    reduced["rules"][index]["verbs"] = rest
                else:
                    del reduced["rules"][index]
                cluster.kubectl("replace", "-f", "-", stdin=json.dumps(reduced))
                try:
                    broken = wait_for(
                        functools.partial(_denied, authz, sa, [c for c in calls if c[0] == verb]),
                        timeout=10,
                        interval=0.3,
                        what=f"a call to be denied without {verb} on {rule['resources']} in {ref}",
                    )
                finally:
                    restore = {**original, "metadata": reduced["metadata"]}
                    cluster.kubectl("replace", "-f", "-", stdin=json.dumps(restore))
                table.append(f"{ref} {rule['resources']} {verb}: breaks {sorted({c[5] for c in broken})}")
                wait_for(
                    functools.partial(_all_allowed, authz, sa, [c for c in calls if c[0] == verb]),
                    timeout=10,
                    interval=0.3,
                    what=f"{ref} restored",
                )
    print("\n".join(table))
    # And it outlived every grant taken away for a moment: it never restarted.
    pods = installation.operator_pods()
    assert [s["restartCount"] for p in pods for s in p["status"]["containerStatuses"]] == [0], pods


@pytest.mark.e2e
def test_rbac_without_report_writes_the_agents_cannot_report(
    installed: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """Behaviour, not just authorisation: the same capture fails when the agents may not report."""
    cluster = installed
    ref = f"clusterrole/{RELEASE}-agent"
    original = json.loads(cluster.kubectl("get", ref, "-o", "json").stdout)
    reduced = json.loads(json.dumps(original))
    reduced["rules"] = [r for r in reduced["rules"] if r["resources"] != ["packetcapturereports"]]
    cluster.kubectl("replace", "-f", "-", stdin=json.dumps(reduced))
    try:
        assert cluster.s3 is not None
        bucket = f"kpcap-chart-{secrets.token_hex(4)}"
        cluster.s3.s3_client().create_bucket(Bucket=bucket)
        final, _ = _run_capture(
            cluster,
            namespace,
            tmp_path,
            name="no-report",
            time_limit=2,
            marker="x",
            destination=f"s3://{bucket}/x?region=us-east-1&endpoint={cluster.s3.endpoint}",
        )
        status = final.get("status") or {}
        assert status.get("status") == "failed", status
        assert not status.get("nodes"), "no agent could write its node's entry"
    finally:
        current = json.loads(cluster.kubectl("get", ref, "-o", "json").stdout)
        cluster.kubectl("replace", "-f", "-", stdin=json.dumps({**original, "metadata": current["metadata"]}))
        _cleanup(cluster, namespace)
