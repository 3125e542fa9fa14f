"""A plain in-memory stand-in for the Kubernetes API behind ``kpcap_operator.cluster.Cluster``.

For the reconcilers' and the webhook's fast unit tests only: objects live in dicts and every write is
recorded, so a test can say "no DaemonSet create while it runs". The e2e suite proves ``Kube``.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kpcap.kubeapi import API_VERSION, KIND, status_time
from kpcap.model import capture_id
from kpcap_operator.manifests import ANNOTATION_METRICS_PORT, LABEL_CAPTURE_ID

Json = dict[str, Any]
ZONE = "topology.kubernetes.io/zone"


def node(name: str, *, zone: str | None = None, ready: bool = True, unschedulable: bool = False) -> Json:
    return {
        "metadata": {"name": name, "labels": {ZONE: zone} if zone else {}},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def capture(
    name: str,
    spec: Mapping[str, Any],
    *,
    namespace: str = "team-a",
    created: datetime,
    uid: str | None = None,
    status: Mapping[str, Any] | None = None,
) -> Json:
    body: Json = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "creationTimestamp": status_time(created),
        },
        "spec": dict(spec),
    }
    if status is not None:
        body["status"] = dict(status)
    return body


@dataclass
class InMemoryCluster:
    """Captures, nodes, the operator namespace's DaemonSets and the nodes' reports; every DaemonSet
    write recorded."""

    nodes: list[Json] = field(default_factory=list)
    captures: dict[tuple[str, str], Json] = field(default_factory=dict)
    daemonsets: dict[str, Json] = field(default_factory=dict)
    creates: list[str] = field(default_factory=list)
    """Every create_daemonset call, by name, including those refused because it existed (409)."""
    conflicts: int = 0
    deletes: list[str] = field(default_factory=list)
    reads: int = 0
    reports: dict[str, dict[str, Json]] = field(default_factory=dict)
    """Capture id -> node -> the status of its PacketCaptureReport (what the agents wrote)."""
    refusals: dict[str, list[str]] = field(default_factory=dict)
    """DaemonSet name -> messages of its FailedCreate Events (pods the apiserver refused)."""
    refusal_reads: int = 0
    reports_in_step: float = float("inf")
    """Seconds the reports have been observed without a break (an operator's view after a restart)."""

    # --- the Cluster interface ---------------------------------------------------------------------

    def list_captures(self, namespace: str) -> list[Json]:
        self.reads += 1
        return [copy.deepcopy(obj) for (ns, _), obj in self.captures.items() if ns == namespace]

    def list_nodes(self) -> list[Json]:
        self.reads += 1
        return copy.deepcopy(self.nodes)

    def capture_daemonsets(self, capture_id: str) -> list[str]:
        return sorted(
            name
            for name, ds in self.daemonsets.items()
            if ds["metadata"]["labels"].get(LABEL_CAPTURE_ID) == capture_id
        )

    def create_daemonset(self, manifest: Json) -> bool:
        name = manifest["metadata"]["name"]
        self.creates.append(name)
        if name in self.daemonsets:
            self.conflicts += 1
            return False
        self.daemonsets[name] = copy.deepcopy(manifest)
        return True

    def agent_metrics_ports(self) -> set[int]:
        annotations = (ds["metadata"].get("annotations", {}) for ds in self.daemonsets.values())
        ports = (found.get(ANNOTATION_METRICS_PORT) for found in annotations)
        return {int(port) for port in ports if port}

    def delete_capture_daemonsets(self, capture_id: str) -> list[str]:
        names = self.capture_daemonsets(capture_id)
        for name in names:
            del self.daemonsets[name]
            self.deletes.append(name)
        return names

    def node_reports(self, capture_id: str) -> dict[str, Json]:
        return copy.deepcopy(self.reports.get(capture_id, {}))

    def reports_in_step_seconds(self) -> float:
        return self.reports_in_step

    def pod_refusals(self, capture_id: str) -> list[str]:
        self.refusal_reads += 1
        return [m for name in self.capture_daemonsets(capture_id) for m in self.refusals.get(name, [])]

    # --- what tests do to it -----------------------------------------------------------------------

    def report(self, body: Mapping[str, Any], node: str, **entry: Any) -> None:
        """What a node's agent does: write its report (the whole status of its PacketCaptureReport)."""
        self.reports.setdefault(capture_id(body["metadata"]["uid"]), {})[node] = dict(entry)

    def add(self, body: Json) -> Json:
        meta = body["metadata"]
        self.captures[(meta["namespace"], meta["name"])] = body
        return body

    def get(self, body: Mapping[str, Any]) -> Json:
        meta = body["metadata"]
        return copy.deepcopy(self.captures[(meta["namespace"], meta["name"])])

    def patch_status(self, body: Mapping[str, Any], patch: Mapping[str, Any]) -> Json:
        """A JSON merge patch of ``status`` (None removes a field), as Kopf and the agents write it."""
        meta = body["metadata"]
        stored = self.captures[(meta["namespace"], meta["name"])]
        stored["status"] = _merge(stored.get("status") or {}, patch)
        return copy.deepcopy(stored)

    def daemonsets_of(self, body: Mapping[str, Any]) -> list[str]:
        return self.capture_daemonsets(capture_id(body["metadata"]["uid"]))


def _merge(target: Json, patch: Mapping[str, Any]) -> Json:
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
