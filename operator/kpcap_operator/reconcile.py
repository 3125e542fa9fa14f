"""One idempotent reconcile pass for a PacketCapture: read, decide (pure), act through the adapter.

Everything the pass needs is in the object's status and in the cluster, so a restarted operator picks
up where it left: it never creates a second DaemonSet (creation is by a fixed name) and never loses
status (agents write their reports into the object itself).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kpcap.errors import SpecInvalid
from kpcap.model import (
    CaptureSpec,
    CaptureStatus,
    CaptureType,
    NodePhase,
    capture_id,
    format_rfc3339,
    parse_spec,
)
from kpcap.storage import PCAP_CONTENT_TYPE, StorageError
from kpcap_operator import decisions, manifests, samples
from kpcap_operator.kube import Kube
from kpcap_operator.samples import Sampling
from kpcap_operator.settings import OperatorSettings

Json = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(slots=True)
class Result:
    """What a pass wants written: a status merge patch and Events to post."""

    status: Json = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    finished: CaptureStatus | None = None
    sample_from: list[str] | None = None
    """An admitted simple capture: the nodes whose samplers to ask (outside the admission lock)."""


def _refuse(*, reason: str, message: str, now: datetime) -> Result:
    stamp = format_rfc3339(now)
    return Result(
        status={
            "status": CaptureStatus.FAILED.value,
            "submitted": stamp,
            "errorMessage": message,
            "packetsCaptured": 0,
            "packetsRemaining": 0,
            "conditions": [
                decisions.condition(kind="Admitted", ok=False, reason=reason, message=message, now=now),
                decisions.condition(kind="Complete", ok=False, reason=reason, message=message, now=now),
            ],
        },
        events=[Event("Warning", reason, message)],
        finished=CaptureStatus.FAILED,
    )


# Kopf runs handlers concurrently (a thread pool) and writes a pass's status only after it returns. So
# two full captures created at once could both start: A is admitted before B exists; B (same
# creationTimestamp second, smaller uid, so "older") then lists A while A's status patch is still in
# flight, sees it undecided and younger, and is admitted too. Admission passes are therefore
# serialised, and each sees the decisions of earlier passes whose status has not landed yet.
class AdmissionLedger:
    """Serialises admission passes of one operator process and remembers decisions in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided: dict[str, str] = {}  # uid -> status decided here, until the object shows one

    def with_decisions_in_flight(self, refs: list[decisions.CaptureRef]) -> list[decisions.CaptureRef]:
        return [
            dataclasses.replace(ref, status=self._decided[ref.uid])
            if not ref.status and ref.uid in self._decided
            else ref
            for ref in refs
        ]

    def admit(
        self, *, body: Mapping[str, Any], settings: OperatorSettings, kube: Kube, now: datetime
    ) -> Result:
        """First pass of a new capture: validate, apply the two rules, pick nodes, start it."""
        with self._lock:
            result = _admit(body=body, settings=settings, kube=kube, now=now, ledger=self)
            if result.status.get("status"):
                self._decided[body["metadata"]["uid"]] = result.status["status"]
            return result

    def landed(self, uid: str) -> None:
        """The object shows its decision now: no need to remember it."""
        self._decided.pop(uid, None)


def _admit(
    *, body: Mapping[str, Any], settings: OperatorSettings, kube: Kube, now: datetime, ledger: AdmissionLedger
) -> Result:
    meta = body["metadata"]
    try:
        spec = parse_spec(body.get("spec"), now=now)
    except SpecInvalid as invalid:
        return _refuse(reason=decisions.REASON_INVALID, message=str(invalid), now=now)
    me = decisions.capture_ref(body)
    others = ledger.with_decisions_in_flight(
        [decisions.capture_ref(other) for other in kube.list_captures(meta["namespace"])]
    )
    window = timedelta(seconds=settings.simple_rate_window_seconds)
    if spec.type == CaptureType.FULL:
        blocker = decisions.full_capture_conflict(capture=me, others=others)
    else:
        blocker = decisions.simple_rate_conflict(capture=me, others=others, window=window)
    if blocker is not None:
        reason, message = decisions.conflict_message(capture_type=spec.type, blocker=blocker, window=window)
        return _refuse(reason=reason, message=message, now=now)
    nodes = [decisions.node_info(node) for node in kube.list_nodes()]
    targets = decisions.target_nodes(spec=spec, nodes=nodes, colo_label=settings.colo_label)
    if not targets:
        message = decisions.no_nodes_message(spec=spec, nodes=nodes, colo_label=settings.colo_label)
        return _refuse(reason=decisions.REASON_NO_NODES, message=message, now=now)
    if spec.type == CaptureType.SIMPLE:
        message = f"sampling past traffic on {len(targets)} node(s): {', '.join(targets)}"
        return Result(
            status={"status": CaptureStatus.PENDING.value, "submitted": format_rfc3339(now)},
            events=[Event("Normal", "Admitted", message)],
            sample_from=targets,
        )
    cid = capture_id(meta["uid"])
    ensure_daemonset(body=body, spec=spec, targets=targets, settings=settings, kube=kube)
    stamp = format_rfc3339(now)
    message = f"capturing on {len(targets)} node(s): {', '.join(targets)}"
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
    *, body: Mapping[str, Any], spec: CaptureSpec, targets: list[str], settings: OperatorSettings, kube: Kube
) -> None:
    meta = body["metadata"]
    manifest = manifests.capture_daemonset(
        settings=settings,
        capture_id=capture_id(meta["uid"]),
        capture_name=meta["name"],
        capture_namespace=meta["namespace"],
        spec=spec,
        targets=targets,
    )
    if kube.create_daemonset(manifest):
        log.info(
            "created DaemonSet %s/%s for capture %s/%s on %s",
            settings.namespace,
            manifest["metadata"]["name"],
            meta["namespace"],
            meta["name"],
            targets,
        )


def progress(*, body: Mapping[str, Any], settings: OperatorSettings, kube: Kube, now: datetime) -> Result:
    """A pending or running capture: keep its DaemonSet, fold in reports, finish it when due."""
    meta, status = body["metadata"], body.get("status") or {}
    spec = parse_spec(body.get("spec"), now=None)  # admitted already: only re-read, no time bound
    targets = list(status.get("targetNodes") or [])
    started = decisions.parse_time(status.get("started")) or now
    cid = capture_id(meta["uid"])
    result = Result()
    outcome = decisions.aggregate(
        spec=spec,
        targets=targets,
        reports=status.get("nodes") or {},
        started=started,
        now=now,
        grace=timedelta(seconds=settings.report_grace_seconds),
    )
    if spec.stop and not status.get("stopRequested"):
        result.status["stopRequested"] = format_rfc3339(now)
        result.events.append(
            Event("Normal", "StopRequested", "spec.stop is true: agents end early and upload")
        )
    if not outcome.finished:
        # Recreate the DaemonSet if it vanished (a crash between status and create, or a manual delete).
        ensure_daemonset(body=body, spec=spec, targets=targets, settings=settings, kube=kube)
    else:
        deleted = kube.delete_capture_daemonsets(cid)
        log.info(
            "capture %s/%s %s; deleted %s", meta["namespace"], meta["name"], outcome.status.value, deleted
        )
    result.status.update(
        {
            "status": outcome.status.value,
            "packetsCaptured": outcome.packets_captured,
            "packetsRemaining": outcome.packets_remaining,
            "bytesCaptured": outcome.bytes_captured,
            "files": list(outcome.files),
            "nodesSummary": outcome.nodes_summary,
        }
    )
    previous = status.get("status")
    if outcome.finished:
        ok = outcome.status == CaptureStatus.SUCCESS
        reason = "Succeeded" if ok else ("NodesSilent" if outcome.silent_nodes else "CaptureFailed")
        message = (
            outcome.error_message or f"{outcome.packets_captured} packets in {len(outcome.files)} file(s)"
        )
        # None removes the field: this 1.20 apiserver build rejects "" (kubernetes#99804).
        result.status["errorMessage"] = outcome.error_message or None
        result.status["conditions"] = decisions.merge_conditions(
            status.get("conditions") or [],
            [
                decisions.condition(kind="Capturing", ok=False, reason=reason, message=message, now=now),
                decisions.condition(kind="Complete", ok=ok, reason=reason, message=message, now=now),
            ],
        )
        result.events.append(Event("Normal" if ok else "Warning", reason, message))
        result.finished = outcome.status
    elif previous != outcome.status.value:
        result.events.append(Event("Normal", "Running", f"first report from {outcome.nodes_summary} node(s)"))
    return result


def take_sample(
    *, body: Mapping[str, Any], targets: list[str], sampling: Sampling, admitted: Result, now: datetime
) -> Result:
    """A simple capture, admitted: ask the samplers, merge, keep the PCAP, finish at once."""
    meta = body["metadata"]
    spec = parse_spec(body.get("spec"), now=None)
    since_ns, until_ns = samples.sample_window(spec=spec, now=now)
    answers = sampling.samplers.ask(targets=targets, spec=spec, since_ns=since_ns, until_ns=until_ns)
    try:
        answered = [a for a in answers if a.records is not None]
        merged = samples.merge_newest(answered, limit=spec.packet_limit) if answered else None
    finally:
        for answer in answers:
            answer.close()
    # An answer cut short (reset, deadline) keeps the packets it brought, and names its node too.
    for answer in answered:
        if answer.cut_short:
            answer.error = "; ".join(answer.cut_short)
    silent = [a for a in answers if a.error is not None]
    stamp = format_rfc3339(now)
    admitted_condition = decisions.condition(
        kind="Admitted", ok=True, reason="Admitted", message=admitted.events[0].message, now=now
    )
    nodes: Json = {
        a.node: {"phase": NodePhase.FAILED.value, "error": a.error or "no answer", "updated": stamp}
        for a in silent
    }
    status: Json = {
        "submitted": admitted.status["submitted"],
        "started": stamp,
        "targetNodes": targets,
        "nodesSummary": f"{len(answers) - len(silent)}/{len(targets)}",
        "packetsRemaining": 0,
    }
    unanswered = "; ".join(f"{a.node}: {a.error}" for a in silent)
    failure: str | None = None
    failure_reason = "SamplersSilent"
    if merged is None:
        failure = f"no sampler answered: {unanswered}"
    else:
        key = sampling.store.key(namespace=meta["namespace"], capture_id=capture_id(meta["uid"]))
        try:
            uri = sampling.store.store.put_bytes(
                key=key, data=merged.pcap, content_type=PCAP_CONTENT_TYPE
            ).uri
        except StorageError as err:
            failure, failure_reason = f"the sampled packets could not be stored: {err}", "StorageFailed"
        else:
            for answer in answered:
                entry = nodes.setdefault(answer.node, {"phase": NodePhase.DONE.value, "updated": stamp})
                entry["packets"] = merged.per_node[answer.node]
            status.update(
                {
                    "packetsCaptured": merged.packets,
                    "bytesCaptured": merged.packet_bytes,
                    "files": [uri],
                }
            )
    status["nodes"] = nodes
    if failure is not None:
        log.warning("simple capture %s/%s failed: %s", meta["namespace"], meta["name"], failure)
        status.update({"status": CaptureStatus.FAILED.value, "errorMessage": failure, "packetsCaptured": 0})
        status["conditions"] = [
            admitted_condition,
            decisions.condition(kind="Complete", ok=False, reason=failure_reason, message=failure, now=now),
        ]
        return Result(
            status=status,
            events=[*admitted.events, Event("Warning", failure_reason, failure)],
            finished=CaptureStatus.FAILED,
        )
    message = f"{status['packetsCaptured']} sampled packet(s) from {status['nodesSummary']} node(s)" + (
        f"; no answer from {unanswered}" if silent else ""
    )
    log.info(
        "simple capture %s/%s: %s (window %s s, answers in %s)",
        meta["namespace"],
        meta["name"],
        message,
        spec.time_limit,
        ", ".join(f"{a.node} {a.seconds * 1000:.0f} ms" for a in answered),
    )
    status["status"] = CaptureStatus.SUCCESS.value
    status["conditions"] = [
        admitted_condition,
        decisions.condition(kind="Complete", ok=True, reason="Sampled", message=message, now=now),
    ]
    events = [*admitted.events, Event("Normal", "Sampled", message)]
    if silent:
        events.append(Event("Warning", "SamplersSilent", f"no answer from {unanswered}"))
    return Result(status=status, events=events, finished=CaptureStatus.SUCCESS)


def reconcile(
    *,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    kube: Kube,
    ledger: AdmissionLedger,
    sampling: Sampling,
    now_fn: Callable[[], datetime],
) -> Result:
    current = (body.get("status") or {}).get("status")
    if current:
        ledger.landed(body["metadata"]["uid"])
    if current in decisions.TERMINAL:
        kube.delete_capture_daemonsets(capture_id(body["metadata"]["uid"]))
        return Result()
    if not current:
        admitted = ledger.admit(body=body, settings=settings, kube=kube, now=now_fn())
        if admitted.sample_from is None:
            return admitted
        return take_sample(
            body=body, targets=admitted.sample_from, sampling=sampling, admitted=admitted, now=now_fn()
        )
    return progress(body=body, settings=settings, kube=kube, now=now_fn())
