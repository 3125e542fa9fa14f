"""The sampler's pure core: a bounded, per-node ring of sampled packet headers (no I/O).

A :class:`SampleRing` keeps 1 in ``sample_rate`` of the frames offered to it, truncated to
``snap_length`` bytes with their original length and timestamp, and answers the operator's queries
(time window, filter, packet limit). Networking, authentication and Kubernetes live elsewhere.

Where the always-on sampler (docs/design.md, "Who does what" 4) applies its rate: in the kernel, not
here. :func:`kpcap_agent.sampler_service.open_sampler_source` puts a random 1-in-N check in front of
the socket's BPF program (each frame kept independently with probability 1/N), and the service's
ring has ``sample_rate`` 1 (:func:`kpcap_agent.sampler_service.ring_config`): it keeps every frame
it is offered. The ring's own counter below is for a ring fed unsampled frames (tests, other uses).

The ring's sampling is a deterministic counter: offered frames are numbered 0, 1, 2, ... and frame
``i`` is kept exactly when ``i % sample_rate == 0`` (the first offered frame is always kept). Frames
are offered one at a time (:meth:`SampleRing.offer`) or a batch at a time
(:meth:`SampleRing.offer_batch`, the live path: the frames to keep are picked by slicing, so an
unsampled frame costs no Python work); both number frames the same way, and mixing them gives the
same result as offering one by one.

Original length: the kernel hands over frames already truncated to the snap length, so the wire
length is passed alongside (``original_length``, the pcap ``orig_len``); it defaults to the length of
the frame given.

Byte accounting (what ``byte_budget`` bounds): every held record costs
``len(record.data) + RECORD_OVERHEAD_BYTES``, where ``len(record.data)`` is the kept (truncated)
packet data and :data:`RECORD_OVERHEAD_BYTES` is a fixed charge per record covering what CPython
spends to hold it (the :class:`SampledPacket` object, the ``bytes`` object header, the two ``int``
objects and the deque slot; about 160 bytes on 64-bit CPython 3.11, charged as 192). The sum of
those costs over the held records (:attr:`SamplerStats.held_bytes`) is exact and never exceeds
``byte_budget``: room is made by evicting the oldest records *before* a new one is stored.

Retention: a record whose timestamp is more than ``retention_seconds`` before ``clock()`` is expired;
expired records are dropped (oldest first) on every :meth:`SampleRing.offer`,
:meth:`SampleRing.query` and :meth:`SampleRing.stats`. Records are held in arrival order; kernel
timestamps are nearly monotonic, so expiry stops at the first unexpired record at the head and a
slightly out-of-order record may outlive its retention by as long as the record ahead of it.
Queries never return a record outside the requested window whatever the order.

Queries favour the newest packets: when more than ``limit`` records match, the ``limit`` newest
(largest timestamps) are returned, in ascending timestamp order, because upstream samples backwards
from ``offset_time`` (the window's end).

A :class:`SampleRing` is safe to share between threads (one lock; ``accept`` runs under it, so keep
it cheap, as :func:`kpcap.filters.compile_matcher`'s predicates are).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kpcap.pcap import RecordTuple

RECORD_OVERHEAD_BYTES: Final = 192
MIN_SNAP_LENGTH: Final = 64
MAX_SNAP_LENGTH: Final = 65535
MAX_SAMPLE_RATE: Final = 2**31 - 1
MAX_RETENTION_SECONDS: Final = 7 * 86400.0
DEFAULT_RETENTION_SECONDS: Final = 86400.0
MAX_BYTE_BUDGET: Final = 2**48
MAX_ORIGINAL_LENGTH: Final = 2**32 - 1  # a pcap record's orig_len is 32 bits
_NANOSECONDS_PER_SECOND: Final = 1_000_000_000


def _require_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerConfig:
    """How a node samples. Validated on construction; errors name the field and its allowed range.

    - ``sample_rate``: keep 1 in N offered frames, N in ``1..2**31-1``;
    - ``snap_length``: packet bytes kept per record, ``64..65535``;
    - ``retention_seconds``: how long records are kept, ``(0, 604800]`` (default 24 h);
    - ``byte_budget``: the most bytes held (see the module docstring for what a record costs),
      ``snap_length + RECORD_OVERHEAD_BYTES .. 2**48`` so that any record fits.
    """

    sample_rate: int
    snap_length: int
    byte_budget: int
    retention_seconds: float = DEFAULT_RETENTION_SECONDS

    def __post_init__(self) -> None:
        _require_int("sample_rate", self.sample_rate, 1, MAX_SAMPLE_RATE)
        _require_int("snap_length", self.snap_length, MIN_SNAP_LENGTH, MAX_SNAP_LENGTH)
        retention: object = self.retention_seconds
        if isinstance(retention, bool) or not isinstance(retention, int | float):
            raise TypeError(
                f"retention_seconds must be a number in (0, {MAX_RETENTION_SECONDS:g}], got {retention!r}"
            )
        if not (math.isfinite(retention) and 0 < retention <= MAX_RETENTION_SECONDS):
            raise ValueError(
                f"retention_seconds must be in (0, {MAX_RETENTION_SECONDS:g}], got {self.retention_seconds}"
            )
        _require_int(
            "byte_budget", self.byte_budget, self.snap_length + RECORD_OVERHEAD_BYTES, MAX_BYTE_BUDGET
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledPacket:
    """One held record: capture timestamp, the frame's original length and its first bytes.

    The ring's compact form of a :class:`kpcap.pcap.Record` (one timestamp, no interface index):
    about 60 bytes less per held record than a Record, which the byte budget counts
    (:data:`RECORD_OVERHEAD_BYTES`). The encoders take it as a :class:`kpcap.pcap.TimedPacket`.
    """

    timestamp_ns: int
    original_length: int
    data: bytes

    @property
    def cost(self) -> int:
        """What this record counts against the byte budget."""
        return len(self.data) + RECORD_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerStats:
    held_records: int
    held_bytes: int  # sum of SampledPacket.cost over the held records, <= byte_budget
    offered: int
    sampled: int  # offered frames picked by the 1-in-N counter (stored or expired on arrival)
    evicted_for_budget: int
    evicted_for_retention: int  # includes sampled frames already expired when offered


def _check_frame(timestamp_ns: int, length: int, original_length: int | None) -> None:
    if timestamp_ns < 0:
        raise ValueError(f"timestamp_ns must be >= 0, got {timestamp_ns}")
    if original_length is not None and not length <= original_length <= MAX_ORIGINAL_LENGTH:
        raise ValueError(
            f"original_length must be in {length}..{MAX_ORIGINAL_LENGTH} "
            f"(at least the frame's {length} bytes), got {original_length}"
        )


class SampleRing:
    """A bounded store of sampled packet headers for one node (see the module docstring)."""

    def __init__(self, config: SamplerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config: Final = config
        self._clock = clock
        self._retention_ns: Final = round(config.retention_seconds * _NANOSECONDS_PER_SECOND)
        self._records: deque[SampledPacket] = deque()
        self._lock = threading.Lock()
        self._held_bytes = 0
        self._offered = 0
        self._sampled = 0
        self._evicted_for_budget = 0
        self._evicted_for_retention = 0
        # True while every record arrived with a timestamp >= the one before it (queries stop early).
        self._ordered = True
        self._last_timestamp_ns = -1

    def offer(
        self, frame: bytes | bytearray, *, timestamp_ns: int, original_length: int | None = None
    ) -> bool:
        """Offer one frame seen at ``timestamp_ns`` (ns since the epoch). Returns whether it is stored.

        ``original_length`` is the frame's length on the wire (``len(frame)`` when not given; at
        least ``len(frame)`` when given). The kept bytes are always a ``bytes`` copy of at most
        ``snap_length`` bytes (a ``bytes`` frame no longer than that is held as is), so a record
        never pins the caller's buffer.
        """
        _check_frame(timestamp_ns, len(frame), original_length)
        with self._lock:
            index = self._offered
            self._offered = index + 1
            if index % self.config.sample_rate:
                return False
            cutoff = self._cutoff_ns()
            self._expire(cutoff)
            return self._store(
                timestamp_ns, frame, len(frame) if original_length is None else original_length, cutoff
            )

    def offer_batch(self, frames: Sequence[RecordTuple]) -> int:
        """Offer frames as the packet sources hand them over; returns how many were stored.

        Each frame is ``(seconds, nanoseconds, data, original_length, interface_index)`` (a
        :class:`kpcap.pcap.Record` or the live source's plain tuple). Same numbering
        and same result as offering them one by one with :meth:`offer`, except that the clock is
        read once for the whole batch. The frames to keep are picked by slicing (``frames[first::N]``),
        so unsampled frames are never looked at: a malformed one (negative timestamp, original length
        shorter than its data) is only refused when it is sampled, and then before anything changes.
        """
        count = len(frames)
        if not count:
            return 0
        rate = self.config.sample_rate
        with self._lock:
            start = self._offered
            chosen = frames[-start % rate :: rate]
            checked: list[tuple[int, bytes, int]] = []
            for seconds, nanoseconds, data, original_length, _ in chosen:
                timestamp_ns = seconds * _NANOSECONDS_PER_SECOND + nanoseconds
                _check_frame(timestamp_ns, len(data), original_length)
                checked.append((timestamp_ns, data, original_length))
            self._offered = start + count
            if not checked:
                return 0
            cutoff = self._cutoff_ns()
            self._expire(cutoff)
            store = self._store
            return sum(
                store(timestamp_ns, data, original_length, cutoff)
                for timestamp_ns, data, original_length in checked
            )

    def _store(
        self, timestamp_ns: int, frame: bytes | bytearray, original_length: int, cutoff_ns: int
    ) -> bool:
        """Keep one sampled frame (lock held, records older than ``cutoff_ns`` already expired)."""
        self._sampled += 1
        if timestamp_ns < cutoff_ns:
            self._evicted_for_retention += 1
            return False
        snap_length = self.config.snap_length
        record = SampledPacket(
            timestamp_ns=timestamp_ns,
            original_length=original_length,
            data=frame
            if isinstance(frame, bytes) and len(frame) <= snap_length
            else bytes(frame[:snap_length]),
        )
        cost = record.cost
        budget = self.config.byte_budget
        records = self._records
        while self._held_bytes + cost > budget:
            self._held_bytes -= records.popleft().cost
            self._evicted_for_budget += 1
        records.append(record)
        self._held_bytes += cost
        if timestamp_ns < self._last_timestamp_ns:
            self._ordered = False
        else:
            self._last_timestamp_ns = timestamp_ns
        return True

    def query(
        self, *, since_ns: int, until_ns: int, accept: Callable[[bytes], bool], limit: int
    ) -> list[SampledPacket]:
        """Held records with ``since_ns <= timestamp_ns <= until_ns`` whose data ``accept`` takes.

        At most ``limit`` of them: the newest ones when more match. Returned in ascending timestamp
        order (ties in arrival order).
        """
        if since_ns > until_ns:
            raise ValueError(f"since_ns must be <= until_ns, got {since_ns} > {until_ns}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock:
            self._expire(self._cutoff_ns())
            if self._ordered:
                return self._query_ordered(since_ns, until_ns, accept, limit)
            matching = (
                (record.timestamp_ns, position, record)
                for position, record in enumerate(self._records)
                if since_ns <= record.timestamp_ns <= until_ns and accept(record.data)
            )
            newest = heapq.nlargest(limit, matching, key=lambda item: (item[0], item[1]))
        newest.reverse()
        return [record for _, _, record in newest]

    def _query_ordered(
        self, since_ns: int, until_ns: int, accept: Callable[[bytes], bool], limit: int
    ) -> list[SampledPacket]:
        """Timestamps never decrease along the deque: walk it from the newest end and stop early."""
        found: list[SampledPacket] = []
        for record in reversed(self._records):
            timestamp = record.timestamp_ns
            if timestamp > until_ns:
                continue
            if timestamp < since_ns:
                break
            if accept(record.data):
                found.append(record)
                if len(found) == limit:
                    break
        found.reverse()
        return found

    def stats(self) -> SamplerStats:
        with self._lock:
            self._expire(self._cutoff_ns())
            return SamplerStats(
                held_records=len(self._records),
                held_bytes=self._held_bytes,
                offered=self._offered,
                sampled=self._sampled,
                evicted_for_budget=self._evicted_for_budget,
                evicted_for_retention=self._evicted_for_retention,
            )

    def _cutoff_ns(self) -> int:
        """The oldest timestamp still within retention."""
        return round(self._clock() * _NANOSECONDS_PER_SECOND) - self._retention_ns

    def _expire(self, cutoff_ns: int) -> None:
        records = self._records
        while records and records[0].timestamp_ns < cutoff_ns:
            self._held_bytes -= records.popleft().cost
            self._evicted_for_retention += 1
        if not records:
            self._ordered = True
            self._last_timestamp_ns = -1
