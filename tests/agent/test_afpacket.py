"""The TPACKET_V3 ring reader (kpcap_agent.afpacket.LiveSource) on a ring filled as the kernel does."""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Sequence

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from kpcap_agent.afpacket import LiveSource, RingGeometry
from kpcap_agent.copies import CopyFilter
from tests.support.udp import udp_frame


def synthetic_ring(geometry: RingGeometry, blocks: Sequence[Sequence[tuple[int, bytes]]]) -> mmap.mmap:
    """A TPACKET_V3 ring as the kernel fills it: blocks of (ifindex, frame), handed to user space."""
    ring = mmap.mmap(-1, geometry.block_bytes * geometry.block_count)
    mac_offset = 82  # where the kernel puts an Ethernet frame after tpacket3_hdr and sockaddr_ll
    for block_number, frames in enumerate(blocks):
        base, offset = block_number * geometry.block_bytes, 48
        for number, (interface_index, data) in enumerate(frames):
            size = (mac_offset + len(data) + 15) & ~15
            next_offset = size if number < len(frames) - 1 else 0
            header = (next_offset, 1_700_000_000, number, len(data), len(data), 1, mac_offset)
            struct.pack_into("=6IH", ring, base + offset, *header)
            struct.pack_into("=i", ring, base + offset + 52, interface_index)
            ring[base + offset + mac_offset : base + offset + mac_offset + len(data)] = data
            offset += size
        struct.pack_into("=4x4xIII", ring, base, 1, len(frames), 48)  # TP_STATUS_USER
    return ring


def test_dormant_copy_check_catches_up_across_blocks() -> None:
    # Frames from one interface only (the copy check is dormant), then, a block later, the
    # forwarded copy of a frame of the first block on a second interface: still skipped as a copy.
    arriving = [udp_frame(payload_length=20, marker=number) for number in range(3)]
    forwarded = Ether(arriving[0])
    forwarded[IP].ttl -= 1
    del forwarded[IP].chksum
    geometry = RingGeometry(block_bytes=mmap.PAGESIZE, block_count=4)
    ring = synthetic_ring(
        geometry,
        [
            [(2, frame) for frame in arriving],
            [(2, arriving[1])],
            [(3, bytes(forwarded)), (3, arriving[2]), (3, arriving[2])],
        ],
    )
    left, right = socket.socketpair()
    right.close()
    with LiveSource(
        sock=left, ring=ring, geometry=geometry, interface_names=("a", "b"), copy_filter=CopyFilter()
    ) as source:
        batches = [[frame[2] for frame in source.next_frames(timeout=0)] for _ in range(3)]
        assert source.next_frames(timeout=0) == []  # the kernel owns the next block
        # The forwarded copy is skipped; arriving[2], kept once on "a", cancels one of its two on "b".
        assert batches == [arriving, [arriving[1]], [arriving[2]]]
        assert source.copies_skipped == 2
