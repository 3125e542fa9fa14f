"""Prometheus metrics of the operator (served on settings.metrics_port, the process's default registry).

Labels stay bounded: capture type, status, node phase, refusal reason (the CamelCase reasons of
``decisions`` and ``spec_changes``), who refused; a capture's namespace and name only on gauges of
the captures still active (removed when each finishes). Upload counts and durations come from the
agents' PacketCaptureReports as the operator's watch sees them move (``report_changed``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from kpcap.kubeapi import parse_time
from kpcap.model import NodePhase

CAPTURES = Counter(
    "kpcap_captures_total", "Captures that reached a status, by type and status", ["type", "status"]
)
NODES_REPORTING = Gauge(
    "kpcap_capture_nodes_reporting",
    "Nodes whose agent has reported, per active capture",
    ["namespace", "capture"],
)
RECONCILE_ERRORS = Counter("kpcap_reconcile_errors_total", "Reconcile passes that raised", ["stage"])

ADMISSION_REFUSALS = Counter(
    "kpcap_admission_refusals_total",
    "Captures refused, by who refused (webhook, operator, api) and reason",
    ["source", "reason"],
)
CAPTURE_DURATION = Histogram(
    "kpcap_capture_duration_seconds",
    "From a capture's start to its terminal status, by type and status",
    ["type", "status"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0),
)
CAPTURE_NODES = Gauge(
    "kpcap_capture_nodes",
    "Target nodes of each active full capture, by phase (pending: no report yet)",
    ["namespace", "capture", "phase"],
)
REPORTED_UPLOADS = Counter(
    "kpcap_reported_uploads_total",
    "Nodes' terminal reports seen by the operator's watch (done: file uploaded; failed)",
    ["result"],
)
REPORTED_UPLOAD_DURATION = Histogram(
    "kpcap_reported_upload_duration_seconds",
    "From a node's uploading report to its terminal one (only where the uploading step is reported)",
    ["result"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

PHASES: Final = ("pending", *(phase.value for phase in NodePhase))
_TERMINAL: Final = frozenset({NodePhase.DONE.value, NodePhase.FAILED.value})


def refused(*, source: str, reason: str) -> None:
    ADMISSION_REFUSALS.labels(source=source, reason=reason).inc()


def capture_finished(
    *, namespace: str, name: str, capture_type: str, status: str, started: str | None, now: datetime
) -> None:
    """A capture reached ``status``: counted, its duration observed (from ``status.started``, when it
    was admitted at all), its per-capture gauges removed."""
    CAPTURES.labels(type=capture_type, status=status).inc()
    began = parse_time(started)
    if began is not None:
        CAPTURE_DURATION.labels(type=capture_type, status=status).observe(
            max(0.0, (now - began).total_seconds())
        )
    forget_capture(namespace=namespace, name=name)


def capture_progress(*, namespace: str, name: str, reporting: int, counts: Mapping[str, int] | None) -> None:
    """An active capture's pass: nodes reporting, and its targets by phase (full captures)."""
    NODES_REPORTING.labels(namespace=namespace, capture=name).set(reporting)
    for phase, count in (counts or {}).items():
        if phase in PHASES:
            CAPTURE_NODES.labels(namespace=namespace, capture=name, phase=phase).set(count)


def forget_capture(*, namespace: str, name: str) -> None:
    """No gauge of a finished or deleted capture stays behind."""
    with contextlib.suppress(KeyError):
        NODES_REPORTING.remove(namespace, name)
    for phase in PHASES:
        with contextlib.suppress(KeyError):
            CAPTURE_NODES.remove(namespace, name, phase)


def report_changed(*, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> None:
    """A node's report moved from ``before`` (None: not seen) to ``after``: counted once, when it
    first turns terminal (not from a listing, so a restarted operator does not count old ones again);
    timed when the uploading step was reported."""
    phase = after.get("phase")
    if before is None or phase not in _TERMINAL or before.get("phase") in _TERMINAL:
        return
    REPORTED_UPLOADS.labels(result=phase).inc()
    if before.get("phase") == NodePhase.UPLOADING.value:
        began, ended = parse_time(before.get("updated")), parse_time(after.get("updated"))
        if began is not None and ended is not None:
            REPORTED_UPLOAD_DURATION.labels(result=phase).observe(max(0.0, (ended - began).total_seconds()))
