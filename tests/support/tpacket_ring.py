"""A TPACKET_V3 ring filled as the kernel fills it, for tests of the live source without a socket."""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kpcap_agent.afpacket import LiveSource, RingGeometry
from kpcap_agent.copies import CopyFilter

MAC_OFFSET = 82  # where the kernel puts an Ethernet frame after tpacket3_hdr and sockaddr_ll
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10


@dataclass(frozen=True)
class RingFrame:
    """One frame as the kernel hands it over: ``data`` without the tag it stripped into ``vlan_tci``."""

    interface_index: int
    data: bytes
    vlan_tci: int | None = None
    original_length: int | None = None  # None: len(data), not cut


def synthetic_ring(
    geometry: RingGeometry, blocks: Sequence[Sequence[tuple[int, bytes] | RingFrame]]
) -> mmap.mmap:
    """A ring whose first blocks hold ``blocks`` of (ifindex, frame) or RingFrame, handed to user space."""
    ring = mmap.mmap(-1, geometry.block_bytes * geometry.block_count)
    for block_number, frames in enumerate(blocks):
        base, offset = block_number * geometry.block_bytes, 48
        for number, item in enumerate(frames):
            frame = item if isinstance(item, RingFrame) else RingFrame(*item)
            data = frame.data
            size = (MAC_OFFSET + len(data) + 15) & ~15
            next_offset = size if number < len(frames) - 1 else 0
            status = TP_STATUS_USER | (TP_STATUS_VLAN_VALID if frame.vlan_tci is not None else 0)
            original = frame.original_length if frame.original_length is not None else len(data)
            header = (next_offset, 1_700_000_000, number, len(data), original, status, MAC_OFFSET)
            struct.pack_into("=6IH", ring, base + offset, *header)
            if frame.vlan_tci is not None:
                struct.pack_into("=IH", ring, base + offset + 32, frame.vlan_tci, 0)
            struct.pack_into("=i", ring, base + offset + 52, frame.interface_index)
            ring[base + offset + MAC_OFFSET : base + offset + MAC_OFFSET + len(data)] = data
            offset += size
        struct.pack_into("=4x4xIII", ring, base, TP_STATUS_USER, len(frames), 48)
    return ring


class RingOnlySource(LiveSource):
    """A LiveSource on a ring and a socket pair: no kernel behind it, so no kernel drop counter."""

    def kernel_drops(self) -> int:
        return 0


def ring_source(
    geometry: RingGeometry,
    blocks: Sequence[Sequence[tuple[int, bytes] | RingFrame]],
    *,
    copy_filter: CopyFilter | None,
    interface_names: tuple[str, ...] = ("a", "b"),
) -> RingOnlySource:
    """A LiveSource reading ``synthetic_ring(geometry, blocks)``; no frame ever arrives after them."""
    left, right = socket.socketpair()
    right.close()
    return RingOnlySource(
        sock=left,
        ring=synthetic_ring(geometry, blocks),
        geometry=geometry,
        interface_names=interface_names,
        copy_filter=copy_filter,
    )
