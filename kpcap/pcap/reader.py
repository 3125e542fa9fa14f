"""Reading classic PCAP: records from byte chunks of any size, or from a file, memory flat."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Final

from kpcap.pcap.classic import (
    GLOBAL_HEADER_SIZE,
    MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    PcapFormatError,
    parse_global_header,
)
from kpcap.pcap.record import Record

CHUNK_SIZE: Final = 64 * 1024


class ChunkedBytes:
    """Exact-size reads from an iterator of byte chunks of any sizes, for the readers of both
    formats; holds at most one chunk plus what one read asks for."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._position = 0

    def take(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes, or None at the end of the input (a partial tail is left over)."""
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

    def peek(self, size: int) -> bytes | None:
        """:meth:`take` without consuming the bytes."""
        data = self.take(size)
        if data is not None:
            self._position -= size
        return data

    @property
    def left_over(self) -> bytes:
        """What was read from the input but not taken (the partial tail at its end)."""
        return bytes(self._buffer[self._position :])


class PcapRecords:
    """The header and records of one PCAP given as an iterator of byte chunks (of any sizes).

    Holds at most one chunk plus one record. An input cut short inside a record ends at its last
    whole record; with ``strict`` that raises PcapFormatError instead (a file this process wrote and
    closed must be whole).
    """

    def __init__(self, chunks: Iterable[bytes], *, strict: bool = False) -> None:
        self._input = ChunkedBytes(chunks)
        self._take = self._input.take
        self._strict = strict
        raw = self._take(GLOBAL_HEADER_SIZE)
        self.header = parse_global_header(raw or self._input.left_over)

    def _cut_short(self, what: str) -> None:
        if self._strict:
            raise PcapFormatError(f"truncated record {what}")

    def __iter__(self) -> Iterator[Record]:
        order, scale = self.header.byte_order, 1 if self.header.nanosecond else 1000
        unpack = struct.Struct(f"{order}IIII").unpack
        new = tuple.__new__  # one Record per packet: a third of what the NamedTuple call costs
        while (raw := self._take(RECORD_HEADER_SIZE)) is not None:
            seconds, fraction, captured, original = unpack(raw)
            if captured > MAX_RECORD_SIZE:
                self._cut_short(f"header (captured length {captured})")
                return
            data = self._take(captured)
            if data is None:
                self._cut_short("data")
                return
            yield new(Record, (seconds, fraction * scale, data, original, 0))
        if self._input.left_over:
            self._cut_short("header")


def iter_pcap_records(path: Path) -> Iterator[Record]:
    """Yield the records of a classic pcap file one at a time (memory flat whatever its size).

    Raises PcapFormatError (naming the file) if it is not a classic pcap file or is cut short.
    """
    with path.open("rb") as file:
        try:
            yield from PcapRecords(iter(partial(file.read, CHUNK_SIZE), b""), strict=True)
        except PcapFormatError as err:
            raise PcapFormatError(f"{path}: {err}") from None
