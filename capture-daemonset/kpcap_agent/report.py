"""How the agent talks to Kubernetes: read its capture, patch its own node's status entry.

The agent's ServiceAccount may only read PacketCaptures and patch their status; this module makes
exactly those two calls and nothing else.

Reports never go backwards, whatever order the writes land in (a write cut off by a client-side
timeout can still be applied later): a node's first ``running`` report and its terminal report
(``done``/``failed``) are merge patches that always land; every report between them (progress,
``uploading``) is a JSON Patch whose first op tests that the entry is still in the phase the
report moves from, so a report computed before a later one landed is refused (HTTP 422) and
dropped instead of replacing it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import GROUP, PLURAL, VERSION, status_time
from kpcap.model import NodePhase

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

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

    def write_for(self, report: NodeReport, *, moving_from: NodePhase | None = None) -> NodeWrite:
        """The write of ``report``, built now (its ``updated`` is now) to be sent by ``send``.

        ``moving_from`` None: a merge patch that always lands (the first ``running`` report, which
        creates the entry, and the terminal reports). Otherwise a JSON Patch that lands only while
        the entry's phase is still ``moving_from``. A terminal report is always a merge patch.
        """
        entry = report.as_status_entry()
        if moving_from is None or report.phase in (NodePhase.DONE, NodePhase.FAILED):
            return NodeWrite(
                report=report, content_type=MERGE_PATCH, body={"status": {"nodes": {self.node: entry}}}
            )
        where = f"/status/nodes/{json_pointer_token(self.node)}"
        return NodeWrite(
            report=report,
            content_type=JSON_PATCH,
            body=[
                {"op": "test", "path": f"{where}/phase", "value": moving_from.value},
                {"op": "replace", "path": where, "value": entry},
            ],
        )

    def send(self, write: NodeWrite) -> bool:
        """Apply ``write`` to ``status.nodes.<this node>`` (no other node's entry is touched).

        False: a conditional write found the entry already moved on (a later report landed first),
        so it was dropped.
        """
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}/status"
        try:
            self.api.call_api(
                path,
                "PATCH",
                body=write.body,
                header_params={"Content-Type": write.content_type, "Accept": "application/json"},
                auth_settings=["BearerToken"],
                response_type="object",
                _return_http_data_only=True,
            )
        except ApiException as err:
            if err.status == 422 and write.content_type == JSON_PATCH:
                log.info(
                    "discarded a stale report of %s (a later one landed first): %s (%s)",
                    self.node,
                    write.report,
                    _reason(err),
                )
                return False
            raise
        log.info("reported %s: %s", self.node, write.report)
        return True

    def report(self, report: NodeReport, *, moving_from: NodePhase | None = None) -> bool:
        """Build and send ``report`` now (see ``write_for``); False when it was stale and dropped."""
        return self.send(self.write_for(report, moving_from=moving_from))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWrite:
    """One report as the patch the apiserver gets: built when the report is made, sent later."""

    report: NodeReport
    content_type: str
    body: Any


def json_pointer_token(name: str) -> str:
    """``name`` as one JSON Pointer reference token (RFC 6901: ``~`` is ``~0``, ``/`` is ``~1``)."""
    return name.replace("~", "~0").replace("/", "~1")


def _reason(err: ApiException) -> str:
    """The apiserver's own words (a failed ``test`` op is named in the Status's causes)."""
    try:
        status = json.loads(err.body or "{}")
    except ValueError:
        return str(err.reason)
    causes = [str(c.get("message")) for c in (status.get("details") or {}).get("causes") or []]
    return "; ".join(causes) or str(status.get("message") or err.reason)
