"""Manifests the operator creates, built by pure functions from the capture and the settings.

A DaemonSet cannot be owned across namespaces (captures live in the users' namespaces, DaemonSets in
the operator's), so labels tie a DaemonSet to its capture and a finalizer on the capture makes sure
it is deleted.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Sequence
from typing import Any

from kpcap.kubeapi import LABEL_CAPTURE_ID
from kpcap.model import CaptureSpec, spec_to_dict
from kpcap_operator.settings import OperatorSettings

Json = dict[str, Any]

__all__ = [
    "LABEL_CAPTURE_ID",
    "capture_daemonset",
    "capture_labels",
    "daemonset_name",
    "progress_interval",
    "stop_poll_interval",
]

LABEL_CAPTURE_NAMESPACE = "kpcap.io/capture-namespace"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_CAPTURE_NAME = "kpcap.io/capture-name"
ANNOTATION_METRICS_PORT = "kpcap.io/metrics-port"
"""On the DaemonSet and its pods: the port the agents serve /metrics on (a PodMonitor relabels the
pods' address with it; it is no containerPort, see ``agent_metrics_port``)."""
AGENT_WORK_DIR = "/var/lib/kpcap"
# Room for a 1 GB capture (byteLimit's maximum) plus PCAP record headers.
AGENT_WORK_DIR_LIMIT = "1200Mi"


def daemonset_name(capture_id: str) -> str:
    return f"kpcap-capture-{capture_id}"


def progress_interval(targets: int) -> float:
    """Seconds between one agent's progress reports: 2 s, longer from 10 nodes on, so the progress
    reports of all of a capture's agents together stay near 5 writes/s (at 2,000 nodes: 400 s,
    longer than any capture may run, so none is written)."""
    return max(2.0, 0.2 * targets)


def stop_poll_interval(targets: int) -> float:
    """Seconds between one agent's reads of its capture (spec.stop): 1 s, longer from 200 nodes on,
    so all of them together stay near 200 reads/s (served from the apiserver's watch cache)."""
    return max(1.0, 0.005 * targets)


def agent_metrics_port(*, capture_id: str, ports: tuple[int, int], taken: Collection[int]) -> int | None:
    """The port this capture's agents serve metrics on: one of ``ports`` (first, last) that no live
    capture DaemonSet has (``taken``); None when all are.

    Agents run with hostNetwork, so two captures on a node (from two namespaces) need two ports.
    The search starts at a place given by the capture id, not at the first port, so two captures
    created at the same moment (before either DaemonSet is seen) still get different ports but for
    a hash collision (1 in the range's size). It is not declared as a containerPort: with
    hostNetwork that is a hostPort, and a clash would leave a capture pod unschedulable, where here
    it only costs that agent its metrics (it logs the port in use).
    """
    first, last = ports
    size = last - first + 1
    start = zlib.crc32(capture_id.encode()) % size
    for step in range(size):
        port = first + (start + step) % size
        if port not in taken:
            return port
    return None


def capture_labels(*, capture_id: str, namespace: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kpcap",
        LABEL_COMPONENT: "capture-agent",
        "app.kubernetes.io/managed-by": "kpcap-operator",
        LABEL_CAPTURE_ID: capture_id,
        LABEL_CAPTURE_NAMESPACE: namespace,
    }


def capture_daemonset(
    *,
    settings: OperatorSettings,
    capture_id: str,
    capture_name: str,
    capture_namespace: str,
    spec: CaptureSpec,
    targets: Sequence[str],
    capture_uid: str | None = None,
    metrics_port: int | None = None,
) -> Json:
    """One DaemonSet per full capture: hostNetwork agents on exactly ``targets``, NET_RAW/NET_ADMIN only."""
    labels = capture_labels(capture_id=capture_id, namespace=capture_namespace)
    annotations = {ANNOTATION_CAPTURE_NAME: capture_name}
    pod_spec: Json = {
        "serviceAccountName": settings.agent_service_account,
        "automountServiceAccountToken": True,
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": 60,  # SIGTERM: the agent uploads what it has, then reports
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    # Terms are ORed; a metadata.name field selector takes exactly one value each.
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                        for node in sorted(targets)
                    ]
                }
            }
        },
        # Every target node takes part, tainted or not: it was chosen by colo/nodeSelector already.
        "tolerations": [{"operator": "Exists"}],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "agent",
                "image": settings.agent_image,
                "imagePullPolicy": settings.agent_image_pull_policy,
                "args": ["capture"],
                "env": [
                    {"name": "KPCAP_CAPTURE_NAMESPACE", "value": capture_namespace},
                    {"name": "KPCAP_CAPTURE_NAME", "value": capture_name},
                    {"name": "KPCAP_CAPTURE_ID", "value": capture_id},
                    {"name": "KPCAP_CAPTURE_SPEC", "value": json.dumps(spec_to_dict(spec), sort_keys=True)},
                    {"name": "KPCAP_WORK_DIR", "value": AGENT_WORK_DIR},
                    {"name": "KPCAP_LOG_FORMAT", "value": settings.log_format},  # the operator's
                    # Derived from the report grace: the agent's upload retries end before it runs out.
                    {"name": "KPCAP_UPLOAD_DEADLINE_SECONDS", "value": str(settings.upload_deadline_seconds)},
                    # Scaled with the node count: the capture's reports and polls stay a flat load.
                    {
                        "name": "KPCAP_PROGRESS_INTERVAL_SECONDS",
                        "value": str(progress_interval(len(targets))),
                    },
                    {"name": "KPCAP_STOP_POLL_SECONDS", "value": str(stop_poll_interval(len(targets)))},
                    {"name": "KPCAP_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "KPCAP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "securityContext": {
                    # Raw sockets need these two capabilities as uid 0; nothing else is granted.
                    "runAsUser": 0,
                    "privileged": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]},
                },
                "resources": {
                    "requests": {"cpu": settings.agent_cpu_request, "memory": settings.agent_memory_request},
                    "limits": {"memory": settings.agent_memory_limit},
                },
                "volumeMounts": [{"name": "work", "mountPath": AGENT_WORK_DIR}],
            }
        ],
        "volumes": [{"name": "work", "emptyDir": {"sizeLimit": AGENT_WORK_DIR_LIMIT}}],
    }
    if capture_uid is not None:
        # The agents' reports are owned by the capture (deleted with it by the garbage collector).
        pod_spec["containers"][0]["env"].insert(3, {"name": "KPCAP_CAPTURE_UID", "value": capture_uid})
    if metrics_port is not None:
        annotations[ANNOTATION_METRICS_PORT] = str(metrics_port)
        pod_spec["containers"][0]["env"].append({"name": "KPCAP_METRICS_PORT", "value": str(metrics_port)})
    if settings.agent_priority_class:
        pod_spec["priorityClassName"] = settings.agent_priority_class
    if settings.agent_credentials_secret:
        pod_spec["containers"][0]["envFrom"] = [
            {"secretRef": {"name": settings.agent_credentials_secret, "optional": True}}
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": daemonset_name(capture_id),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "selector": {"matchLabels": {LABEL_CAPTURE_ID: capture_id}},
            # A capture's pods are never rolled: a new template would capture again.
            "updateStrategy": {"type": "OnDelete"},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }
