"""How the agent talks to Kubernetes: read its capture, write its node's PacketCaptureReport.

The agent's ServiceAccount may only get PacketCaptures and create, get and patch
PacketCaptureReports; this module makes exactly those calls and nothing else. The report is one
object per (capture, node) in the capture's namespace (``kpcap.names.report_name``), owned by the
capture so the garbage collector deletes it with the capture.

Reports never go backwards, whatever order the writes land in (a write cut off by a client-side
timeout can still be applied later): a node's first ``running`` report creates the object and its
terminal report (``done``/``failed``) is a merge patch that always lands; every report between them
(progress, ``uploading``) is a JSON Patch whose first op tests that ``/status/phase`` is still the
phase the report moves from, so a report computed before a later one landed is refused (HTTP 422)
and dropped instead of replacing it.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from kpcap.kubeapi import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_CAPTURE_ID,
    PLURAL,
    REPORT_KIND,
    REPORT_PLURAL,
    VERSION,
    status_time,
)
from kpcap.kubehttp import ApiError, NotSent, Transport
from kpcap.model import NodePhase
from kpcap.names import capture_id, report_name

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
CREATE = "application/json"
"""The content type of the first report: a POST that creates the object."""

log = logging.getLogger(__name__)

# An apiserver restarting (an upgrade, a crash) refuses connections or answers 503 for seconds: calls
# are retried meanwhile, so a node's reports outlive it. A write is retried only when the apiserver
# certainly did not apply it (no connection, 429, 503): a conditional patch that landed but whose
# answer was lost would fail its own test op when sent again, and the node would stop there.
NOT_APPLIED_STATUS = frozenset({429, 503})
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_SECONDS = 60.0
"""How long a call is retried (the operator's default report grace: later, the node is silent)."""
RETRY_DELAYS = (0.5, 5.0)
"""First and largest pause between tries (doubling)."""


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
    """The agent's adapter to Kubernetes, over a :class:`kpcap.kubehttp.Transport` (in a pod the
    standard-library one, so the Kubernetes client is never imported on the way to the first report;
    else ``kpcap.kubeapi.ClientTransport``).

    ``uid`` is the capture's ``metadata.uid`` (the DaemonSet's KPCAP_CAPTURE_UID): the report's
    owner and, without dashes, the capture id in its name. Without it the capture is read once.
    """

    def __init__(
        self, transport: Transport, *, namespace: str, name: str, node: str, uid: str | None = None
    ) -> None:
        self.transport = transport
        self.namespace, self.name, self.node = namespace, name, node
        self._uid = uid

    @property
    def uid(self) -> str:
        if self._uid is None:
            self._uid = str(self.read()["metadata"]["uid"])
        return self._uid

    @property
    def report_name(self) -> str:
        """This node's PacketCaptureReport (same namespace as the capture)."""
        return report_name(capture_id=capture_id(self.uid), node=self.node)

    def read(self, *, cached: bool = False) -> dict[str, Any]:
        """The PacketCapture. ``cached``: from the apiserver's watch cache (resourceVersion=0), not
        etcd: what the stop watcher polls with, so thousands of agents polling cost etcd nothing."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"
        try:
            body: dict[str, Any] = self._call(path, "GET", query=[("resourceVersion", "0")] if cached else [])
        except ApiError as err:
            if err.status == 404:
                raise CaptureNotFoundError(
                    f"PacketCapture {self.namespace}/{self.name} no longer exists"
                ) from None
            raise
        return body

    def own_entry(self) -> dict[str, Any]:
        """This node's report as stored (its ``status``); empty when there is none yet."""
        try:
            body = self._call(self._report_path(), "GET")
        except ApiError as err:
            if err.status == 404:
                return {}
            raise
        return dict(body.get("status") or {})

    def write_for(self, report: NodeReport, *, moving_from: NodePhase | None = None) -> NodeWrite:
        """The write of ``report``, built now (its ``updated`` is now) to be sent by ``send``.

        ``moving_from`` None: the first ``running`` report, which creates the object. A terminal
        report is a merge patch that always lands (whatever ``moving_from``). Otherwise a JSON Patch
        that lands only while the report's phase is still ``moving_from``.
        """
        entry = report.as_status_entry()
        if report.phase in (NodePhase.DONE, NodePhase.FAILED):
            return NodeWrite(report=report, content_type=MERGE_PATCH, body={"status": entry})
        if moving_from is None:
            return NodeWrite(report=report, content_type=CREATE, body=self._new_report(entry))
        return NodeWrite(
            report=report,
            content_type=JSON_PATCH,
            body=[
                {"op": "test", "path": "/status/phase", "value": moving_from.value},
                {"op": "replace", "path": "/status", "value": entry},
            ],
        )

    def send(self, write: NodeWrite) -> bool:
        """Write this node's report (no other node's object is touched).

        False: a conditional write found the report already moved on (a later report landed first),
        or a first report found a terminal one there (a restarted pod), so it was dropped.
        """
        try:
            if write.content_type == CREATE:
                landed = self._create(write)
            else:
                self._patch(write)
                landed = True
        except ApiError as err:
            if err.status in (404, 422) and write.content_type == JSON_PATCH:
                # 422: the test op failed; 404: no report to move on from. Either way nothing to do.
                log.info(
                    "discarded a stale report of %s (a later one landed first): %s (%s)",
                    self.node,
                    write.report,
                    _reason(err),
                )
                return False
            raise
        if landed:
            log.info("reported %s: %s", self.node, write.report)
        return landed

    def report(self, report: NodeReport, *, moving_from: NodePhase | None = None) -> bool:
        """Build and send ``report`` now (see ``write_for``); False when it was stale and dropped."""
        return self.send(self.write_for(report, moving_from=moving_from))

    # --- the calls --------------------------------------------------------------------------------

    def _new_report(self, entry: dict[str, Any]) -> dict[str, Any]:
        uid = self.uid
        return {
            "apiVersion": API_VERSION,
            "kind": REPORT_KIND,
            "metadata": {
                "name": self.report_name,
                "namespace": self.namespace,
                "labels": {LABEL_CAPTURE_ID: capture_id(uid)},
                # The garbage collector deletes the report with its capture.
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": uid}],
            },
            "spec": {"capture": self.name, "node": self.node},
            "status": entry,
        }

    def _create(self, write: NodeWrite) -> bool:
        """Create the report; if it exists (a restarted pod), replace a non-terminal one only."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{REPORT_PLURAL}"
        try:
            self._call(path, "POST", body=write.body)
        except ApiError as err:
            if err.status != 409:
                raise
        else:
            return True
        current = self._call(self._report_path(), "GET")
        phase = (current.get("status") or {}).get("phase")
        if phase in (NodePhase.DONE, NodePhase.FAILED):
            log.info("%s already reported %s: %s dropped", self.node, phase, write.report)
            return False
        # Conditional on what was just read: a report landing in between wins, this one is dropped.
        body = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "status": write.body["status"],
        }
        try:
            self._call(self._report_path(), "PATCH", body=body, content_type=MERGE_PATCH)
        except ApiError as err:
            if err.status == 409:
                log.info("%s's report moved on meanwhile: %s dropped", self.node, write.report)
                return False
            raise
        return True

    def _patch(self, write: NodeWrite) -> None:
        """A merge patch that finds no report creates it (a terminal report before any other)."""
        try:
            self._call(self._report_path(), "PATCH", body=write.body, content_type=write.content_type)
        except ApiError as err:
            if err.status != 404 or write.content_type != MERGE_PATCH:
                raise
            created = self._new_report(write.body["status"])
            self._create(NodeWrite(report=write.report, content_type=CREATE, body=created))

    def _report_path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{REPORT_PLURAL}/{self.report_name}"

    def _call(
        self,
        path: str,
        method: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + RETRY_SECONDS
        delay = RETRY_DELAYS[0]
        while True:
            try:
                return self.transport.request(method, path, body=body, content_type=content_type, query=query)
            except (ApiError, OSError, http.client.HTTPException) as err:
                if not _retryable(err, read=method == "GET") or time.monotonic() + delay > deadline:
                    raise
                what = f"HTTP {err.status}" if isinstance(err, ApiError) else type(err).__name__
                log.warning("%s %s: %s; retrying in %.1f s", method, path, what, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_DELAYS[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWrite:
    """One report as the request the apiserver gets: built when the report is made, sent later."""

    report: NodeReport
    content_type: str
    body: Any


def _retryable(err: ApiError | OSError | http.client.HTTPException, *, read: bool) -> bool:
    """Whether a failed call may be sent again: a read after any passing failure, a write only when
    it never reached the apiserver or was turned away unapplied."""
    if isinstance(err, ApiError):
        return err.status in (TRANSIENT_STATUS if read else NOT_APPLIED_STATUS)
    return read or isinstance(err, NotSent)


def _reason(err: ApiError) -> str:
    """The apiserver's own words (a failed ``test`` op is named in the Status's causes)."""
    try:
        status = json.loads(err.body or "{}")
    except ValueError:
        return str(err.reason)
    causes = [str(c.get("message")) for c in (status.get("details") or {}).get("causes") or []]
    return "; ".join(causes) or str(status.get("message") or err.reason)
