"""The admission ledger: serialises the operator's admission decisions and remembers those in flight.

Kopf runs handlers concurrently (a thread pool) and writes a pass's status only after it returns. So
two full captures created at once could both start: A is admitted before B exists; B (same
creationTimestamp second, smaller uid, so "older") then lists A while A's status patch is still in
flight, sees it undecided and younger, and is admitted too. Decisions are therefore taken one at a
time, each seeing the decisions of earlier ones whose status had not landed when its listing was
read. Only the decision is taken under the lock: the passes list before and act after it, so no
apiserver call is ever made while it is held.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from kpcap_operator.decisions import CaptureRef

FORGET_AFTER_SECONDS = 600.0
"""A decision is kept this long after it landed (or was taken, if it is never seen to land: a
finished capture has no further passes), for passes whose listing is older than that."""


@dataclass(slots=True)
class _Decision:
    namespace: str
    ref: CaptureRef
    decided_at: float
    landed_at: float | None = None


class Turn:
    """One pass's turn at deciding: ``others`` as they stand now, and where to record the decision."""

    def __init__(
        self, *, decided: dict[str, _Decision], namespace: str, others: list[CaptureRef], now: float
    ) -> None:
        self._decided = decided
        self._namespace = namespace
        self._now = now
        self.others = others

    def decided(self, capture: CaptureRef, *, status: str, refused_by_rule: bool = False) -> None:
        """``capture`` gets ``status`` (``refused_by_rule``: refused by one of the two rules)."""
        ref = dataclasses.replace(capture, status=status, refused_by_rule=refused_by_rule)
        self._decided[capture.uid] = _Decision(namespace=self._namespace, ref=ref, decided_at=self._now)


class AdmissionLedger:
    """Serialises admission decisions of one operator process and remembers decisions in flight."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._decided: dict[str, _Decision] = {}  # uid -> decided here

    def observing(self) -> float:
        """Call right before listing the captures a decision will read; pass the value to ``turn``."""
        return self._clock()

    @contextmanager
    def turn(self, *, namespace: str, others: Sequence[CaptureRef], observed_at: float) -> Iterator[Turn]:
        """Hold the lock for one decision (pure work only) over ``others`` as listed at ``observed_at``.

        A listed capture still undecided gets the decision taken here; one decided here but absent
        from the listing (created after it was read) is added, unless its status landed before then
        (so the listing would show it: it has been deleted since).
        """
        with self._lock:
            now = self._clock()
            for uid in [u for u, d in self._decided.items() if _expired(d, now)]:
                del self._decided[uid]
            listed = {ref.uid for ref in others}
            seen = [
                self._decided[ref.uid].ref if ref.undecided and ref.uid in self._decided else ref
                for ref in others
            ]
            unlisted = [
                decision.ref
                for uid, decision in self._decided.items()
                if uid not in listed
                and decision.namespace == namespace
                and (decision.landed_at is None or decision.landed_at > observed_at)
            ]
            yield Turn(decided=self._decided, namespace=namespace, others=seen + unlisted, now=now)

    def landed(self, uid: str) -> None:
        """The object shows its decision now: listings read from here on show it too."""
        with self._lock:
            decision = self._decided.get(uid)
            if decision is not None and decision.landed_at is None:
                decision.landed_at = self._clock()

    def forget(self, uid: str) -> None:
        """The capture is gone, or its decision was not carried out (the pass failed after it)."""
        with self._lock:
            self._decided.pop(uid, None)


def _expired(decision: _Decision, now: float) -> bool:
    since = decision.decided_at if decision.landed_at is None else decision.landed_at
    return now - since > FORGET_AFTER_SECONDS
