"""What the reconcilers and the webhook need from the Kubernetes API: the interface ``kube.Kube`` implements.

Written as a Protocol so the reconcilers depend on these few calls only, and tests can pass a plain
in-memory object (the e2e suite proves ``Kube`` against a real apiserver).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

Json = dict[str, Any]


class Cluster(Protocol):
    def list_captures(self, namespace: str) -> list[Json]:
        """The PacketCapture objects of ``namespace``."""
        ...

    def list_nodes(self) -> list[Json]: ...

    def capture_daemonsets(self, capture_id: str) -> list[str]:
        """Names of the capture's DaemonSets (operator namespace), as observed: no write involved."""
        ...

    def create_daemonset(self, manifest: Json) -> bool:
        """Create it in the operator's namespace; False if one of that name exists already."""
        ...

    def delete_capture_daemonsets(self, capture_id: str) -> list[str]:
        """Delete every DaemonSet of the capture; the names deleted."""
        ...

    def agent_metrics_ports(self) -> set[int]:
        """The metrics ports of the live capture DaemonSets (``manifests.ANNOTATION_METRICS_PORT``)."""
        ...

    def node_reports(self, capture_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Node -> the status of its PacketCaptureReport, for every node of the capture that reported."""
        ...

    def reports_in_step_seconds(self) -> float:
        """How long the nodes' reports have been observed without a break (a broken watch, an
        apiserver restart, the operator's start: 0 until they are in step again)."""
        ...

    def pod_refusals(self, capture_id: str) -> list[str]:
        """Messages of the DaemonSet controller's ``FailedCreate`` Events on the capture's DaemonSets
        (pods it could not create), newest first; empty when there are none."""
        ...
