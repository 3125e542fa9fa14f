"""The chart's metrics switches: ServiceMonitor and PodMonitors (monitoring.coreos.com/v1) rendered
only when enabled, selecting exactly the objects that serve the ports they name; the agents' and
samplers' ports reach them in a form their settings accept."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpcap_agent.sampler_settings import SamplerServiceConfig
from kpcap_localcluster.binaries import tool
from kpcap_operator.manifests import ANNOTATION_METRICS_PORT, capture_labels
from kpcap_operator.settings import OperatorSettings

CHART = Path(__file__).resolve().parents[2] / "charts" / "kpcap"
NAMESPACE = "kpcap-system"
MONITORS = {"metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true"}


def rendered(*sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [
        tool("helm"),
        "template",
        "kpcap",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.20.2",
    ]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True, check=check)


def docs(*sets: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(*sets).stdout) if doc]


def one(found: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in found if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_no_monitor_unless_switched_on() -> None:
    kinds = {d["kind"] for d in docs()}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    # Off with metrics off as a whole, whatever the switches say.
    kinds = {d["kind"] for d in docs(*MONITORS, "metrics.enabled=false")}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_the_service_monitor_selects_the_metrics_service_only_and_its_port() -> None:
    found = docs(*MONITORS, "metrics.serviceMonitor.labels.release=prometheus")
    monitor = one(found, "ServiceMonitor", "kpcap-operator")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        d
        for d in found
        if d["kind"] == "Service" and wanted.items() <= (d["metadata"].get("labels") or {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["kpcap-metrics"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert port_names == {"metrics"}
    # The Service's port reaches the operator's container port of that name, which it serves.
    operator = one(found, "Deployment", "kpcap-operator")["spec"]["template"]["spec"]["containers"][0]
    (port,) = [p for p in operator["ports"] if p["name"] == "metrics"]
    assert env_of(operator)["KPCAP_METRICS_PORT"] == str(port["containerPort"])


def test_the_sampler_pod_monitor_selects_the_sampler_pods_and_their_metrics_port() -> None:
    found = docs(*MONITORS, "metrics.samplerPort=9455")
    monitor = one(found, "PodMonitor", "kpcap-sampler")
    sampler = one(found, "DaemonSet", "kpcap-sampler")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= sampler["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    container = sampler["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9455} in container["ports"]
    env = {**env_of(container), "KPCAP_NODE_NAME": "n1"}
    del env["KPCAP_SAMPLER_CA_DIR"]  # the mounted CA Secret, not here
    assert SamplerServiceConfig.from_env(env).metrics_port == 9455


def test_the_agent_pod_monitor_selects_capture_pods_and_takes_their_annotated_port() -> None:
    found = docs(*MONITORS, "metrics.agentPorts=9600-9609")
    monitor = one(found, "PodMonitor", "kpcap-capture-agents")
    labels = capture_labels(capture_id="0" * 32, namespace="team-a")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    # Prometheus names a pod annotation with every character but [a-zA-Z0-9_] made "_".
    annotation = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", ANNOTATION_METRICS_PORT)
    assert endpoint["relabelings"][0] == {"sourceLabels": [annotation], "regex": "[0-9]+", "action": "keep"}
    assert endpoint["relabelings"][1]["targetLabel"] == "__address__"
    assert annotation in endpoint["relabelings"][1]["sourceLabels"]
    operator = one(found, "Deployment", "kpcap-operator")["spec"]["template"]["spec"]["containers"][0]
    env = {**env_of(operator), "KPCAP_NAMESPACE": NAMESPACE}
    env = {k: v for k, v in env.items() if not k.startswith("KPCAP_API_TLS")}
    settings = OperatorSettings.from_env({**env, "KPCAP_API_TLS_ENABLED": "false"})
    assert settings.agent_metrics_ports == (9600, 9609)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("metrics.samplerPort=9444",), "metrics.samplerPort 9444 is sampler.port too"),
        (("metrics.agentPorts=9440-9450",), "metrics.agentPorts 9440-9450 includes port 9444"),
        (("metrics.agentPorts=9445-9450",), "metrics.agentPorts 9445-9450 includes port 9445"),
        (("metrics.agentPorts=9460",), "agentPorts"),
    ],
)
def test_ports_the_nodes_share_may_not_clash(sets: tuple[str, ...], message: str) -> None:
    result = rendered(*sets, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
