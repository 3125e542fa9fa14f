"""Where a capture's packets come from: the source protocol, and sources of memory and files.

:class:`PacketSource` is the small protocol :func:`kpcap_agent.capture.run_capture` reads from, so a
capture can be fed by the live kernel source on a node (:mod:`kpcap_agent.afpacket`), by a pcap
file (tests of the limit logic without a network) or by an in-memory list (unit tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol, runtime_checkable

from kpcap.pcap import Record, RecordTuple, StagedRecordWriter, iter_pcap_records


class SourceExhausted(Exception):  # noqa: N818 -- an end-of-stream signal, not an error
    """A finite source (pcap file, list) has no more frames; live sources never raise it."""


class PacketSource(Protocol):
    """What run_capture needs from a source of frames."""

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Names of the interfaces the frames come from (for the capture's report)."""
        ...

    def next_frames(self, *, timeout: float) -> Sequence[RecordTuple]:
        """Frames available now, waiting at most ``timeout`` seconds for some; ``[]`` on timeout.

        Each is a :class:`~kpcap.pcap.Record` or a plain tuple of the same shape (the live
        source's, cheaper).

        Raises :class:`SourceExhausted` when a finite source has no more frames.
        """
        ...

    def kernel_drops(self) -> int:
        """Frames the kernel dropped for want of buffer space since the source was opened."""
        ...

    def rejected(self) -> int:
        """Frames the kernel filter passed but the source's own userspace check refused."""
        ...


@runtime_checkable
class BlockSource(PacketSource, Protocol):
    """A source that can also write a whole batch straight into a writer's staged records (the live
    source's fast path, :mod:`kpcap_agent.ring_records`)."""

    def copy_next_block(
        self, *, writer: StagedRecordWriter, timeout: float, packet_room: int, byte_room: int
    ) -> tuple[int, int] | None:
        """(packets, bytes) written; (0, 0) on timeout; None: read this batch with next_frames."""
        ...


@dataclass(kw_only=True)
class MemorySource:
    """Frames from memory, ``batch_size`` per call; for unit tests."""

    frames: Iterable[Record | bytes]
    batch_size: int = 64
    interface_names: tuple[str, ...] = ("memory",)
    _iterator: Iterator[Record | bytes] | None = field(default=None, init=False, repr=False)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self.interface_names

    def next_frames(self, *, timeout: float) -> Sequence[Record]:  # noqa: ARG002 -- frames are at hand
        if self._iterator is None:
            self._iterator = iter(self.frames)
        batch: list[Record] = []
        for item in self._iterator:
            batch.append(item if isinstance(item, Record) else Record(0, 0, item, len(item)))
            if len(batch) == self.batch_size:
                break
        if not batch:
            raise SourceExhausted
        return batch

    def kernel_drops(self) -> int:
        return 0

    def rejected(self) -> int:
        return 0


class PcapFileSource:
    """Replays the frames of a classic pcap file (Ethernet), with their timestamps, as fast as read."""

    def __init__(self, *, path: Path, batch_size: int = 256) -> None:
        self._records = iter_pcap_records(path)
        self._batch_size = batch_size
        self._path = path

    @property
    def interfaces(self) -> tuple[str, ...]:
        return (f"file:{self._path.name}",)

    def next_frames(self, *, timeout: float) -> Sequence[Record]:  # noqa: ARG002 -- frames are at hand
        batch = list(islice(self._records, self._batch_size))
        if not batch:
            raise SourceExhausted
        return batch

    def kernel_drops(self) -> int:
        return 0

    def rejected(self) -> int:
        return 0
