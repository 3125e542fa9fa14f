"""Classic PCAP streams: read records from chunks of any size, merge several by timestamp.

``PcapRecords`` cuts an iterator of byte chunks into records (holding at most one chunk plus one
record), and ``merge`` does a heap merge of several inputs' records by timestamp; on equal timestamps
the later input in the list comes first, as mergecap does (its ``is_earlier`` keeps the last of equal
candidates), so for the same files in the same order the output is byte for byte ``mergecap -F
pcap``'s. The output is classic libpcap: microsecond resolution unless an input has nanosecond
timestamps (then nanosecond), snap length 262144 (mergecap's, Wireshark's standard maximum) or an
input's larger one, the common link type (files of different link types cannot be merged into one
classic PCAP). An input cut short inside a record (a node that died mid-write) ends at its last whole
record. Used by the operator's downloads (a full capture's node files) and its simple captures (the
samplers' answers).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

MAGIC_MICRO: Final = 0xA1B2C3D4
MAGIC_NANO: Final = 0xA1B23C4D
GLOBAL_HEADER_SIZE: Final = 24
RECORD_HEADER_SIZE: Final = 16
MAX_RECORD_SIZE: Final = 256 * 1024 * 1024  # larger than any snap length: a corrupt length ends the file
CHUNK_SIZE: Final = 64 * 1024
MERGED_SNAPLEN: Final = 262_144
PCAP_MEDIA_TYPE: Final = "application/vnd.tcpdump.pcap"


class PcapFormatError(ValueError):
    """A file that is not a classic PCAP, or files that cannot be merged into one."""


@dataclass(frozen=True, slots=True)
class PcapHeader:
    byte_order: str  # "<" or ">"
    nanosecond: bool
    version: tuple[int, int]
    snaplen: int
    linktype: int


@dataclass(frozen=True, slots=True)
class Record:
    timestamp_ns: int
    captured_length: int
    original_length: int
    data: bytes


def parse_global_header(raw: bytes) -> PcapHeader:
    if len(raw) < GLOBAL_HEADER_SIZE:
        raise PcapFormatError(
            f"a PCAP file starts with a {GLOBAL_HEADER_SIZE}-byte header, got {len(raw)} bytes"
        )
    for order in ("<", ">"):
        (magic,) = struct.unpack(f"{order}I", raw[:4])
        if magic in (MAGIC_MICRO, MAGIC_NANO):
            major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(f"{order}HHiIII", raw[4:24])
            return PcapHeader(order, magic == MAGIC_NANO, (major, minor), snaplen, linktype)
    raise PcapFormatError(f"not a classic PCAP file (magic {raw[:4].hex()})")


def global_header(*, nanosecond: bool, snaplen: int, linktype: int) -> bytes:
    magic = MAGIC_NANO if nanosecond else MAGIC_MICRO
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def record_bytes(record: Record, *, nanosecond: bool) -> bytes:
    seconds, fraction = divmod(record.timestamp_ns, 1_000_000_000)
    if not nanosecond:
        fraction //= 1000
    header = struct.pack("<IIII", seconds, fraction, record.captured_length, record.original_length)
    return header + record.data


class PcapRecords:
    """The header and records of one PCAP given as an iterator of byte chunks (of any sizes).

    An input cut short inside a record ends at its last whole record; with ``strict`` that raises
    PcapFormatError instead (a file this process wrote and closed must be whole).
    """

    def __init__(self, chunks: Iterable[bytes], *, strict: bool = False) -> None:
        self._chunks = iter(chunks)
        self._strict = strict
        self._buffer = bytearray()
        self._position = 0
        raw = self._take(GLOBAL_HEADER_SIZE)
        self.header = parse_global_header(raw or bytes(self._buffer))

    def _take(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes, or None at the end of the input (a partial tail is dropped)."""
        while len(self._buffer) - self._position < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            if self._position:
                del self._buffer[: self._position]
                self._position = 0
            self._buffer += chunk
        start = self._position
        self._position += size
        return bytes(self._buffer[start : self._position])

    def _cut_short(self, what: str) -> None:
        if self._strict:
            raise PcapFormatError(f"truncated record {what}")

    def __iter__(self) -> Iterator[Record]:
        order, scale = self.header.byte_order, 1 if self.header.nanosecond else 1000
        while (raw := self._take(RECORD_HEADER_SIZE)) is not None:
            seconds, fraction, captured, original = struct.unpack(f"{order}IIII", raw)
            if captured > MAX_RECORD_SIZE:
                self._cut_short(f"header (captured length {captured})")
                return
            data = self._take(captured)
            if data is None:
                self._cut_short("data")
                return
            yield Record(seconds * 1_000_000_000 + fraction * scale, captured, original, data)
        if len(self._buffer) > self._position:
            self._cut_short("header")


def merged_header(headers: Sequence[PcapHeader]) -> bytes:
    if not headers:
        raise PcapFormatError("no files to merge")
    linktypes = sorted({h.linktype for h in headers})
    if len(linktypes) > 1:
        raise PcapFormatError(f"the files have different link types {linktypes}: they cannot be merged")
    return global_header(
        nanosecond=any(h.nanosecond for h in headers),
        snaplen=max(MERGED_SNAPLEN, *(h.snaplen for h in headers)),
        linktype=linktypes[0],
    )


def _keyed(index: int, records: Iterable[Record]) -> Iterator[tuple[int, int, Record]]:
    for record in records:
        yield record.timestamp_ns, -index, record


def merged_records(inputs: Sequence[Iterable[Record]]) -> Iterator[tuple[int, Record]]:
    """(input index, record) of every input, by timestamp; on ties the later input first (mergecap)."""
    keyed = [_keyed(index, records) for index, records in enumerate(inputs)]
    for _, negative_index, record in heapq.merge(*keyed, key=lambda item: (item[0], item[1])):
        yield -negative_index, record


def merge(inputs: Sequence[PcapRecords], *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The merged PCAP, as chunks of about ``chunk_size`` bytes (header first)."""
    nanosecond = any(i.header.nanosecond for i in inputs)
    pending = bytearray(merged_header([i.header for i in inputs]))
    for _, record in merged_records(inputs):
        pending += record_bytes(record, nanosecond=nanosecond)
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)
