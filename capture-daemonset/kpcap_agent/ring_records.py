"""A TPACKET_V3 ring block's frames straight into classic-pcap records: the live capture's fast path.

Why: under a sustained flood the capture thread's Python work per frame is what loses the CPU race
with the traffic (benchmarks/capture.py). The general path builds a tuple per frame in the source,
checks and counts the batch in the loop, and unpacks each tuple again in the writer. Here one loop
does it all: per frame one ``struct`` unpack and two copies into the writer's staging buffer, no
object per frame. The record header is copied from the ring as it is: a ``tpacket3_hdr`` holds
``tp_sec, tp_nsec, tp_snaplen, tp_len`` at offset 4, which is byte for byte a classic pcap record
header (seconds, nanoseconds, ``incl_len``, ``orig_len``) in the host's byte order, little endian
on every host kpcap runs on (asserted at import).

Only the common case goes this way: every frame of the block from the one interface seen so far
(or any, when no copy check exists), none with a VLAN tag to put back, none longer than the file's
snap length, and the whole block within the capture's limits. Otherwise :func:`copy_block_records`
returns None before anything is committed, and the block goes the general way
(:meth:`kpcap_agent.afpacket.LiveSource.next_frames`).
"""

from __future__ import annotations

import mmap
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from kpcap.pcap import RECORD_HEADER_SIZE

TP_STATUS_VLAN_VALID: Final = 0x10
ANY_INTERFACE: Final = -3  # no copy check: frames from any interface go this way
FIRST_INTERFACE: Final = -1  # the copy check has seen no interface yet: the first one becomes it
_TPACKET_HEADER_FIELDS: Final = 4  # tp_sec starts 4 bytes in
# tp_next_offset, tp_snaplen, tp_status, tp_mac; sockaddr_ll's ifindex (offset 52).
_FAST_HEADER: Final = struct.Struct("=I8xI4xIH26xi")
# Fields read from a frame by the general path (kpcap_agent.afpacket) and for frames kept aside for
# the copy check: the 48-byte tpacket3_hdr, then the sockaddr_ll after it. In order: next offset,
# seconds, nanoseconds, snaplen, len, status, mac offset, vlan tci, vlan tpid, ifindex (skipped: net
# offset, rxhash, padding, sll family and protocol).
FRAME_HEADER: Final = struct.Struct("=6IH2x4xIH10x4xi")
assert sys.byteorder == "little", "pcap records are copied from the ring in the host's byte order"  # noqa: S101


@dataclass(frozen=True, slots=True)
class BlockCopy:
    end: int  # where the records end in the staging buffer
    packets: int
    packet_bytes: int  # the records' data (sum of incl_len)
    interface: int  # the interface of the block's frames (ANY_INTERFACE: not tracked)
    frames_end: int  # where the block's last frame ends in the ring


def copy_block_records(
    *,
    ring: mmap.mmap,
    view: memoryview,
    offset: int,
    frame_count: int,
    buffer: mmap.mmap,
    position: int,
    snaplen: int,
    byte_room: int,
    interface: int,
) -> BlockCopy | None:
    """Copy the block's ``frame_count`` frames (the first at ``offset`` in ``ring``) into ``buffer``
    from ``position`` as pcap records; None if a frame or the limits need the general path.

    ``buffer`` must have room for the block (its records are never longer than the block).
    ``interface``: the one interface the frames may come from, FIRST_INTERFACE or ANY_INTERFACE.
    """
    unpack = _FAST_HEADER.unpack_from
    check_interface = interface != ANY_INTERFACE
    kept = 0
    data_end = offset
    for _ in range(frame_count):
        next_offset, captured, status, mac_offset, interface_index = unpack(ring, offset)
        if check_interface and interface_index != interface:
            if interface != FIRST_INTERFACE:
                return None  # a second interface: the copy check wakes, on the general path
            interface = interface_index
        if status & TP_STATUS_VLAN_VALID or captured > snaplen:
            return None
        header_end = position + RECORD_HEADER_SIZE
        buffer[position:header_end] = view[offset + _TPACKET_HEADER_FIELDS : offset + 20]
        data_start = offset + mac_offset
        data_end = data_start + captured
        position = header_end + captured
        buffer[header_end:position] = view[data_start:data_end]
        kept += captured
        offset += next_offset
    if kept > byte_room:
        return None
    return BlockCopy(
        end=position, packets=frame_count, packet_bytes=kept, interface=interface, frames_end=data_end
    )


def frames_of_copied_block(
    raw: bytes, *, frame_count: int, offset: int
) -> Iterator[tuple[int, bytes, int, int]]:
    """(timestamp ns, data, original length, ifindex) of each frame of a block copied out of the
    ring (``offset``: the first frame's, relative to the copy); fast-path blocks have no VLAN tag."""
    for _ in range(frame_count):
        next_offset, seconds, nanoseconds, captured, original, _, mac_offset, _, _, interface_index = (
            FRAME_HEADER.unpack_from(raw, offset)
        )
        start = offset + mac_offset
        yield seconds * 1_000_000_000 + nanoseconds, raw[start : start + captured], original, interface_index
        offset += next_offset
