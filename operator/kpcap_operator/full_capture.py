"""The full-capture reconciler: start the capture's DaemonSet, fold in the nodes' reports, finish.

Observe before act: the DaemonSet is created only when ``Cluster.capture_daemonsets`` (a watched
index) shows none, so a running capture makes no write per pass. The nodes' reports are their own
objects (PacketCaptureReports, read through ``Cluster.node_reports``, a watched index too);
everything else the pass needs is in the capture's status, so a restarted operator picks up where
it left. The status stays bounded whatever the node count: ``nodeCounts``, at most 50 node entries
(``nodesListed`` says which when there are more targets) and 50 files (``filesTotal``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from kpcap.kubeapi import parse_time, status_time
from kpcap.logformat import capture_refs
from kpcap.model import CaptureSpec, CaptureStatus, capture_id, parse_spec
from kpcap_operator import decisions, manifests, pod_refusals, spec_changes
from kpcap_operator.cluster import Cluster
from kpcap_operator.result import Event, Result
from kpcap_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
Json = dict[str, Any]
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
REPORTS_SETTLE_SECONDS = 10.0
"""After a break in the operator's view of the reports (an apiserver restart, its own start), the
report deadline moves out by up to this long: the agents' reports, retried through the outage (at
most 5 s apart), land before a node is called silent."""


def start(
    *,
    body: Mapping[str, Any],
    spec: CaptureSpec,
    targets: list[str],
    settings: OperatorSettings,
    cluster: Cluster,
    now: datetime,
) -> Result:
    """An admitted full capture: its DaemonSet on ``targets``, and the status saying so."""
    ensure_daemonset(body=body, spec=spec, targets=targets, settings=settings, cluster=cluster)
    cid = capture_id(body["metadata"]["uid"])
    stamp = status_time(now)
    message = f"capturing on {len(targets)} node(s): {decisions.some_nodes(targets)}"
    return Result(
        status={
            "status": CaptureStatus.PENDING.value,
            "submitted": stamp,
            "started": stamp,
            "targetNodes": targets,
            "nodesSummary": f"0/{len(targets)}",
            "packetsCaptured": 0,
            "packetsRemaining": spec.packet_limit * len(targets),
            "conditions": [
                decisions.condition(kind="Admitted", ok=True, reason="Admitted", message=message, now=now),
                decisions.condition(
                    kind="Capturing",
                    ok=True,
                    reason="DaemonSetCreated",
                    message=f"DaemonSet {settings.namespace}/{manifests.daemonset_name(cid)}",
                    now=now,
                ),
            ],
        },
        events=[Event("Normal", "Admitted", message)],
    )


def ensure_daemonset(
    *,
    body: Mapping[str, Any],
    spec: CaptureSpec,
    targets: list[str],
    settings: OperatorSettings,
    cluster: Cluster,
) -> None:
    """Create the capture's DaemonSet if none is observed (first pass, a crash, a manual delete)."""
    meta = body["metadata"]
    cid = capture_id(meta["uid"])
    if cluster.capture_daemonsets(cid):
        return
    ports = settings.agent_metrics_ports
    metrics_port = (
        None
        if ports is None
        else manifests.agent_metrics_port(capture_id=cid, ports=ports, taken=cluster.agent_metrics_ports())
    )
    if ports is not None and metrics_port is None:
        log.warning("every agent metrics port %d-%d is taken: capture %s serves none", *ports, cid)
    manifest = manifests.capture_daemonset(
        settings=settings,
        capture_id=cid,
        capture_name=meta["name"],
        capture_namespace=meta["namespace"],
        spec=spec,
        targets=targets,
        capture_uid=meta["uid"],
        metrics_port=metrics_port,
    )
    if cluster.create_daemonset(manifest):
        log.info(
            "created DaemonSet %s/%s for capture %s/%s on %s",
            settings.namespace,
            manifest["metadata"]["name"],
            meta["namespace"],
            meta["name"],
            targets,
            extra=capture_refs(meta),
        )


def remove_daemonsets(*, cluster: Cluster, body: Mapping[str, Any], why: str) -> list[str]:
    """The one place a capture's DaemonSets are removed: when it finishes, is deleted, or is found
    finished at start-up (an operator that stopped between the two)."""
    meta = body["metadata"]
    deleted = cluster.delete_capture_daemonsets(capture_id(meta["uid"]))
    if deleted:
        log.info(
            "capture %s/%s %s; deleted DaemonSets %s",
            meta["namespace"],
            meta["name"],
            why,
            deleted,
            extra=capture_refs(meta),
        )
    return deleted


def progress(
    *, body: Mapping[str, Any], settings: OperatorSettings, cluster: Cluster, now: datetime
) -> Result:
    """A pending or running capture: keep its DaemonSet, fold in reports, finish it when due."""
    status = body.get("status") or {}
    # The spec it admitted (stop may become true): never a spec changed since, which the agents,
    # running the admitted one from their environment, would not follow.
    spec = parse_spec(spec_changes.admitted(body), now=None)
    targets = list(status.get("targetNodes") or [])
    started = parse_time(status.get("started")) or now
    result = Result()
    cid = capture_id(body["metadata"]["uid"])
    reports = cluster.node_reports(cid)
    unsettled = max(0.0, REPORTS_SETTLE_SECONDS - cluster.reports_in_step_seconds())
    grace = settings.report_grace_seconds + decisions.rollout_allowance(len(targets)) + unsettled
    outcome = decisions.aggregate(
        spec=spec, targets=targets, reports=reports, started=started, now=now, grace=timedelta(seconds=grace)
    )
    if not outcome.finished and not reports:
        # No node reported yet: were the pods refused? (A read, only until the first report.)
        refusals = pod_refusals.admission_refusals(cluster.pod_refusals(cid))
        if refusals:
            outcome = pod_refusals.refused(
                outcome=outcome, refusals=refusals, namespace=settings.namespace, unreported=targets
            )
    if spec.stop and not status.get("stopRequested"):
        result.status["stopRequested"] = status_time(now)
        result.events.append(
            Event("Normal", "StopRequested", "spec.stop is true: agents end early and upload")
        )
    if not outcome.finished:
        ensure_daemonset(body=body, spec=spec, targets=targets, settings=settings, cluster=cluster)
    else:
        remove_daemonsets(cluster=cluster, body=body, why=outcome.status.value)
    listed = decisions.listed_nodes(targets=targets, reports=reports)
    result.status.update(
        {
            "status": outcome.status.value,
            "packetsCaptured": outcome.packets_captured,
            "packetsRemaining": outcome.packets_remaining,
            "bytesCaptured": outcome.bytes_captured,
            **decisions.listed_files(outcome.files),
            "nodesSummary": outcome.nodes_summary,
            "nodeCounts": decisions.node_counts(targets=targets, reports=reports),
            **({"nodesListed": listed["nodesListed"]} if "nodesListed" in listed else {}),
        }
    )
    # A merge patch of the entries: one no longer listed is removed, an unchanged one is not sent.
    nodes_patch = decisions.merge_patch_of(status.get("nodes") or {}, listed["nodes"])
    if nodes_patch:
        result.status["nodes"] = nodes_patch
    previous = status.get("status")
    updates = _spec_change_conditions(body=body, result=result, now=now)
    if outcome.finished:
        ok = outcome.status == CaptureStatus.SUCCESS
        reason = (
            "Succeeded"
            if ok
            else outcome.reason or ("NodesSilent" if outcome.silent_nodes else "CaptureFailed")
        )
        message = (
            outcome.error_message or f"{outcome.packets_captured} packets in {len(outcome.files)} file(s)"
        )
        # None removes the field: this 1.20 apiserver build rejects "" (kubernetes#99804).
        result.status["errorMessage"] = outcome.error_message or None
        updates += [
            decisions.condition(kind="Capturing", ok=False, reason=reason, message=message, now=now),
            *decisions.terminal_conditions(ok=ok, reason=reason, message=message, now=now),
        ]
        result.events.append(Event("Normal" if ok else "Warning", reason, message))
        result.finished = outcome.status
    elif previous != outcome.status.value:
        result.events.append(Event("Normal", "Running", f"first report from {outcome.nodes_summary} node(s)"))
    if updates:
        result.status["conditions"] = decisions.merge_conditions(status.get("conditions") or [], updates)
    return result


def _spec_change_conditions(*, body: Mapping[str, Any], result: Result, now: datetime) -> list[Json]:
    """``SpecChangeIgnored`` True while the live spec differs from the admitted one (a cluster with
    neither the webhook nor CEL lets such an edit through), False once it is back; an Event when it
    first shows."""
    problems = spec_changes.ignored_changes(body)
    existing = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
    if not problems:
        if existing.get(SPEC_CHANGE_IGNORED, {}).get("status") == "True":
            message = "the spec is as admitted again"
            return [
                decisions.condition(
                    kind=SPEC_CHANGE_IGNORED, ok=False, reason="SpecAsAdmitted", message=message, now=now
                )
            ]
        return []
    message = f"the capture runs the spec it admitted; {spec_changes.refusal_message(problems)}"
    if existing.get(SPEC_CHANGE_IGNORED, {}).get("message") != message:
        result.events.append(Event("Warning", SPEC_CHANGE_IGNORED, message))
    return [
        decisions.condition(
            kind=SPEC_CHANGE_IGNORED, ok=True, reason=SPEC_CHANGE_IGNORED, message=message, now=now
        )
    ]
