"""How the agent talks to Kubernetes: read its capture, merge-patch its own node's status entry.

The agent's ServiceAccount may only read PacketCaptures and patch their status; this module makes
exactly those two calls and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import GROUP, PLURAL, VERSION, status_time
from kpcap.model import NodePhase

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReport:
    phase: NodePhase
    packets: int = 0
    bytes: int = 0
    drops: int = 0
    object_uri: str | None = None
    error: str | None = None

    def as_status_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "phase": self.phase.value,
            "packets": self.packets,
            "bytes": self.bytes,
            "drops": self.drops,
            "updated": status_time(),
        }
        # Absent rather than "": the 1.20 test apiserver refuses empty strings (kubernetes#99804).
        if self.object_uri:
            entry["objectUri"] = self.object_uri
        if self.error:
            entry["error"] = self.error
        return entry


class CaptureNotFoundError(LookupError):
    pass


class CaptureApi:
    """The agent's adapter to Kubernetes; ``api`` comes from ``kpcap.kubeapi.load_api_client``."""

    def __init__(self, api: client.ApiClient, *, namespace: str, name: str, node: str) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace, self.name, self.node = namespace, name, node

    def read(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as err:
            if err.status == 404:
                raise CaptureNotFoundError(
                    f"PacketCapture {self.namespace}/{self.name} no longer exists"
                ) from None
            raise
        return body

    def report(self, report: NodeReport) -> None:
        """Merge-patch ``status.nodes.<this node>``: no other node's entry is touched."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}/status"
        self.api.call_api(
            path,
            "PATCH",
            body={"status": {"nodes": {self.node: report.as_status_entry()}}},
            header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )
        log.info("reported %s: %s", self.node, report)
