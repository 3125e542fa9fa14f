"""Wake-ups of the per-capture reconcile loops: the watch threads say "capture X changed".

``kube.Kube``'s watches (reports, DaemonSets) run in threads; each capture's loop
(``capture_loop``) waits in Kopf's event loop. ``wake`` may be called from any thread and for a
capture no loop waits on (a report of a finished capture): it then does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Wakeups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def register(self, capture_id: str) -> asyncio.Event:
        """The event a capture's loop waits on (call it in that loop)."""
        event = asyncio.Event()
        with self._lock:
            self._waiting[capture_id] = (asyncio.get_running_loop(), event)
        return event

    def unregister(self, capture_id: str, event: asyncio.Event) -> None:
        with self._lock:
            if self._waiting.get(capture_id, (None, None))[1] is event:
                del self._waiting[capture_id]

    def wake(self, capture_id: str) -> None:
        """Thread-safe: set the capture's event in its own loop."""
        with self._lock:
            found = self._waiting.get(capture_id)
        if found is not None:
            loop, event = found
            # RuntimeError: its loop closed meanwhile (the operator is exiting).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
