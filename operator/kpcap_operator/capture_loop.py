"""Each unfinished capture's reconcile loop (one Kopf daemon per capture): event-driven passes.

A pass runs at once when the capture appears (admission), then again when woken (``wakeups``: a
report or a DaemonSet of the capture changed, or the capture object itself), and at least every
``LoopTiming.safety`` seconds (the slow safety net: time-based outcomes, a missed event).

Write amplification stays bounded: a wake-up runs a pass at once only when that pass could move the
capture (``due_now``: its first report, or every target reported done/failed); any other change
(progress counts) waits until ``LoopTiming.interval`` has passed since the last pass, as the old
timer did. A pass writes only the status keys that changed, as a merge patch of the status
subresource: a pass that finds nothing new writes nothing.

The writes are this loop's own, not Kopf's: a daemon's patch is applied only when it returns.
Kopf's live body lags a moment behind a write, so until it shows a newer resourceVersion the next
pass starts from the object the write returned (``Freshest``), never from a stale one (which would
repeat the write and its Events).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kpcap.model import TERMINAL, CaptureStatus
from kpcap_operator.result import Result
from kpcap_operator.wakeups import Wakeups

Json = dict[str, Any]

log = logging.getLogger(__name__)

SAFETY_PASSES = 5
"""The safety net's interval, in routine intervals (1 s by default: a pass every 5 s at least)."""
ERROR_PAUSE_SECONDS = 2.0
"""After a pass that raised, the next one waits this long (as the old timer's backoff)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopTiming:
    interval: float
    """Routine passes (progress only) at most this often."""
    safety: float
    """A pass at least this often, woken or not."""

    @classmethod
    def of(cls, interval: float) -> LoopTiming:
        return cls(interval=interval, safety=interval * SAFETY_PASSES)


class Stopped(Protocol):
    """Kopf's ``stopped`` flag of an async daemon."""

    def __bool__(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> Any: ...


def status_changes(*, body: Mapping[str, Any], result: Result) -> Json:
    """The status keys a pass changed (a merge patch); with ``observedGeneration`` when any did."""
    current = body.get("status") or {}
    changed = {key: value for key, value in result.status.items() if current.get(key) != value}
    generation = (body.get("metadata") or {}).get("generation")
    if changed and generation is not None:
        # Every status write says which spec generation it was made for (kstatus, Argo CD, Flux).
        changed["observedGeneration"] = generation
    return changed


def due_now(*, status: Mapping[str, Any], counts: tuple[int, int] | None) -> bool:
    """Whether a pass now could move the capture: not admitted yet, its first report (pending ->
    running), or as many reports done or failed as it has targets (it finishes). ``counts``: (nodes
    reported, nodes done or failed), None while the reports are not known."""
    current = status.get("status")
    if not current:
        return True
    if current in TERMINAL or counts is None:
        return False
    reported, ended = counts
    if current == CaptureStatus.PENDING.value and reported:
        return True
    targets = status.get("targetNodes") or []
    return bool(targets) and ended >= len(targets)


def _version(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")


def _newer(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is newer than ``b``: by number where both are (etcd's are),
    else only where they differ (Kopf's live body never goes back)."""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class Freshest:
    """The newest known state of the capture: Kopf's live body, or what our last write returned."""

    def __init__(self) -> None:
        self._written: Json | None = None

    def pick(self, live: Json) -> Json:
        if self._written is not None and not _newer(_version(live), _version(self._written)):
            return self._written
        self._written = None
        return live

    def wrote(self, answer: Json | None) -> None:
        if answer:
            self._written = answer


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureLoop:
    """What one capture's loop needs; ``run`` is the daemon's body."""

    capture_id: str
    timing: LoopTiming
    is_leader: Callable[[], bool]
    run_pass: Callable[[Json], Result]
    """One reconcile pass of the capture as given (blocking: run in a thread)."""
    write_status: Callable[[Json, Json], Json | None]
    """(capture, status merge patch) -> the object as stored; None when it is gone (blocking)."""
    report_counts: Callable[[], tuple[int, int] | None]
    """(nodes reported, nodes done or failed) as the watch knows them (memory only; None while
    not in step)."""
    post_events: Callable[[Result], None]
    """Post a pass's Events (in the event loop: Kopf's posting needs its context)."""

    async def run(self, *, live: Mapping[str, Any], stopped: Stopped, wakeups: Wakeups) -> None:
        event = wakeups.register(self.capture_id)
        try:
            await self._loop(live=live, stopped=stopped, event=event)
        finally:
            wakeups.unregister(self.capture_id, event)

    async def _loop(self, *, live: Mapping[str, Any], stopped: Stopped, event: asyncio.Event) -> None:
        clock = asyncio.get_running_loop().time
        freshest = Freshest()
        last = -math.inf
        pause = 0.0
        while not stopped:
            current = freshest.pick(dict(live))
            if (current.get("status") or {}).get("status") in TERMINAL:
                return
            if not self.is_leader():
                # A standby replica: look again at the routine pace, to take over soon after a failover.
                await _wait_any(event=event, stopped=stopped, timeout=self.timing.interval)
                event.clear()
                continue
            try:
                result = await asyncio.to_thread(self.run_pass, current)
                changes = status_changes(body=current, result=result)
                if changes:
                    answer = await asyncio.to_thread(self.write_status, current, changes)
                    if answer is None:
                        return  # the capture is gone
                    freshest.wrote(answer)
                self.post_events(result)
                pause = 0.0
                if result.finished is not None:
                    return
            except Exception:
                log.exception("reconcile pass of capture %s failed", self.capture_id)
                pause = ERROR_PAUSE_SECONDS
            last = clock()
            await self._until_next_pass(
                stopped=stopped,
                event=event,
                last=last,
                pause=pause,
                status=lambda: freshest.pick(dict(live)).get("status") or {},
            )

    async def _until_next_pass(
        self,
        *,
        stopped: Stopped,
        event: asyncio.Event,
        last: float,
        pause: float,
        status: Callable[[], Mapping[str, Any]],
    ) -> None:
        """Return when the next pass is due: woken and due now, woken and a routine interval since
        the last pass, or the safety interval since it; never within ``pause`` of a failed pass."""
        clock = asyncio.get_running_loop().time
        woken = False
        earliest = last + pause
        routine = max(earliest, last + self.timing.interval)
        safety = max(earliest, last + self.timing.safety)
        while not stopped:
            now = clock()
            if event.is_set():
                event.clear()
                woken = True
            if now >= safety or (woken and now >= routine):
                return
            if woken and now >= earliest and due_now(status=status(), counts=self.report_counts()):
                return
            wake_at = (routine if now >= earliest else earliest) if woken else safety
            await _wait_any(event=event, stopped=stopped, timeout=max(0.0, wake_at - now))


async def _wait_any(*, event: asyncio.Event, stopped: Stopped, timeout: float) -> None:
    """Until ``event`` is set, ``stopped`` is raised or ``timeout`` passes."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
