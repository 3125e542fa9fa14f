"""Manifests the operator creates, built by pure functions from the capture and the settings.

A DaemonSet cannot be owned across namespaces (captures live in the users' namespaces, DaemonSets in
the operator's), so labels tie a DaemonSet to its capture and a finalizer on the capture makes sure
it is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kpcap.kubeapi import LABEL_CAPTURE_ID
from kpcap.model import CaptureSpec, spec_to_dict
from kpcap_operator.settings import OperatorSettings

Json = dict[str, Any]

__all__ = ["LABEL_CAPTURE_ID", "capture_daemonset", "capture_labels", "daemonset_name"]

LABEL_CAPTURE_NAMESPACE = "kpcap.io/capture-namespace"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_CAPTURE_NAME = "kpcap.io/capture-name"
AGENT_WORK_DIR = "/var/lib/kpcap"
# Room for a 1 GB capture (byteLimit's maximum) plus PCAP record headers.
AGENT_WORK_DIR_LIMIT = "1200Mi"


def daemonset_name(capture_id: str) -> str:
    return f"kpcap-capture-{capture_id}"


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
                    # Derived from the report grace: the agent's upload retries end before it runs out.
                    {"name": "KPCAP_UPLOAD_DEADLINE_SECONDS", "value": str(settings.upload_deadline_seconds)},
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
