"""The pcapng format's blocks as bytes: pure builders, one per block kpcap writes.

A pcapng file is a sequence of blocks, each ``type, total length, body, total length`` with the
body padded to 32 bits; most bodies end in options (``code, length, value`` padded to 32 bits,
closed by ``opt_endofopt``). kpcap writes little endian, one section: a Section Header Block (the
writing application and comments naming the capture), one Interface Description Block per node
and interface (``<node>/<interface>``, nanosecond timestamps), Enhanced Packet Blocks (with the
packet's direction in ``epb_flags``), Name Resolution Blocks (pods and nodes by address) and, at
the end, Interface Statistics Blocks (kernel drops). The layout follows the pcapng specification
(draft-ietf-opsawg-pcapng) as Wireshark reads it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from kpcap.pcap.record import NANOSECONDS_PER_SECOND

PCAPNG_MEDIA_TYPE: Final = "application/x-pcapng"
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D

BLOCK_SECTION_HEADER: Final = 0x0A0D0D0A
BLOCK_INTERFACE_DESCRIPTION: Final = 1
BLOCK_PACKET_OBSOLETE: Final = 2
BLOCK_SIMPLE_PACKET: Final = 3
BLOCK_NAME_RESOLUTION: Final = 4
BLOCK_INTERFACE_STATISTICS: Final = 5
BLOCK_ENHANCED_PACKET: Final = 6

OPT_END: Final = 0
OPT_COMMENT: Final = 1
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_DESCRIPTION: Final = 3
IF_TSRESOL: Final = 9
IF_TSOFFSET: Final = 14
EPB_FLAGS: Final = 2
NRB_RECORD_END: Final = 0
NRB_RECORD_IPV4: Final = 1
NRB_RECORD_IPV6: Final = 2
ISB_STARTTIME: Final = 2
ISB_ENDTIME: Final = 3
ISB_IFRECV: Final = 4
ISB_IFDROP: Final = 5
ISB_FILTERACCEPT: Final = 6
ISB_OSDROP: Final = 7
ISB_USRDELIV: Final = 8

# AF_PACKET packet types (linux/if_packet.h: sll_pkttype) and the epb_flags they mean: bits 0-1
# direction (1 inbound, 2 outbound), bits 2-4 reception type (1 unicast, 2 multicast,
# 3 broadcast, 4 promiscuous).
PACKET_HOST: Final = 0
PACKET_BROADCAST: Final = 1
PACKET_MULTICAST: Final = 2
PACKET_OTHERHOST: Final = 3
PACKET_OUTGOING: Final = 4
FLAG_INBOUND: Final = 1
FLAG_OUTBOUND: Final = 2
_FLAGS_BY_PACKET_TYPE: Final = {
    PACKET_HOST: FLAG_INBOUND | 1 << 2,
    PACKET_MULTICAST: FLAG_INBOUND | 2 << 2,
    PACKET_BROADCAST: FLAG_INBOUND | 3 << 2,
    PACKET_OTHERHOST: FLAG_INBOUND | 4 << 2,
    PACKET_OUTGOING: FLAG_OUTBOUND,
}

_BLOCK_HEADER: Final = struct.Struct("<II")
_TRAILER: Final = struct.Struct("<I")
_OPTION_HEADER: Final = struct.Struct("<HH")
_SHB_FIXED: Final = struct.Struct("<IHHq")
_IDB_FIXED: Final = struct.Struct("<HHI")
_EPB_FIXED: Final = struct.Struct("<IIIII")
_ISB_FIXED: Final = struct.Struct("<III")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_END_OF_OPTIONS: Final = b"\x00\x00\x00\x00"
_PADDING: Final = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
# What the EPB options of a packet with flags add: one option of 4 bytes and the end marker.
_FLAG_OPTIONS: Final = {
    flags: _OPTION_HEADER.pack(EPB_FLAGS, 4) + _U32.pack(flags) + _END_OF_OPTIONS for flags in range(1, 32)
}
_FLAG_OPTIONS[0] = b""  # no direction known: no options at all


def packet_flags(packet_type: int) -> int:
    """epb_flags for an AF_PACKET packet type: direction and reception type (0 when unknown)."""
    return _FLAGS_BY_PACKET_TYPE.get(packet_type, 0)


def padding(length: int) -> bytes:
    return _PADDING[length & 3]


def option(code: int, value: bytes) -> bytes:
    return _OPTION_HEADER.pack(code, len(value)) + value + padding(len(value))


def options(entries: Iterable[tuple[int, bytes]]) -> bytes:
    """Options with their end marker, or nothing when there are none (both are valid pcapng)."""
    encoded = b"".join(option(code, value) for code, value in entries)
    return encoded + _END_OF_OPTIONS if encoded else b""


def block(block_type: int, body: bytes) -> bytes:
    """A whole block around a body already padded to 32 bits."""
    total = 12 + len(body)
    return _BLOCK_HEADER.pack(block_type, total) + body + _TRAILER.pack(total)


def _timestamp_pair(timestamp_ns: int) -> tuple[int, int]:
    return timestamp_ns >> 32, timestamp_ns & 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class SectionInfo:
    """What a Section Header Block says: the writing application and free-text comments."""

    application: str
    comments: tuple[str, ...] = ()


def section_header_block(section: SectionInfo) -> bytes:
    """An SHB of unknown section length (-1: the file is written as a stream)."""
    entries = [(OPT_COMMENT, comment.encode()) for comment in section.comments]
    entries.append((SHB_USERAPPL, section.application.encode()))
    return block(BLOCK_SECTION_HEADER, _SHB_FIXED.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + options(entries))


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceInfo:
    """One interface of the file: ``name`` is ``<node>/<interface>``."""

    name: str
    linktype: int
    snaplen: int
    description: str = ""


def interface_description_block(interface: InterfaceInfo) -> bytes:
    """An IDB with nanosecond timestamps (if_tsresol 9): every kpcap timestamp is nanoseconds."""
    entries = [(IF_NAME, interface.name.encode())]
    if interface.description:
        entries.append((IF_DESCRIPTION, interface.description.encode()))
    entries.append((IF_TSRESOL, b"\x09"))
    fixed = _IDB_FIXED.pack(interface.linktype, 0, interface.snaplen)
    return block(BLOCK_INTERFACE_DESCRIPTION, fixed + options(entries))


def enhanced_packet_block(
    *, interface_id: int, timestamp_ns: int, data: bytes, original_length: int, flags: int = 0
) -> bytes:
    """An EPB (nanosecond timestamp); ``flags`` as :func:`packet_flags` gives them (0: none)."""
    length = len(data)
    fixed = _EPB_FIXED.pack(
        interface_id, *_timestamp_pair(timestamp_ns), length, max(original_length, length)
    )
    flag_options = _FLAG_OPTIONS[flags] if flags < 32 else options([(EPB_FLAGS, _U32.pack(flags))])
    return block(BLOCK_ENHANCED_PACKET, fixed + data + padding(length) + flag_options)


def name_record(address: str, name: str) -> bytes:
    """One NRB record: an IPv4 or IPv6 address and its name."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"a name record's address must be IPv4 or IPv6, got {address!r}") from None
    record_type = NRB_RECORD_IPV4 if parsed.version == 4 else NRB_RECORD_IPV6
    return option(record_type, parsed.packed + name.encode() + b"\x00")


def name_resolution_block(names: Sequence[tuple[str, str]]) -> bytes:
    """An NRB of (address, name) pairs, e.g. a pod's address and ``<namespace>/<pod>``."""
    records = b"".join(name_record(address, name) for address, name in names)
    return block(BLOCK_NAME_RESOLUTION, records + _END_OF_OPTIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceStatistics:
    """An ISB's counters, each None when not known. As dumpcap writes them: ``received`` the
    packets the kernel passed to the capture (delivered and dropped), ``dropped`` those the kernel
    dropped (a full ring), ``delivered`` those written."""

    timestamp_ns: int
    start_ns: int | None = None
    end_ns: int | None = None
    received: int | None = None
    dropped: int | None = None
    filter_accepted: int | None = None
    os_dropped: int | None = None
    delivered: int | None = None


_ISB_COUNTERS: Final = (
    (ISB_IFRECV, "received"),
    (ISB_IFDROP, "dropped"),
    (ISB_FILTERACCEPT, "filter_accepted"),
    (ISB_OSDROP, "os_dropped"),
    (ISB_USRDELIV, "delivered"),
)
_ISB_TIMES: Final = ((ISB_STARTTIME, "start_ns"), (ISB_ENDTIME, "end_ns"))


def interface_statistics_block(*, interface_id: int, statistics: InterfaceStatistics) -> bytes:
    """An ISB for an interface of nanosecond resolution (as every IDB kpcap writes)."""
    entries: list[tuple[int, bytes]] = []
    for code, field in _ISB_TIMES:
        if (value := getattr(statistics, field)) is not None:
            entries.append((code, struct.pack("<II", *_timestamp_pair(value))))
    for code, field in _ISB_COUNTERS:
        if (value := getattr(statistics, field)) is not None:
            entries.append((code, _U64.pack(value)))
    fixed = _ISB_FIXED.pack(interface_id, *_timestamp_pair(statistics.timestamp_ns))
    return block(BLOCK_INTERFACE_STATISTICS, fixed + options(entries))


def statistics_from_options(
    *, timestamp_ns: int, values: dict[int, bytes], byte_order: str, to_ns: TimestampScale
) -> InterfaceStatistics:
    """The counters of a read ISB's options (times converted to nanoseconds by ``to_ns``)."""
    fields: dict[str, int] = {}
    for code, field in _ISB_TIMES:
        if len(raw := values.get(code, b"")) == 8:
            high, low = struct.unpack(f"{byte_order}II", raw)
            fields[field] = to_ns(high << 32 | low)
    for code, field in _ISB_COUNTERS:
        if len(raw := values.get(code, b"")) == 8:
            (fields[field],) = struct.unpack(f"{byte_order}Q", raw)
    return InterfaceStatistics(timestamp_ns=timestamp_ns, **fields)


@dataclass(frozen=True, slots=True)
class TimestampScale:
    """An interface's timestamp units to nanoseconds (if_tsresol, if_tsoffset)."""

    units_per_second: int = 1_000_000
    offset_seconds: int = 0

    @classmethod
    def from_tsresol(cls, value: int, *, offset_seconds: int = 0) -> TimestampScale:
        units = 2 ** (value & 0x7F) if value & 0x80 else 10**value
        return cls(units, offset_seconds)

    def __call__(self, timestamp: int) -> int:
        units = self.units_per_second
        if NANOSECONDS_PER_SECOND % units == 0:
            scaled = timestamp * (NANOSECONDS_PER_SECOND // units)
        else:
            scaled = timestamp * NANOSECONDS_PER_SECOND // units
        return scaled + self.offset_seconds * NANOSECONDS_PER_SECOND
