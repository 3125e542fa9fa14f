"""The operator's view of its capture DaemonSets: capture id -> DaemonSet names, kept by a watch.

Pure and thread-safe (Kopf runs reconcile passes in a thread pool, the watch runs in its own thread):
``kube.Kube`` fills it from a list-then-watch of the operator's namespace, and records its own
creations at once so a pass right after a create does not wait for the watch event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class DaemonSetIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, set[str]] = {}
        self._synced = False

    def names(self, capture_id: str) -> list[str] | None:
        """The capture's DaemonSets, or None while the index is not in step with the cluster."""
        with self._lock:
            if not self._synced:
                return None
            return sorted(self._names.get(capture_id, ()))

    def replace_all(self, items: Iterable[tuple[str, str]]) -> None:
        """A fresh listing of (capture id, name) pairs: the index is in step from now on."""
        names: dict[str, set[str]] = {}
        for capture_id, name in items:
            names.setdefault(capture_id, set()).add(name)
        with self._lock:
            self._names = names
            self._synced = True

    def added(self, *, capture_id: str, name: str) -> None:
        with self._lock:
            self._names.setdefault(capture_id, set()).add(name)

    def removed(self, *, capture_id: str, name: str) -> None:
        with self._lock:
            found = self._names.get(capture_id)
            if found is not None:
                found.discard(name)
                if not found:
                    del self._names[capture_id]

    def lost(self) -> None:
        """The watch broke: until the next listing, callers must ask the cluster."""
        with self._lock:
            self._synced = False
