"""Writing captures: the writer interface, the classic-pcap file writer, and in-memory encoding.

:class:`RecordWriter` is what a capture file being written offers; :class:`PcapWriter` (classic
pcap, nanosecond timestamps) is the one there is, and a pcapng writer is meant to be another.

What "bytes" means: :attr:`PcapWriter.packet_bytes` (and a capture's ``byteLimit``) counts captured
packet data only, i.e. the sum of ``incl_len`` over the records. It does not count the 24-byte global
header nor the 16-byte record headers, so a file holding N packets is
``24 + 16 * N + packet_bytes`` bytes long.

Records are written as they arrive through a fixed-size write buffer (write-through, buffered), so
memory stays flat whatever the limits; :meth:`PcapWriter.close` flushes and fsyncs so a file that
was closed is on disk even if the node goes down right after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol, Self

from kpcap.pcap.classic import (
    DEFAULT_SNAPLEN,
    LINKTYPE_ETHERNET,
    RECORD_HEADER,
    global_header,
    record_bytes,
)
from kpcap.pcap.record import NANOSECONDS_PER_SECOND, RecordTuple, TimedPacket

_WRITE_BUFFER_BYTES: Final = 1 << 20


class RecordSink(Protocol):
    """What the capture loop needs from a writer (:func:`kpcap_agent.capture.run_capture`).

    ``write_batch(records)`` appends one record per :class:`~kpcap.pcap.record.Record` (or its plain
    tuple), storing at most ``snaplen`` bytes of each one's data, and returns how many packet-data
    bytes it stored.
    """

    @property
    def snaplen(self) -> int: ...

    def write_batch(self, records: Iterable[RecordTuple], /) -> int: ...


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
        self._file: BinaryIO | None = path.open("xb", buffering=_WRITE_BUFFER_BYTES)
        self._file.write(global_header(nanosecond=True, snaplen=snaplen, linktype=linktype))
        self._write: Callable[[bytes], int] = self._file.write
        self._pack_record_header = RECORD_HEADER.pack

    def write(self, seconds: int, nanoseconds: int, data: bytes, original_length: int) -> int:
        """Append one record; returns its ``incl_len`` (the packet-data bytes written).

        Positional arguments: called once per packet, and keyword calls cost measurably more.
        """
        included = data if len(data) <= self.snaplen else data[: self.snaplen]
        included_length = len(included)
        # One write of header + data: cheaper than two buffered writes for small frames.
        self._write(
            self._pack_record_header(seconds, nanoseconds, included_length, original_length) + included
        )
        self.packets += 1
        self.packet_bytes += included_length
        return included_length

    def write_batch(self, records: Iterable[RecordTuple]) -> int:
        """Append one record each with a single write; returns the packet-data bytes written.

        The per-packet path of a live capture: a whole ring block's frames go through here at once,
        headers and data joined into one buffer (one buffered write instead of one per frame).
        """
        snaplen = self.snaplen
        pack = self._pack_record_header
        parts: list[bytes] = []
        append = parts.append
        count = 0
        written = 0
        for seconds, nanoseconds, data, original_length, _ in records:
            length = len(data)
            if length > snaplen:
                length = snaplen
                append(pack(seconds, nanoseconds, length, original_length))
                append(data[:snaplen])
            else:
                append(pack(seconds, nanoseconds, length, original_length))
                append(data)
            written += length
            count += 1
        if count:
            self._write(b"".join(parts))
            self.packets += count
            self.packet_bytes += written
        return written

    def write_frame(self, *, timestamp_ns: int, data: bytes, original_length: int | None = None) -> int:
        """:meth:`write` for callers that hold a single nanosecond timestamp."""
        seconds, nanoseconds = divmod(timestamp_ns, NANOSECONDS_PER_SECOND)
        return self.write(seconds, nanoseconds, data, max(original_length or 0, len(data)))

    def close(self) -> None:
        """Flush, fsync and close; idempotent."""
        if self._file is None:
            return
        file, self._file = self._file, None
        self._write = _write_to_closed
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _write_to_closed(_data: bytes) -> int:
    raise ValueError("write to a closed pcap file")


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
