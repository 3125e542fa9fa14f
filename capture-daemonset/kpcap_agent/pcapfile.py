"""Streaming classic-libpcap files: a writer for captures and a reader for replays.

Format written (the classic one every tool reads: tcpdump -r, tshark -r, mergecap, scapy rdpcap):

- global header, 24 bytes, native byte order: magic ``0xa1b23c4d`` (nanosecond timestamps),
  version 2.4, thiszone 0, sigfigs 0, snaplen, linktype (1 = Ethernet);
- per packet a 16-byte record header (seconds, nanoseconds, ``incl_len``, ``orig_len``) followed by
  ``incl_len`` bytes of packet data.

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
import struct
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from kpcap.pcap import PcapFormatError, PcapRecords, Record

NANOSECOND_MAGIC: Final = 0xA1B23C4D
LINKTYPE_ETHERNET: Final = 1
DEFAULT_SNAPLEN: Final = 262144  # tcpdump's default: whole frames, including GRO super-packets
_VERSION_MAJOR: Final = 2
_VERSION_MINOR: Final = 4
_WRITE_BUFFER_BYTES: Final = 1 << 20
_READ_CHUNK_BYTES: Final = 64 * 1024

_GLOBAL_HEADER: Final = struct.Struct("=IHHiIII")
_RECORD_HEADER: Final = struct.Struct("=IIII")
GLOBAL_HEADER_LENGTH: Final = _GLOBAL_HEADER.size
RECORD_HEADER_LENGTH: Final = _RECORD_HEADER.size
_NANOSECONDS_PER_SECOND: Final = 1_000_000_000

# What the capture loop hands to :meth:`PcapWriter.write_batch`: a frame as the packet sources
# produce it (seconds, nanoseconds, data, original length, interface index; the last is not written).
FrameRecord = tuple[int, int, bytes, int, int]


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
        self._file.write(
            _GLOBAL_HEADER.pack(NANOSECOND_MAGIC, _VERSION_MAJOR, _VERSION_MINOR, 0, 0, snaplen, linktype)
        )
        self._write: Callable[[bytes], int] = self._file.write
        self._pack_record_header = _RECORD_HEADER.pack

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

    def write_batch(self, frames: Iterable[FrameRecord]) -> int:
        """Append one record per frame with a single write; returns the packet-data bytes written.

        The per-packet path of a live capture: a whole ring block's frames go through here at once,
        headers and data joined into one buffer (one buffered write instead of one per frame).
        """
        snaplen = self.snaplen
        pack = self._pack_record_header
        parts: list[bytes] = []
        append = parts.append
        count = 0
        written = 0
        for seconds, nanoseconds, data, original_length, _ in frames:
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
        seconds, nanoseconds = divmod(timestamp_ns, _NANOSECONDS_PER_SECOND)
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


def iter_pcap_records(path: Path) -> Iterator[Record]:
    """Yield the records of a classic pcap file one at a time (memory flat whatever its size).

    Raises PcapFormatError (naming the file) if it is not a classic pcap file or is cut short.
    """
    with path.open("rb") as file:
        try:
            yield from PcapRecords(iter(partial(file.read, _READ_CHUNK_BYTES), b""), strict=True)
        except PcapFormatError as err:
            raise PcapFormatError(f"{path}: {err}") from None
