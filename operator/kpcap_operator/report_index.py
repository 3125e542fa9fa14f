"""The operator's view of the nodes' reports: capture id -> node -> report status, kept by a watch.

Pure and thread-safe, like ``daemonset_index.DaemonSetIndex``: ``kube.Kube`` fills it from a
list-then-watch of PacketCaptureReports in every namespace. A terminal entry (done, failed) is
final: no later non-terminal event for the node replaces it, whatever order events arrive in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kpcap.model import NodePhase

Json = dict[str, Any]

_TERMINAL = frozenset({NodePhase.DONE.value, NodePhase.FAILED.value})


def _is_terminal(entry: Mapping[str, Any] | None) -> bool:
    return entry is not None and entry.get("phase") in _TERMINAL


class ReportIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[str, dict[str, Json]] = {}
        self._synced = False
        self._in_step_since: float | None = None  # time.monotonic() of the listing that synced it

    def in_step_seconds(self) -> float:
        """How long the index has been in step without a break (0 while it is not)."""
        with self._lock:
            return 0.0 if self._in_step_since is None else time.monotonic() - self._in_step_since

    def reports(self, capture_id: str) -> dict[str, Json] | None:
        """Node -> report status of the capture, or None while the index is not in step."""
        with self._lock:
            if not self._synced:
                return None
            return {node: dict(entry) for node, entry in self._reports.get(capture_id, {}).items()}

    def counts(self, capture_id: str) -> tuple[int, int] | None:
        """(nodes reported, nodes done or failed) of the capture without copying its reports (the
        capture loop asks on every report event); None while the index is not in step."""
        with self._lock:
            if not self._synced:
                return None
            nodes = self._reports.get(capture_id, {})
            return len(nodes), sum(1 for entry in nodes.values() if _is_terminal(entry))

    def replace_all(self, items: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """A fresh listing of (capture id, node, status): in step from now on (terminal kept)."""
        fresh: dict[str, dict[str, Json]] = {}
        for capture_id, node, status in items:
            fresh.setdefault(capture_id, {})[node] = dict(status)
        with self._lock:
            for capture_id, nodes in fresh.items():
                known = self._reports.get(capture_id, {})
                for node, entry in nodes.items():
                    if _is_terminal(known.get(node)) and not _is_terminal(entry):
                        nodes[node] = known[node]
            self._reports = fresh
            if not self._synced:
                self._in_step_since = time.monotonic()
            self._synced = True

    def updated(self, *, capture_id: str, node: str, status: Mapping[str, Any]) -> Json | None:
        """An added or modified report (a terminal entry stays); the entry it replaced, if any."""
        with self._lock:
            nodes = self._reports.setdefault(capture_id, {})
            before = nodes.get(node)
            if _is_terminal(before) and not _is_terminal(status):
                return before
            nodes[node] = dict(status)
            return before

    def removed(self, *, capture_id: str, node: str) -> None:
        with self._lock:
            nodes = self._reports.get(capture_id)
            if nodes is not None:
                nodes.pop(node, None)
                if not nodes:
                    del self._reports[capture_id]

    def lost(self) -> None:
        """The watch broke: until the next listing, callers must ask the cluster."""
        with self._lock:
            self._synced = False
            self._in_step_since = None
