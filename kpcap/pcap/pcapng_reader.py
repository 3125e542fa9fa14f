"""Reading pcapng: the blocks of a file given as byte chunks, as events, memory flat.

:class:`PcapngReader` turns a pcapng stream (either byte order, any number of sections) into
events: :class:`PcapngSection` (a new section: interface ids start again), :class:`PcapngInterface`,
:class:`PcapngPacket` (timestamp in nanoseconds whatever the interface's resolution, with
``epb_flags``), :class:`PcapngNames` and :class:`PcapngStatistics`. Blocks it does not use
(custom, decryption secrets, ...) are skipped. :func:`open_capture` tells classic pcap from pcapng
by the first bytes, for inputs that may be either (the per-node files of a capture).
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

from kpcap.pcap.classic import MAX_RECORD_SIZE, PcapFormatError
from kpcap.pcap.pcapng_blocks import (
    BLOCK_ENHANCED_PACKET,
    BLOCK_INTERFACE_DESCRIPTION,
    BLOCK_INTERFACE_STATISTICS,
    BLOCK_NAME_RESOLUTION,
    BLOCK_PACKET_OBSOLETE,
    BLOCK_SECTION_HEADER,
    BLOCK_SIMPLE_PACKET,
    BYTE_ORDER_MAGIC,
    EPB_FLAGS,
    IF_DESCRIPTION,
    IF_NAME,
    IF_TSOFFSET,
    IF_TSRESOL,
    NRB_RECORD_IPV4,
    NRB_RECORD_IPV6,
    OPT_COMMENT,
    SHB_USERAPPL,
    InterfaceInfo,
    InterfaceStatistics,
    SectionInfo,
    TimestampScale,
    statistics_from_options,
)
from kpcap.pcap.reader import ChunkedBytes, PcapRecords

_SECTION_TYPE_BYTES: Final = struct.pack("<I", BLOCK_SECTION_HEADER)  # the same in both byte orders


class PcapngSection(NamedTuple):
    byte_order: str
    info: SectionInfo


class PcapngInterface(NamedTuple):
    interface_id: int  # within its section
    info: InterfaceInfo
    scale: TimestampScale


class PcapngPacket(NamedTuple):
    """One packet of a pcapng file (a :class:`~kpcap.pcap.record.TimedPacket`)."""

    timestamp_ns: int
    data: bytes
    original_length: int
    interface_id: int
    flags: int = 0


class PcapngNames(NamedTuple):
    names: tuple[tuple[str, str], ...]  # (address, name)


class PcapngStatistics(NamedTuple):
    interface_id: int
    statistics: InterfaceStatistics


PcapngEvent = PcapngSection | PcapngInterface | PcapngPacket | PcapngNames | PcapngStatistics


def _options(raw: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    position, end = 0, len(raw)
    while position + 4 <= end:
        code, length = struct.unpack_from(f"{order}HH", raw, position)
        if code == 0:
            return
        start = position + 4
        yield code, raw[start : start + length]
        position = start + ((length + 3) & ~3)


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00").decode(errors="replace")


def is_pcapng(head: bytes) -> bool:
    return head[:4] == _SECTION_TYPE_BYTES


class PcapngReader:
    """The events of one pcapng stream given as an iterator of byte chunks (of any sizes).

    The first section header is read on construction (:attr:`section`; a stream that is not
    pcapng raises PcapFormatError). An input cut short inside a block ends at its last whole
    block; with ``strict`` that raises PcapFormatError instead.
    """

    def __init__(self, chunks: Iterable[bytes], *, strict: bool = False) -> None:
        self._input = ChunkedBytes(chunks)
        self._take = self._input.take
        self._strict = strict
        self._order = "<"
        self._scales: list[TimestampScale] = []
        head = self._input.peek(4)
        first = self._next_block() if head is not None and is_pcapng(head) else None
        if first is None:
            raise PcapFormatError("not a pcapng file (it must start with a section header block)")
        self.section = self._section(first[1])

    def _cut_short(self) -> None:
        if self._strict and self._input.left_over:
            raise PcapFormatError("truncated pcapng block")

    def _next_block(self) -> tuple[int, bytes] | None:
        """(block type, body without the trailing length), or None at the end."""
        head = self._take(8)
        if head is None:
            self._cut_short()
            return None
        if head[:4] == _SECTION_TYPE_BYTES:
            magic = self._take(4)
            if magic is None:
                self._cut_short()
                return None
            for order in ("<", ">"):
                if struct.unpack(f"{order}I", magic)[0] == BYTE_ORDER_MAGIC:
                    self._order = order
                    break
            else:
                raise PcapFormatError(f"pcapng section header with a bad byte-order magic {magic.hex()}")
            block_type, length = struct.unpack(f"{self._order}II", head)
            prefix, left = magic, length - 12
        else:
            block_type, length = struct.unpack(f"{self._order}II", head)
            prefix, left = b"", length - 8
        if length < 12 or length % 4 or length > MAX_RECORD_SIZE:
            raise PcapFormatError(f"pcapng block of type {block_type:#x} with a bad length {length}")
        rest = self._take(left)
        if rest is None:
            self._cut_short()
            return None
        return block_type, prefix + rest[:-4]

    def _section(self, body: bytes) -> PcapngSection:
        order = self._order
        major, _minor = struct.unpack_from(f"{order}HH", body, 4)
        if major != 1:
            raise PcapFormatError(f"pcapng major version {major} is not supported (only 1)")
        self._scales = []
        comments, application = [], ""
        for code, value in _options(body[16:], order):
            if code == OPT_COMMENT:
                comments.append(_text(value))
            elif code == SHB_USERAPPL:
                application = _text(value)
        return PcapngSection(order, SectionInfo(application=application, comments=tuple(comments)))

    def _interface(self, body: bytes) -> PcapngInterface:
        order = self._order
        linktype, _, snaplen = struct.unpack_from(f"{order}HHI", body)
        name = description = ""
        tsresol, offset = 6, 0
        for code, value in _options(body[8:], order):
            if code == IF_NAME:
                name = _text(value)
            elif code == IF_DESCRIPTION:
                description = _text(value)
            elif code == IF_TSRESOL and value:
                tsresol = value[0]
            elif code == IF_TSOFFSET and len(value) == 8:
                (offset,) = struct.unpack(f"{order}q", value)
        scale = TimestampScale.from_tsresol(tsresol, offset_seconds=offset)
        self._scales.append(scale)
        info = InterfaceInfo(name=name, linktype=linktype, snaplen=snaplen, description=description)
        return PcapngInterface(len(self._scales) - 1, info, scale)

    def _scale(self, interface_id: int) -> TimestampScale:
        if interface_id >= len(self._scales):
            raise PcapFormatError(f"pcapng block names interface {interface_id}, which is not described")
        return self._scales[interface_id]

    def _packet(self, block_type: int, body: bytes) -> PcapngPacket:
        order = self._order
        if block_type == BLOCK_ENHANCED_PACKET:
            interface_id, high, low, captured, original = struct.unpack_from(f"{order}IIIII", body)
        else:  # the obsolete Packet Block: a 16-bit interface id and a drops count
            interface_id, _drops, high, low, captured, original = struct.unpack_from(f"{order}HHIIII", body)
        data = body[20 : 20 + captured]
        if len(data) != captured:
            raise PcapFormatError(f"pcapng packet of {captured} bytes in a block too short for it")
        flags = 0
        for code, value in _options(body[20 + ((captured + 3) & ~3) :], order):
            if code == EPB_FLAGS and len(value) == 4:
                (flags,) = struct.unpack(f"{order}I", value)
        timestamp_ns = self._scale(interface_id)(high << 32 | low)
        return PcapngPacket(timestamp_ns, data, original, interface_id, flags)

    def _names(self, body: bytes) -> PcapngNames:
        names: list[tuple[str, str]] = []
        for record_type, value in _options(body, self._order):
            size = {NRB_RECORD_IPV4: 4, NRB_RECORD_IPV6: 16}.get(record_type)
            if size is None or len(value) <= size:
                continue
            address = str(ipaddress.ip_address(value[:size]))
            names.extend((address, _text(name)) for name in value[size:].split(b"\x00") if name)
        return PcapngNames(tuple(names))

    def _statistics(self, body: bytes) -> PcapngStatistics:
        order = self._order
        interface_id, high, low = struct.unpack_from(f"{order}III", body)
        scale = self._scale(interface_id)
        values = dict(_options(body[12:], order))
        statistics = statistics_from_options(
            timestamp_ns=scale(high << 32 | low), values=values, byte_order=order, to_ns=scale
        )
        return PcapngStatistics(interface_id, statistics)

    def __iter__(self) -> Iterator[PcapngEvent]:
        while (read := self._next_block()) is not None:
            block_type, body = read
            if block_type in (BLOCK_ENHANCED_PACKET, BLOCK_PACKET_OBSOLETE):
                yield self._packet(block_type, body)
            elif block_type == BLOCK_INTERFACE_DESCRIPTION:
                yield self._interface(body)
            elif block_type == BLOCK_NAME_RESOLUTION:
                yield self._names(body)
            elif block_type == BLOCK_INTERFACE_STATISTICS:
                yield self._statistics(body)
            elif block_type == BLOCK_SECTION_HEADER:
                yield self._section(body)
            elif block_type == BLOCK_SIMPLE_PACKET:
                raise PcapFormatError("pcapng simple packet blocks carry no timestamp: they cannot be merged")

    def packets(self) -> Iterator[PcapngPacket]:
        """Only the packets (interface ids as in their section)."""
        return (event for event in self if isinstance(event, PcapngPacket))


def open_capture(chunks: Iterable[bytes], *, strict: bool = False) -> PcapRecords | PcapngReader:
    """A classic pcap or a pcapng reader, by what the stream starts with."""
    iterator = iter(chunks)
    head = b""
    while len(head) < 4 and (chunk := next(iterator, None)) is not None:
        head += chunk
    rejoined = itertools.chain((head,), iterator)
    if is_pcapng(head):
        return PcapngReader(rejoined, strict=strict)
    return PcapRecords(rejoined, strict=strict)
