"""One idempotent reconcile pass for a PacketCapture: admit it, then hand it to its type's reconciler.

Admission observes first (the namespace's captures, the nodes), decides under the ledger's lock
(pure work only) and acts after: full captures in ``full_capture``, simple ones in
``simple_capture``. A capture that has a status already is a full one in progress (a simple capture
finishes in its admission pass).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kpcap.errors import SpecInvalid
from kpcap.model import TERMINAL, CaptureSpec, CaptureStatus, CaptureType, parse_spec
from kpcap_operator import admission, decisions, full_capture, metrics, simple_capture, spec_changes
from kpcap_operator.cluster import Cluster
from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.result import Result, refused
from kpcap_operator.samples import SampleStore
from kpcap_operator.settings import OperatorSettings
from kpcap_operator.simple_capture import SamplerQuery


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """A capture the rules let through, with the nodes it runs on (at least one)."""

    spec: CaptureSpec
    targets: list[str]
    at: datetime


def admit(
    *,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    cluster: Cluster,
    ledger: AdmissionLedger,
    now: datetime,
) -> Admitted | Result:
    """The first pass of a capture: validate, apply the two rules, pick nodes (a Result: refused)."""
    meta = body["metadata"]
    try:
        spec = parse_spec(body.get("spec"), now=now)
    except SpecInvalid as invalid:
        # An invalid capture counts for no rule, so it needs no place in the ledger.
        metrics.refused(source="operator", reason=decisions.REASON_INVALID)
        return refused(reason=decisions.REASON_INVALID, message=str(invalid), now=now)
    observed_at = ledger.observing()
    listed = admission.existing_captures(cluster.list_captures(meta["namespace"]))
    nodes = [decisions.node_info(node) for node in cluster.list_nodes()]
    me = decisions.capture_ref(body)
    window = timedelta(seconds=settings.simple_rate_window_seconds)
    with ledger.turn(namespace=meta["namespace"], others=listed, observed_at=observed_at) as turn:
        refusal = admission.refusal(capture=me, others=turn.others, window=window)
        if refusal is not None:
            turn.decided(me, status=CaptureStatus.FAILED.value, refused_by_rule=True)
            metrics.refused(source="operator", reason=refusal.reason)
            return refused(reason=refusal.reason, message=refusal.message, now=now)
        targets = decisions.target_nodes(spec=spec, nodes=nodes, colo_label=settings.colo_label)
        if not targets:
            turn.decided(me, status=CaptureStatus.FAILED.value)
            message = decisions.no_nodes_message(spec=spec, nodes=nodes, colo_label=settings.colo_label)
            metrics.refused(source="operator", reason=decisions.REASON_NO_NODES)
            return refused(reason=decisions.REASON_NO_NODES, message=message, now=now)
        turn.decided(me, status=CaptureStatus.PENDING.value)
    return Admitted(spec=spec, targets=targets, at=now)


def reconcile(
    *,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    cluster: Cluster,
    ledger: AdmissionLedger,
    samplers: SamplerQuery,
    sample_store: SampleStore,
    now_fn: Callable[[], datetime],
) -> Result:
    uid = body["metadata"]["uid"]
    current = (body.get("status") or {}).get("status")
    if current in TERMINAL:
        return Result()  # finished (Kopf's timer skips these; its cleanup is full_capture's)
    if current:
        ledger.landed(uid)
        return full_capture.progress(body=body, settings=settings, cluster=cluster, now=now_fn())
    admitted = admit(body=body, settings=settings, cluster=cluster, ledger=ledger, now=now_fn())
    if isinstance(admitted, Result):
        return admitted
    try:
        result = _carry_out(
            body=body,
            admitted=admitted,
            settings=settings,
            cluster=cluster,
            samplers=samplers,
            sample_store=sample_store,
            now_fn=now_fn,
        )
    except BaseException:
        ledger.forget(uid)  # not carried out: the pass is retried from admission
        raise
    # What later passes and the admission rules read, whatever the live spec becomes (spec_changes).
    result.status[spec_changes.ADMITTED_KEY] = spec_changes.stored(body.get("spec"))
    return result


def _carry_out(
    *,
    body: Mapping[str, Any],
    admitted: Admitted,
    settings: OperatorSettings,
    cluster: Cluster,
    samplers: SamplerQuery,
    sample_store: SampleStore,
    now_fn: Callable[[], datetime],
) -> Result:
    if admitted.spec.type == CaptureType.FULL:
        return full_capture.start(
            body=body,
            spec=admitted.spec,
            targets=admitted.targets,
            settings=settings,
            cluster=cluster,
            now=admitted.at,
        )
    return simple_capture.take_sample(
        body=body,
        spec=admitted.spec,
        targets=admitted.targets,
        submitted=admitted.at,
        samplers=samplers,
        store=sample_store,
        now=now_fn(),
    )
