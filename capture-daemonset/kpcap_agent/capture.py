"""The capture loop: frames from a PacketSource, checked, counted and streamed to a pcap writer.

Limits (all enforced here, whatever the source):

- ``packet_limit``: never more than N packets written; the capture ends when the N-th is written.
- ``byte_limit`` (optional): counts captured packet data, the sum of the records' ``incl_len``
  (not the 24-byte global header nor the 16-byte record headers). The file's packet data never
  exceeds it; the capture ends when the next accepted packet would exceed it (or it is reached
  exactly), so it ends within one packet of the limit.
- ``time_limit`` seconds, measured on ``clock`` from the start of the loop: the capture ends within
  ``poll_interval`` (0.2 s) of it even when no packet arrives, because the source is asked for
  frames with a timeout.
- ``stop_event`` (SIGTERM handler, operator's stop request) ends it early, within ``poll_interval``;
  what was captured is kept.

``accept`` is a second, userspace check of each frame (the kernel BPF filter is the first): a
frame it refuses is neither written nor counted. It is given the frame as it will be written (for
VLAN traffic: with its 802.1Q tag). ``None``: the source's frames need no check (the live source
checks the few frames its kernel filter judged differently itself: ``kpcap_agent.afpacket``).
"""

from __future__ import annotations

import enum
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from kpcap.pcap import RecordSink, RecordTuple, StagedRecordWriter
from kpcap_agent.sources import BlockSource, PacketSource, SourceExhausted

DEFAULT_POLL_INTERVAL = 0.2
_ALL_ACCEPTED = itertools.repeat(True)  # the verdicts when there is no check
_data_of = itemgetter(2)  # a frame's data (seconds, nanoseconds, data, original length, interface)


class StopReason(enum.StrEnum):
    PACKET_LIMIT = "packet_limit"
    BYTE_LIMIT = "byte_limit"
    TIME_LIMIT = "time_limit"
    STOPPED = "stopped"
    END_OF_SOURCE = "end_of_source"  # a finite source (pcap file, list) ran out; never live


@dataclass(frozen=True, kw_only=True)
class CaptureLimits:
    packet_limit: int
    time_limit: float
    byte_limit: int | None = None

    def __post_init__(self) -> None:
        if self.packet_limit < 1:
            raise ValueError(f"packet_limit must be at least 1, got {self.packet_limit}")
        if not self.time_limit > 0:
            raise ValueError(f"time_limit must be positive, got {self.time_limit}")
        if self.byte_limit is not None and self.byte_limit < 1:
            raise ValueError(f"byte_limit must be at least 1, got {self.byte_limit}")


@dataclass(frozen=True, kw_only=True)
class CaptureResult:
    packets: int
    bytes: int  # packet data written: sum of incl_len (see the module docstring)
    kernel_drops: int
    reason: StopReason
    interfaces: tuple[str, ...]
    rejected: int  # frames the kernel filter passed but ``accept`` or the source's check refused
    duration_seconds: float


def run_capture(
    *,
    source: PacketSource,
    writer: RecordSink,
    limits: CaptureLimits,
    accept: Callable[[bytes], bool] | None,
    stop_event: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> CaptureResult:
    """Capture until a limit is reached or ``stop_event`` is set; the caller opens and closes
    ``source`` and ``writer`` (closing the writer fsyncs the file)."""
    started = clock()
    deadline = started + limits.time_limit
    packet_limit = limits.packet_limit
    # No byte limit is a limit no capture reaches: one comparison per packet instead of two.
    byte_limit = limits.byte_limit if limits.byte_limit is not None else sys.maxsize
    snaplen = writer.snaplen
    write_batch = writer.write_batch
    packets = 0
    packet_bytes = 0
    rejected = 0
    reason: StopReason | None = None
    # The live source's fast path (frames straight into the writer's records) where nothing needs a
    # userspace check (kpcap_agent.ring_records); the general path below for everything else.
    block_source = source if accept is None and isinstance(source, BlockSource) else None
    staged_writer = writer if isinstance(writer, StagedRecordWriter) else None
    while reason is None:
        if stop_event.is_set():
            reason = StopReason.STOPPED
            break
        remaining = deadline - clock()
        if remaining <= 0:
            reason = StopReason.TIME_LIMIT
            break
        if block_source is not None and staged_writer is not None:
            copied = block_source.copy_next_block(
                writer=staged_writer,
                timeout=min(remaining, poll_interval),
                # Strictly below both limits: the general path below ends a capture exactly.
                packet_room=packet_limit - packets - 1,
                byte_room=byte_limit - packet_bytes - 1,
            )
            if copied is not None:
                packets += copied[0]
                packet_bytes += copied[1]
                continue
        try:
            frames = source.next_frames(timeout=min(remaining, poll_interval))
        except SourceExhausted:
            reason = StopReason.END_OF_SOURCE
            break
        if not frames:
            continue
        # The per-packet path (it must keep up with tcpdump). Common case: every frame accepted and
        # no limit reached within the batch; then nothing but ``accept`` runs Python code per frame
        # (map, sum and max iterate in C), and the batch is written at once.
        datas = list(map(_data_of, frames))
        verdicts = list(map(accept, datas)) if accept is not None else None
        sizes = list(map(len, datas))
        batch_bytes = sum(sizes)
        if (
            (verdicts is None or all(verdicts))
            and packets + len(frames) < packet_limit
            and packet_bytes + batch_bytes < byte_limit
            and max(sizes) <= snaplen
        ):
            write_batch(frames)
            packets += len(frames)
            packet_bytes += batch_bytes
            continue
        # Otherwise frame by frame, exactly: the verdicts are kept, but a frame after the limit is
        # neither written nor counted as rejected.
        accepted: list[RecordTuple] = []
        keep = accepted.append
        for frame, verdict, length in zip(frames, verdicts or _ALL_ACCEPTED, sizes, strict=False):
            if not verdict:
                rejected += 1
                continue
            size = min(length, snaplen)
            if packet_bytes + size >= byte_limit:
                if packet_bytes + size == byte_limit:  # it fits exactly, and no further packet can
                    keep(frame)
                    packets += 1
                    packet_bytes += size
                reason = StopReason.PACKET_LIMIT if packets >= packet_limit else StopReason.BYTE_LIMIT
                break
            keep(frame)
            packets += 1
            packet_bytes += size
            if packets >= packet_limit:
                reason = StopReason.PACKET_LIMIT
                break
        write_batch(accepted)
    return CaptureResult(
        packets=packets,
        bytes=packet_bytes,
        kernel_drops=source.kernel_drops(),
        reason=reason,
        interfaces=source.interfaces,
        rejected=rejected + source.rejected(),
        duration_seconds=clock() - started,
    )
