"""What the operator decides, as pure functions of the objects it reads (no API calls here).

Admission (the two upstream rules), target nodes, and the capture's status from its nodes' reports.
Everything is decided from creation order ``(creationTimestamp, uid)``, a total order every operator
replica and the webhook agree on: when two full captures are created at the same instant, exactly
one of them is first, whoever evaluates them and in whichever order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kpcap.errors import SpecInvalid
from kpcap.kubeapi import parse_time
from kpcap.kubeapi import status_time as rfc3339
from kpcap.model import TERMINAL, CaptureSpec, CaptureStatus, CaptureType, NodePhase, parse_spec
from kpcap_operator import spec_changes

Json = dict[str, Any]

ACTIVE = frozenset({CaptureStatus.PENDING, CaptureStatus.RUNNING})
NO_PACKETS_MESSAGE = "No packets matched the filter in the time limit given"

# status.conditions reasons a capture can be refused with (kept stable: tests and users match them).
REASON_INVALID = "InvalidSpec"
REASON_CONCURRENCY = "FullCaptureAlreadyActive"
REASON_RATE = "SimpleCaptureRateLimited"
REASON_NO_NODES = "NoMatchingNodes"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureRef:
    """The facts about one PacketCapture that admission needs."""

    name: str
    uid: str
    created: datetime
    type: str | None
    status: str | None
    refused_by_rule: bool
    valid: bool

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.created, self.uid)

    @property
    def undecided(self) -> bool:
        return not self.status


def capture_ref(body: Mapping[str, Any]) -> CaptureRef:
    # The spec as admitted (spec_changes): an edit made without the webhook cannot change the rules.
    meta, spec, status = body["metadata"], spec_changes.admitted(body), body.get("status") or {}
    reasons = {c.get("reason") for c in status.get("conditions") or []}
    try:
        parse_spec(spec, now=None)
        valid = True
    except SpecInvalid:
        valid = False
    return CaptureRef(
        name=meta["name"],
        uid=meta["uid"],
        created=parse_time(meta.get("creationTimestamp")) or datetime.now(UTC),
        type=spec.get("type"),
        status=status.get("status"),
        refused_by_rule=bool(reasons & {REASON_CONCURRENCY, REASON_RATE}),
        valid=valid,
    )


def full_capture_conflict(*, capture: CaptureRef, others: Sequence[CaptureRef]) -> CaptureRef | None:
    """The full capture that keeps ``capture`` from running (one pending or running per namespace)."""
    blockers = [
        other
        for other in others
        if other.uid != capture.uid
        and other.type == CaptureType.FULL
        and (
            other.status in ACTIVE
            # Created before this one and not yet decided: it will be admitted first.
            or (other.undecided and other.valid and other.order < capture.order)
        )
    ]
    return min(blockers, key=lambda ref: ref.order) if blockers else None


def simple_rate_conflict(
    *, capture: CaptureRef, others: Sequence[CaptureRef], window: timedelta
) -> CaptureRef | None:
    """The simple capture submitted within ``window`` of ``capture`` (one per namespace per window).

    A capture already decided (and not itself refused by a rule) was submitted first, whatever the
    timestamps say: creationTimestamp has one-second resolution, so two captures a moment apart can
    carry the same second, and the uid tie-break is only for captures still undecided together.
    """

    def blocks(other: CaptureRef) -> bool:
        if other.undecided:
            return other.order < capture.order and capture.created - other.created < window
        return abs(capture.created - other.created) < window

    blockers = [
        other
        for other in others
        if other.uid != capture.uid
        and other.type == CaptureType.SIMPLE
        and other.valid
        and not other.refused_by_rule
        and blocks(other)
    ]
    return max(blockers, key=lambda ref: ref.order) if blockers else None


def conflict_message(*, capture_type: str, blocker: CaptureRef, window: timedelta) -> tuple[str, str]:
    """(reason, message) for a capture refused by one of the two rules."""
    if capture_type == CaptureType.FULL:
        return (
            REASON_CONCURRENCY,
            f"only one pending or running full capture is allowed per namespace; "
            f"{blocker.name} (id {blocker.uid.replace('-', '')}) is {blocker.status or 'pending'}",
        )
    return (
        REASON_RATE,
        f"only one simple capture is allowed per namespace every {int(window.total_seconds())} s; "
        f"{blocker.name} was submitted at {rfc3339(blocker.created)}",
    )


# --- target nodes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    ready: bool
    schedulable: bool


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    conditions = (node.get("status") or {}).get("conditions") or []
    return NodeInfo(
        name=node["metadata"]["name"],
        labels=node["metadata"].get("labels") or {},
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


def target_nodes(*, spec: CaptureSpec, nodes: Sequence[NodeInfo], colo_label: str) -> list[str]:
    """Ready, schedulable nodes in ``spec.colo`` (via ``colo_label``) that match ``spec.nodeSelector``."""
    chosen = []
    for node in nodes:
        if not (node.ready and node.schedulable):
            continue
        if spec.colo is not None and node.labels.get(colo_label) != spec.colo:
            continue
        if any(node.labels.get(k) != v for k, v in spec.node_selector.items()):
            continue
        chosen.append(node.name)
    return sorted(chosen)


def no_nodes_message(*, spec: CaptureSpec, nodes: Sequence[NodeInfo], colo_label: str) -> str:
    wanted = []
    if spec.colo is not None:
        wanted.append(f"{colo_label}={spec.colo} (spec.colo)")
    wanted += [f"{k}={v} (spec.nodeSelector)" for k, v in sorted(spec.node_selector.items())]
    matching_labels = [
        n
        for n in nodes
        if (spec.colo is None or n.labels.get(colo_label) == spec.colo)
        and all(n.labels.get(k) == v for k, v in spec.node_selector.items())
    ]
    detail = (
        f"{len(matching_labels)} node(s) have those labels but none is Ready and schedulable"
        if matching_labels
        else "no node has those labels"
    )
    colos = sorted({n.labels[colo_label] for n in nodes if colo_label in n.labels})
    wanted_text = ", ".join(wanted) or "any node"
    return f"no node to capture on: wanted {wanted_text}; {detail}; colos in this cluster: {colos}"


# --- status from the nodes' reports -------------------------------------------------------------

ROLLOUT_SECONDS_PER_NODE = 0.05
"""Allowance per target node for its capture pod to be created, bound and started."""


def rollout_allowance(targets: int) -> float:
    """Seconds added to the report grace for ``targets`` nodes' first reports.

    The deadline runs from admission, but a DaemonSet's pods are not all created at once (the
    DaemonSet controller creates at most 250 per pass, then the scheduler binds and each kubelet
    starts them): at 2,000 nodes that takes a minute or more, which the grace (meant for a node
    that went silent) does not cover. 0.05 s per node: 100 s at 2,000, under 1 s below 20.
    """
    return ROLLOUT_SECONDS_PER_NODE * targets


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The capture's status as its nodes' reports say it is."""

    status: CaptureStatus
    packets_captured: int
    packets_remaining: int
    bytes_captured: int
    files: tuple[str, ...]
    nodes_summary: str
    error_message: str = ""
    silent_nodes: tuple[str, ...] = ()
    failed_nodes: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    """A failure's CamelCase reason when it is neither failed nor silent nodes (e.g. PodSecurity)."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def aggregate(
    *,
    spec: CaptureSpec,
    targets: Sequence[str],
    reports: Mapping[str, Mapping[str, Any]],
    started: datetime,
    now: datetime,
    grace: timedelta,
) -> Outcome:
    """Combine per-node reports; finished when every target reported an end or the deadline passed.

    Limits apply per node (each node's PCAP holds at most packetLimit packets / byteLimit bytes).
    """
    ended = {NodePhase.DONE, NodePhase.FAILED}
    entries = {node: reports.get(node) or {} for node in targets}
    packets = sum(int(e.get("packets") or 0) for e in entries.values())
    size = sum(int(e.get("bytes") or 0) for e in entries.values())
    done = [n for n, e in entries.items() if e.get("phase") == NodePhase.DONE]
    failed = {
        n: str(e.get("error") or "failed without a message")
        for n, e in entries.items()
        if e.get("phase") == NodePhase.FAILED
    }
    files = tuple(str(entries[n]["objectUri"]) for n in done if entries[n].get("objectUri"))
    remaining = sum(
        max(spec.packet_limit - int(e.get("packets") or 0), 0)
        for e in entries.values()
        if e.get("phase") not in ended
    )
    running = Outcome(
        status=CaptureStatus.RUNNING if any(entries.values()) else CaptureStatus.PENDING,
        packets_captured=packets,
        packets_remaining=remaining,
        bytes_captured=size,
        files=files,
        nodes_summary=f"{len(done)}/{len(targets)}",
    )
    deadline = started + timedelta(seconds=spec.time_limit) + grace
    all_ended = all(e.get("phase") in ended for e in entries.values())
    if not all_ended and now < deadline:
        return running
    silent = tuple(sorted(n for n, e in entries.items() if e.get("phase") not in ended))
    # Names listed up to LISTED_MAX each: the message goes into a condition (at most 32 KiB).
    problems = [f"{node}: {error}" for node, error in sorted(failed.items())[:LISTED_MAX]]
    if len(failed) > LISTED_MAX:
        problems.append(f"{len(failed) - LISTED_MAX} more failed (see their PacketCaptureReports)")
    if silent:
        problems.append(
            f"no report from {some_nodes(silent)} within timeLimit + {int(grace.total_seconds())} s"
        )
    finished = replace(running, packets_remaining=0, silent_nodes=silent, failed_nodes=failed)
    if problems:
        kept = f"; files kept from {some_nodes(done)}" if done else ""
        return replace(finished, status=CaptureStatus.FAILED, error_message="; ".join(problems) + kept)
    if packets == 0:
        return replace(finished, status=CaptureStatus.FAILED, error_message=NO_PACKETS_MESSAGE)
    return replace(finished, status=CaptureStatus.SUCCESS)


# --- the capture's bounded status ---------------------------------------------------------------

LISTED_MAX = 50
"""At most this many node entries and files in a capture's status (the rest: in its reports)."""
NODES_LISTED = "failed and unfinished"


def node_counts(*, targets: Sequence[str], reports: Mapping[str, Mapping[str, Any]]) -> Json:
    """Target nodes by phase; ``pending``: no report yet."""
    counts = {"pending": 0, **{phase.value: 0 for phase in NodePhase}}
    for node in targets:
        phase = (reports.get(node) or {}).get("phase")
        counts[phase if phase in counts else "pending"] += 1
    return counts


def listed_nodes(
    *, targets: Sequence[str], reports: Mapping[str, Mapping[str, Any]], limit: int = LISTED_MAX
) -> Json:
    """``nodes`` (and ``nodesListed``) of the status: every reported target up to ``limit`` targets
    (today's shape); above, the failed nodes, then those reported but not ended, at most ``limit``,
    and ``nodesListed`` saying so (never a silent cut)."""
    reported = {node: dict(reports[node]) for node in targets if reports.get(node)}
    if len(targets) <= limit:
        return {"nodes": reported}
    failed = [n for n, e in reported.items() if e.get("phase") == NodePhase.FAILED]
    unfinished = [
        n for n, e in reported.items() if e.get("phase") in (NodePhase.RUNNING, NodePhase.UPLOADING)
    ]
    wanted = failed + unfinished
    chosen = wanted[:limit]
    return {
        "nodes": {node: reported[node] for node in chosen},
        "nodesListed": f"{NODES_LISTED}, {len(chosen)} of {len(wanted)}",
    }


def listed_files(files: Sequence[str], *, limit: int = LISTED_MAX) -> Json:
    """``files`` of the status: all up to ``limit``; above, the first ``limit`` and ``filesTotal``."""
    if len(files) <= limit:
        return {"files": list(files)}
    return {"files": list(files[:limit]), "filesTotal": len(files)}


def merge_patch_of(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> Json:
    """A JSON merge patch turning the map ``current`` into ``wanted``: changed keys as wanted, keys
    no longer wanted as None (removed); nested maps likewise, unchanged ones left out."""
    patch: Json = {key: None for key in current if key not in wanted}
    for key, value in wanted.items():
        old = current.get(key)
        if old == value:
            continue
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            patch[key] = merge_patch_of(old, value)
        else:
            patch[key] = value
    return patch


def some_nodes(nodes: Sequence[str]) -> str:
    """``nodes`` for a message: all of them up to LISTED_MAX, else the first ones and a count."""
    if len(nodes) <= LISTED_MAX:
        return ", ".join(nodes)
    return f"{', '.join(nodes[:LISTED_MAX])} and {len(nodes) - LISTED_MAX} more"


def condition(*, kind: str, ok: bool, reason: str, message: str, now: datetime) -> Json:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now),
    }


def terminal_conditions(*, ok: bool, reason: str, message: str, now: datetime) -> list[Json]:
    """The two Job-style terminal conditions: ``Complete`` True on success, ``Failed`` True on failure
    (each False otherwise), so ``kubectl wait --for=condition=Failed`` and GitOps health checks can
    tell a failed capture from a running one. Both carry the outcome's reason."""
    return [
        condition(kind="Complete", ok=ok, reason=reason, message=message, now=now),
        condition(kind="Failed", ok=not ok, reason=reason, message=message, now=now),
    ]


def merge_conditions(existing: Sequence[Mapping[str, Any]], updates: Sequence[Json]) -> list[Json]:
    """Replace conditions by type; keep lastTransitionTime where the status did not change."""
    by_type: dict[str, Json] = {str(c["type"]): dict(c) for c in existing}
    for update in updates:
        old = by_type.get(update["type"])
        kept = old is not None and old.get("status") == update["status"]
        since = old["lastTransitionTime"] if kept and old is not None else update["lastTransitionTime"]
        by_type[update["type"]] = {**update, "lastTransitionTime": since}
    return list(by_type.values())
