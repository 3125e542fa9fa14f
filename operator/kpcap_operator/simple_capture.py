"""The simple-capture reconciler: ask the samplers, merge, keep the PCAP, finish in the same pass.

A simple capture never persists a non-terminal status: once admitted it is sampled at once, and a
pass that fails on the way is retried from admission.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from kpcap.kubeapi import status_time
from kpcap.logformat import capture_refs
from kpcap.model import CaptureSpec, CaptureStatus, NodePhase, capture_id
from kpcap.storage import PCAP_CONTENT_TYPE, StorageError
from kpcap_operator import decisions, samples
from kpcap_operator.result import Event, Result
from kpcap_operator.samples import SamplerAnswer, SampleStore

Json = dict[str, Any]
log = logging.getLogger(__name__)


class SamplerQuery(Protocol):
    """The samplers of the target nodes (``samples.Samplers``): one answer per target, in order."""

    def ask(
        self, *, targets: Sequence[str], spec: CaptureSpec, since_ns: int, until_ns: int
    ) -> list[SamplerAnswer]: ...


def admitted_message(targets: Sequence[str]) -> str:
    return f"sampling past traffic on {len(targets)} node(s): {', '.join(targets)}"


def take_sample(
    *,
    body: Mapping[str, Any],
    spec: CaptureSpec,
    targets: list[str],
    submitted: datetime,
    samplers: SamplerQuery,
    store: SampleStore,
    now: datetime,
) -> Result:
    """A simple capture, admitted at ``submitted``: ask the samplers, merge, keep the PCAP, finish."""
    meta = body["metadata"]
    since_ns, until_ns = samples.sample_window(spec=spec, now=now)
    answers = samplers.ask(targets=targets, spec=spec, since_ns=since_ns, until_ns=until_ns)
    try:
        answered = [a for a in answers if a.records is not None]
        merged = (
            samples.merge_newest(answered, limit=spec.packet_limit, snap_length=spec.snap_length)
            if answered
            else None
        )
    finally:
        for answer in answers:
            answer.close()
    # An answer cut short (reset, deadline) keeps the packets it brought, and names its node too.
    for answer in answered:
        if answer.cut_short:
            answer.error = "; ".join(answer.cut_short)
    silent = [a for a in answers if a.error is not None]
    stamp = status_time(now)
    admitted = Event("Normal", "Admitted", admitted_message(targets))
    admitted_condition = decisions.condition(
        kind="Admitted", ok=True, reason="Admitted", message=admitted.message, now=now
    )
    nodes: Json = {
        a.node: {"phase": NodePhase.FAILED.value, "error": a.error or "no answer", "updated": stamp}
        for a in silent
    }
    status: Json = {
        "submitted": status_time(submitted),
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
        key = store.key(namespace=meta["namespace"], capture_id=capture_id(meta["uid"]))
        try:
            uri = store.store.put_bytes(key=key, data=merged.pcap, content_type=PCAP_CONTENT_TYPE).uri
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
        log.warning(
            "simple capture %s/%s failed: %s",
            meta["namespace"],
            meta["name"],
            failure,
            extra=capture_refs(meta),
        )
        status.update({"status": CaptureStatus.FAILED.value, "errorMessage": failure, "packetsCaptured": 0})
        status["conditions"] = [
            admitted_condition,
            *decisions.terminal_conditions(ok=False, reason=failure_reason, message=failure, now=now),
        ]
        return Result(
            status=status,
            events=[admitted, Event("Warning", failure_reason, failure)],
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
        extra=capture_refs(meta),
    )
    status["status"] = CaptureStatus.SUCCESS.value
    status["conditions"] = [
        admitted_condition,
        *decisions.terminal_conditions(ok=True, reason="Sampled", message=message, now=now),
    ]
    events = [admitted, Event("Normal", "Sampled", message)]
    if silent:
        events.append(Event("Warning", "SamplersSilent", f"no answer from {unanswered}"))
    return Result(status=status, events=events, finished=CaptureStatus.SUCCESS)


def delete_sample(*, store: SampleStore, body: Mapping[str, Any]) -> None:
    """The operator's store keeps a simple capture's PCAP as long as its object exists."""
    meta = body["metadata"]
    store.store.delete(store.key(namespace=str(meta["namespace"]), capture_id=capture_id(meta["uid"])))
