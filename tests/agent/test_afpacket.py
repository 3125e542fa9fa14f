"""The TPACKET_V3 ring reader (kpcap_agent.afpacket.LiveSource) on a ring filled as the kernel does."""

from __future__ import annotations

import mmap
import socket

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from kpcap_agent.afpacket import LiveSource, RingGeometry
from kpcap_agent.copies import CopyFilter
from tests.support.tpacket_ring import synthetic_ring
from tests.support.udp import udp_frame


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
