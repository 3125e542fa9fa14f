"""The operator's one adapter to the Kubernetes API: every call its handlers and reconcilers make.

It implements ``cluster.Cluster`` (what the reconcilers and the webhook use) plus what the samplers'
client needs (pods, tokens). The operator's capture DaemonSets are observed by a list-then-watch
into a ``DaemonSetIndex``, so a running capture finds its DaemonSet there instead of re-creating it;
the agents' PacketCaptureReports (every namespace) likewise into a ``ReportIndex``, so a pass reads
its nodes' reports from memory, not from the apiserver.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import GROUP, LABEL_CAPTURE_ID, PLURAL, REPORT_PLURAL, VERSION, request_json
from kpcap_operator import metrics
from kpcap_operator.daemonset_index import DaemonSetIndex
from kpcap_operator.manifests import ANNOTATION_METRICS_PORT
from kpcap_operator.report_index import ReportIndex

Json = dict[str, Any]

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""Each watch ends server-side after this long and is resumed by a fresh listing."""
RETRY_SECONDS = (1.0, 60.0)
"""Back-off after a failed list or watch (first, most): meanwhile callers list by label instead."""


class Kube:
    def __init__(self, api: client.ApiClient, *, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.daemonsets = DaemonSetIndex()
        self.reports = ReportIndex()
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(capture_id)`` from the watch threads whenever one of the capture's reports
        or DaemonSets changes (``capture_loop``'s wake-ups); it must be quick and thread-safe."""
        self._listeners.append(listener)

    def _changed(self, capture_id: str) -> None:
        for listener in self._listeners:
            listener(capture_id)

    def _json(self, obj: Any) -> Json:
        data: Json = self.api.sanitize_for_serialization(obj)
        return data

    def list_captures(self, namespace: str) -> list[Json]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(listing.get("items", []))

    def create_capture(self, namespace: str, body: Json) -> Json:
        """Create a PacketCapture (the REST API's POST); the object as the apiserver stored it."""
        created: Json = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return created

    def patch_capture_status(self, namespace: str, name: str, status: Json) -> Json | None:
        """A merge patch of the capture's status subresource; the object as stored, None if gone."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        try:
            return request_json(
                self.api, "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def request_stop(self, namespace: str, name: str) -> None:
        """Set ``spec.stop`` (the REST API's stop): the agents end early and upload what they have."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"stop": True}}
        )

    def list_pods(self, label_selector: str) -> list[Json]:
        """Pods in the operator's namespace (the samplers, found by their label)."""
        found = self.core.list_namespaced_pod(self.namespace, label_selector=label_selector).items
        return [self._json(pod) for pod in found]

    def request_token(self, *, service_account: str, audience: str, seconds: int) -> tuple[str, float]:
        """A token of ``service_account`` (operator namespace) bound to ``audience``: (token, lifetime s)."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=seconds)
        )
        answer = self.core.create_namespaced_service_account_token(service_account, self.namespace, request)
        expires = answer.status.expiration_timestamp
        lifetime = float(seconds)
        if expires is not None:
            lifetime = max(60.0, (expires - datetime.now(UTC)).total_seconds())
        return str(answer.status.token), lifetime

    def list_nodes(self) -> list[Json]:
        # The JSON as sent: building and re-serialising V1Node models costs seconds at 2,000 nodes,
        # and the capture's report deadline runs from its admission.
        listing = self.core.list_node(_preload_content=False)
        items: list[Json] = json.loads(listing.data).get("items") or []
        return items

    # --- the capture DaemonSets -------------------------------------------------------------------

    def capture_daemonsets(self, capture_id: str) -> list[str]:
        """From the watched index; while it is not in step (starting, watch broken), by a listing."""
        known = self.daemonsets.names(capture_id)
        if known is not None:
            return known
        found = self.apps.list_namespaced_daemon_set(
            self.namespace, label_selector=f"{LABEL_CAPTURE_ID}={capture_id}"
        ).items
        return sorted(ds.metadata.name for ds in found)

    def create_daemonset(self, manifest: Json) -> bool:
        """Create it unless it exists; True if this call created it (idempotent across restarts)."""
        meta = manifest["metadata"]
        try:
            self.apps.create_namespaced_daemon_set(self.namespace, manifest)
        except ApiException as err:
            if err.status != 409:
                raise
            created = False
        else:
            created = True
        self.daemonsets.added(capture_id=meta["labels"][LABEL_CAPTURE_ID], name=meta["name"])
        return created

    def agent_metrics_ports(self) -> set[int]:
        """A listing, made only when a capture's DaemonSet is about to be created."""
        listing = self.apps.list_namespaced_daemon_set(self.namespace, label_selector=LABEL_CAPTURE_ID)
        ports = set()
        for ds in listing.items:
            given = (ds.metadata.annotations or {}).get(ANNOTATION_METRICS_PORT, "")
            if given.isdigit():
                ports.add(int(given))
        return ports

    def delete_capture_daemonsets(self, capture_id: str) -> list[str]:
        """Delete every DaemonSet of the capture (by label, so a renamed or duplicate one goes too)."""
        deleted = []
        for name in self.capture_daemonsets(capture_id):
            try:
                self.apps.delete_namespaced_daemon_set(
                    name, self.namespace, body=client.V1DeleteOptions(propagation_policy="Background")
                )
                deleted.append(name)
            except ApiException as err:
                if err.status != 404:
                    raise
            self.daemonsets.removed(capture_id=capture_id, name=name)
        return deleted

    # --- the nodes' reports ------------------------------------------------------------------------

    def node_reports(self, capture_id: str) -> dict[str, Json]:
        """Node -> report status of the capture: from the watched index; while it is not in step,
        by a listing of the capture's PacketCaptureReports (its label, every namespace)."""
        known = self.reports.reports(capture_id)
        if known is not None:
            return known
        listing = self.custom.list_cluster_custom_object(
            GROUP, VERSION, REPORT_PLURAL, label_selector=f"{LABEL_CAPTURE_ID}={capture_id}"
        )
        entries = (_report_entry(item) for item in listing.get("items", []))
        return {node: status for _, node, status in filter(None, entries)}

    def reports_in_step_seconds(self) -> float:
        """How long the watched reports have been in step without a break (0 while they are not)."""
        return self.reports.in_step_seconds()

    def pod_refusals(self, capture_id: str) -> list[str]:
        """Messages of the DaemonSet controller's ``FailedCreate`` Events on the capture's DaemonSets,
        newest first. Read only while no node has reported (``full_capture.progress``); a failed read
        is logged and counts as none (it must never hold a capture up)."""
        found: list[tuple[str, str]] = []
        for name in self.capture_daemonsets(capture_id):
            selector = f"involvedObject.kind=DaemonSet,involvedObject.name={name},reason=FailedCreate"
            try:
                events = self.core.list_namespaced_event(self.namespace, field_selector=selector).items
            except ApiException as err:
                log.warning("cannot read the Events of DaemonSet %s/%s: %s", self.namespace, name, err.reason)
                continue
            for event in events:
                when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
                found.append((str(when or ""), str(event.message or "")))
        return [message for _, message in sorted(found, reverse=True)]

    # --- the watches ------------------------------------------------------------------------------

    def start_watching(self) -> None:
        """Keep ``daemonsets`` and ``reports`` in step with the cluster from background threads until
        ``stop_watching``."""
        if not self._watchers:
            self._stop.clear()
            self._watchers = [
                threading.Thread(
                    target=self._keep_watching,
                    args=("capture DaemonSets", self.daemonsets.lost, self._watch_daemonsets),
                    name="kpcap-daemonset-watch",
                    daemon=True,
                ),
                threading.Thread(
                    target=self._keep_watching,
                    args=("node reports", self.reports.lost, self._watch_reports),
                    name="kpcap-report-watch",
                    daemon=True,
                ),
            ]
            for watcher in self._watchers:
                watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        self._watchers = []

    def _keep_watching(
        self, what: str, lost: Callable[[], None], list_and_watch: Callable[[client.ApiClient], None]
    ) -> None:
        # Its own connection pool: a watch holds a connection for minutes.
        api = client.ApiClient(self.api.configuration)
        delay = RETRY_SECONDS[0]
        while not self._stop.is_set():
            try:
                list_and_watch(api)
                delay = RETRY_SECONDS[0]
            except Exception as err:  # noqa: BLE001 - any failure: list again after a pause, keep observing
                lost()
                log.warning("watching %s failed (%s); listing by label meanwhile", what, err)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])

    def _watch_daemonsets(self, api: client.ApiClient) -> None:
        self._list_and_watch(client.AppsV1Api(api))

    def _watch_reports(self, api: client.ApiClient) -> None:
        """List every report once, then follow: a watch that ends in time is resumed from where it
        was (a listing of every report of every capture is not repeated every few minutes); a
        broken one (410 Gone, an error) raises, and the caller lists again."""
        custom = client.CustomObjectsApi(api)
        listing = custom.list_cluster_custom_object(
            GROUP, VERSION, REPORT_PLURAL, label_selector=LABEL_CAPTURE_ID
        )
        self.reports.replace_all(
            entry for entry in (_report_entry(item) for item in listing.get("items", [])) if entry is not None
        )
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                REPORT_PLURAL,
                label_selector=LABEL_CAPTURE_ID,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
            ):
                if self._stop.is_set():
                    stream.stop()
                    return
                kind, item = event["type"], event["object"]
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {item}")
                version = str(item["metadata"].get("resourceVersion") or version)
                entry = _report_entry(item)
                if entry is None:
                    continue
                capture_id, node, status = entry
                if kind == "DELETED":
                    self.reports.removed(capture_id=capture_id, node=node)
                    self._changed(capture_id)
                else:
                    before = self.reports.updated(capture_id=capture_id, node=node, status=status)
                    metrics.report_changed(before=before, after=status)
                    self._changed(capture_id)

    def _list_and_watch(self, apps: client.AppsV1Api) -> None:
        listing = apps.list_namespaced_daemon_set(self.namespace, label_selector=LABEL_CAPTURE_ID)
        self.daemonsets.replace_all(
            (ds.metadata.labels[LABEL_CAPTURE_ID], ds.metadata.name) for ds in listing.items
        )
        stream = watch.Watch()
        for event in stream.stream(
            apps.list_namespaced_daemon_set,
            self.namespace,
            label_selector=LABEL_CAPTURE_ID,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=WATCH_SECONDS,
        ):
            if self._stop.is_set():
                stream.stop()
                return
            kind, ds = event["type"], event["object"]
            if kind == "ERROR":
                raise RuntimeError(f"watch error: {ds}")
            cid, name = (ds.metadata.labels or {}).get(LABEL_CAPTURE_ID), ds.metadata.name
            if cid is None:
                continue
            if kind == "DELETED":
                self.daemonsets.removed(capture_id=cid, name=name)
                self._changed(cid)
            else:
                self.daemonsets.added(capture_id=cid, name=name)


def _report_entry(item: Json) -> tuple[str, str, Json] | None:
    """(capture id, node, status) of a PacketCaptureReport; None for one that is not an agent's."""
    capture_id = ((item.get("metadata") or {}).get("labels") or {}).get(LABEL_CAPTURE_ID)
    node = (item.get("spec") or {}).get("node")
    if not capture_id or not node:
        return None
    return str(capture_id), str(node), dict(item.get("status") or {})
