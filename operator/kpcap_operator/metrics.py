"""Prometheus metrics of the operator (served on settings.metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CAPTURES = Counter(
    "kpcap_captures_total", "Captures that reached a status, by type and status", ["type", "status"]
)
NODES_REPORTING = Gauge(
    "kpcap_capture_nodes_reporting",
    "Nodes whose agent has reported, per active capture",
    ["namespace", "capture"],
)
RECONCILE_ERRORS = Counter("kpcap_reconcile_errors_total", "Reconcile passes that raised", ["stage"])
