"""What a reconcile pass asks Kopf to write: a status merge patch and Events (built, never sent, here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kpcap.kubeapi import status_time
from kpcap.model import CaptureStatus
from kpcap_operator import decisions

Json = dict[str, Any]


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


def refused(*, reason: str, message: str, now: datetime) -> Result:
    """A capture that never starts: failed at once, its conditions saying why."""
    stamp = status_time(now)
    return Result(
        status={
            "status": CaptureStatus.FAILED.value,
            "submitted": stamp,
            "errorMessage": message,
            "packetsCaptured": 0,
            "packetsRemaining": 0,
            "conditions": [
                decisions.condition(kind="Admitted", ok=False, reason=reason, message=message, now=now),
                *decisions.terminal_conditions(ok=False, reason=reason, message=message, now=now),
            ],
        },
        events=[Event("Warning", reason, message)],
        finished=CaptureStatus.FAILED,
    )
