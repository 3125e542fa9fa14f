"""Whether a capture may be admitted: the one decision the webhook, the operator and the REST API share.

The rules themselves (one pending or running full capture per namespace, one simple capture per
namespace per window) are pure functions in ``decisions``; this module is where a caller states who
is asking and gets the refusal, if any.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kpcap.model import CaptureType
from kpcap_operator import decisions
from kpcap_operator.decisions import CaptureRef

NEW_UID = "~new"
"""The uid of a capture not created yet: after every real uid, so it loses every tie."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a capture may not start: a ``decisions.REASON_*`` and a message naming the blocker."""

    reason: str
    message: str


def existing_captures(objects: Iterable[Mapping[str, Any]]) -> list[CaptureRef]:
    """The namespace's PacketCapture objects, as the rules read them."""
    return [decisions.capture_ref(obj) for obj in objects]


def new_capture(*, name: str, capture_type: str, now: datetime) -> CaptureRef:
    """A capture about to be created (it has no uid or creationTimestamp yet): the newest of all.

    A full capture is placed after everything there (a day ahead, so no clock skew makes it older
    than an undecided one); a simple one is dated ``now``, as its rate window counts from then.
    """
    created = now + timedelta(days=1) if capture_type == CaptureType.FULL else now
    return CaptureRef(
        name=name,
        uid=NEW_UID,
        created=created,
        type=capture_type,
        status=None,
        refused_by_rule=False,
        valid=True,
    )


def refusal(*, capture: CaptureRef, others: Sequence[CaptureRef], window: timedelta) -> Refusal | None:
    """The rule ``capture`` (of a valid spec, so its type is set) breaks among ``others``, or None.

    ``capture`` is ``new_capture(...)`` for one not created yet (webhook CREATE, REST API), or
    ``decisions.capture_ref(body)`` for an object being admitted by the operator. ``window`` is the
    simple-capture rate window.
    """
    if capture.type == CaptureType.FULL:
        blocker = decisions.full_capture_conflict(capture=capture, others=others)
    else:
        blocker = decisions.simple_rate_conflict(capture=capture, others=others, window=window)
    if blocker is None:
        return None
    reason, message = decisions.conflict_message(
        capture_type=str(capture.type), blocker=blocker, window=window
    )
    return Refusal(reason=reason, message=message)
