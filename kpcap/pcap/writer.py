"""Writing captures: the writer interface, the classic-pcap file writer, and in-memory encoding.

:class:`RecordWriter` is what a capture file being written offers; :class:`PcapWriter` (classic
pcap, nanosecond timestamps) is the one there is, and a pcapng writer is meant to be another.

What "bytes" means: :attr:`PcapWriter.packet_bytes` (and a capture's ``byteLimit``) counts captured
packet data only, i.e. the sum of ``incl_len`` over the records. It does not count the 24-byte global
header nor the 16-byte record headers, so a file holding N packets is
``24 + 16 * N + packet_bytes`` bytes long.

Records are written as they arrive, a megabyte at a time (:mod:`kpcap.pcap.direct_file`), so memory
stays flat whatever the limits; :meth:`PcapWriter.close` writes the rest and fsyncs, so a file that
was closed is on disk even if the node goes down right after.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self, runtime_checkable

from kpcap.pcap.classic import (
    DEFAULT_SNAPLEN,
    LINKTYPE_ETHERNET,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    global_header,
    record_bytes,
)
from kpcap.pcap.direct_file import AlignedFile
from kpcap.pcap.record import NANOSECONDS_PER_SECOND, RecordTuple, TimedPacket

# The most data one record may hold (64 times a full snap length: far beyond any frame, GRO and
# BIG TCP included). The staging buffer reserves room for one such record; its pages cost memory
# only when a record that large is written.
MAX_RECORD_DATA: Final = 64 * DEFAULT_SNAPLEN
# Room the staging buffer keeps for records laid out in place (:meth:`PcapWriter.stage`): the records
# of one ring block of the live source (1 MiB blocks).
STAGED_BLOCK_BYTES: Final = 1 << 20


class RecordSink(Protocol):
    """What the capture loop needs from a writer (:func:`kpcap_agent.capture.run_capture`).

    ``write_batch(records)`` appends one record per :class:`~kpcap.pcap.record.Record` (or its plain
    tuple), storing at most ``snaplen`` bytes of each one's data, and returns how many packet-data
    bytes it stored.
    """

    @property
    def snaplen(self) -> int: ...

    def write_batch(self, records: Iterable[RecordTuple], /) -> int: ...


@runtime_checkable
class StagedRecordWriter(RecordSink, Protocol):
    """A writer whose classic-pcap records (nanosecond timestamps, little endian) a source may lay
    out in place: :meth:`PcapWriter.stage` and :meth:`PcapWriter.commit`."""

    def stage(self, *, room: int) -> tuple[mmap.mmap, int]: ...

    def commit(self, *, end: int, packets: int, packet_bytes: int) -> None: ...


class RecordWriter(RecordSink, Protocol):
    """A capture file being written (classic pcap: :class:`PcapWriter`; pcapng: to come)."""

    @property
    def path(self) -> Path: ...

    @property
    def packets(self) -> int: ...

    @property
    def packet_bytes(self) -> int: ...

    def write(self, seconds: int, nanoseconds: int, data: bytes, original_length: int, /) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class PcapWriter:
    """Appends packets to a new classic-libpcap file (nanosecond timestamps).

    Frames longer than ``snaplen`` are truncated to it (``incl_len`` = snaplen, ``orig_len`` kept).
    Counts :attr:`packets` and :attr:`packet_bytes` (sum of ``incl_len``, see the module docstring).
    Records are assembled in place in the staging buffer of an :class:`AlignedFile` (one copy of
    each frame's bytes in userspace) and written a megabyte at a time, past the page cache where the
    filesystem allows (:mod:`kpcap.pcap.direct_file` says why).
    """

    def __init__(
        self, *, path: Path, snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET
    ) -> None:
        if not 1 <= snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen must be in 1..2**31-1, got {snaplen}")
        self.path: Final = path
        self.snaplen: Final = snaplen
        self.linktype: Final = linktype
        self.packets = 0
        self.packet_bytes = 0
        # Exclusive create: a capture never silently overwrites an earlier file.
        self._file = AlignedFile(path=path, headroom=RECORD_HEADER_SIZE + min(snaplen, MAX_RECORD_DATA))
        header = global_header(nanosecond=True, snaplen=snaplen, linktype=linktype)
        self._file.buffer[: len(header)] = header
        self._file.used = len(header)
        self._pack_record_header = RECORD_HEADER.pack_into

    @property
    def writes_past_page_cache(self) -> bool:
        """Whether the filesystem takes ``O_DIRECT`` (else every chunk goes through the page cache)."""
        return self._file.direct_supported

    @property
    def chunks_written(self) -> tuple[int, int]:
        """Chunks written so far past the page cache, and through it (all, or while the device lagged)."""
        return self._file.direct_chunks, self._file.cached_chunks

    def stage(self, *, room: int) -> tuple[mmap.mmap, int]:
        """The staging buffer and the position from which up to ``room`` bytes of records may be
        written in place: classic pcap records, nanosecond timestamps, little endian, no longer
        than :attr:`snaplen`. Nothing counts until :meth:`commit`; what is not committed is
        overwritten by the next records. For a source that lays out records itself
        (``kpcap_agent.ring_records``)."""
        file = self._file
        if file.closed:
            raise ValueError("write to a closed pcap file")
        if file.used + room > file.capacity:
            file.flush_chunks()
            if file.used + room > file.capacity:
                raise ValueError(f"room for at most {file.capacity - file.used} bytes, asked {room}")
        return file.buffer, file.used

    def commit(self, *, end: int, packets: int, packet_bytes: int) -> None:
        """The records staged up to ``end`` are written: count them (see :meth:`stage`)."""
        file = self._file
        file.used = end
        self.packets += packets
        self.packet_bytes += packet_bytes
        if end >= file.flush_at:
            file.flush_chunks()

    def write(self, seconds: int, nanoseconds: int, data: bytes, original_length: int) -> int:
        """Append one record; returns its ``incl_len`` (the packet-data bytes written)."""
        return self.write_batch(((seconds, nanoseconds, data, original_length, 0),))

    def write_batch(self, records: Iterable[RecordTuple]) -> int:
        """Append one record each; returns the packet-data bytes written.

        The per-packet path of a live capture: a whole ring block's frames go through here at once.
        Per frame: one header packed into the staging buffer and one copy of the data after it.
        """
        file = self._file
        if file.closed:
            raise ValueError("write to a closed pcap file")
        snaplen = self.snaplen
        pack_into = self._pack_record_header
        buffer = file.buffer
        flush_at = file.flush_at
        position = file.used
        count = 0
        written = 0
        for seconds, nanoseconds, data, original_length, _ in records:
            length = len(data)
            included = data
            if length > snaplen:
                length = snaplen
                included = data[:snaplen]
            if length > MAX_RECORD_DATA:
                raise ValueError(f"a record holds at most {MAX_RECORD_DATA} bytes, got {length}")
            start = position + RECORD_HEADER_SIZE
            pack_into(buffer, position, seconds, nanoseconds, length, original_length)
            position = start + length
            buffer[start:position] = included
            written += length
            count += 1
            if position >= flush_at:
                file.used = position
                file.flush_chunks()
                position = file.used
                buffer = file.buffer  # the next chunk: the filled one went to the writer thread
        file.used = position
        self.packets += count
        self.packet_bytes += written
        return written

    def write_frame(self, *, timestamp_ns: int, data: bytes, original_length: int | None = None) -> int:
        """:meth:`write` for callers that hold a single nanosecond timestamp."""
        seconds, nanoseconds = divmod(timestamp_ns, NANOSECONDS_PER_SECOND)
        return self.write(seconds, nanoseconds, data, max(original_length or 0, len(data)))

    def close(self) -> None:
        """Write what is staged, fsync and close; idempotent."""
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def pcap_bytes(
    records: Iterable[TimedPacket],
    *,
    snaplen: int,
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = True,
) -> bytes:
    """A whole classic PCAP in memory: the global header, then one record each (data as given)."""
    parts = [global_header(nanosecond=nanosecond, snaplen=snaplen, linktype=linktype)]
    parts.extend(record_bytes(record, nanosecond=nanosecond) for record in records)
    return b"".join(parts)


if TYPE_CHECKING:
    _implements: type[RecordWriter] = PcapWriter  # mypy checks that PcapWriter fits the interface
    _stages: type[StagedRecordWriter] = PcapWriter
