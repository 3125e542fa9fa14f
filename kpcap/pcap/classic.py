"""The classic libpcap format: its constants, global header and record encoding.

A file is a 24-byte global header (magic, version 2.4, thiszone 0, sigfigs 0, snap length, link
type), then per packet a 16-byte record header (seconds, microseconds or nanoseconds by the magic,
``incl_len``, ``orig_len``) followed by ``incl_len`` bytes of packet data. kpcap writes little
endian (the byte order of every host it runs on) and reads both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from kpcap.pcap.record import NANOSECONDS_PER_SECOND, TimedPacket

PCAP_MEDIA_TYPE: Final = "application/vnd.tcpdump.pcap"
MAGIC_MICRO: Final = 0xA1B2C3D4
MAGIC_NANO: Final = 0xA1B23C4D
VERSION: Final = (2, 4)
LINKTYPE_ETHERNET: Final = 1
# tcpdump's default and Wireshark's standard maximum: whole frames, GRO super-packets included.
DEFAULT_SNAPLEN: Final = 262_144
GLOBAL_HEADER: Final = struct.Struct("<IHHiIII")
RECORD_HEADER: Final = struct.Struct("<IIII")
GLOBAL_HEADER_SIZE: Final = GLOBAL_HEADER.size
RECORD_HEADER_SIZE: Final = RECORD_HEADER.size
MAX_RECORD_SIZE: Final = 256 * 1024 * 1024  # larger than any snap length: a corrupt length ends the file


class PcapFormatError(ValueError):
    """A file that is not a classic PCAP, or files that cannot be merged into one."""


@dataclass(frozen=True, slots=True)
class PcapHeader:
    byte_order: str  # "<" or ">"
    nanosecond: bool
    version: tuple[int, int]
    snaplen: int
    linktype: int


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
    return GLOBAL_HEADER.pack(magic, *VERSION, 0, 0, snaplen, linktype)


def record_bytes(record: TimedPacket, *, nanosecond: bool) -> bytes:
    """One record: header and data (``incl_len`` is the data's length)."""
    seconds, fraction = divmod(record.timestamp_ns, NANOSECONDS_PER_SECOND)
    if not nanosecond:
        fraction //= 1000
    data = record.data
    return RECORD_HEADER.pack(seconds, fraction, len(data), record.original_length) + data
