"""The live source's fast path (kpcap_agent.ring_records): the same files as the general path, frame
for frame, whatever the ring holds; it steps aside for what it does not handle."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import IP
from scapy.layers.l2 import Dot1Q, Ether

from kpcap.pcap import PcapWriter, iter_pcap_records
from kpcap_agent.afpacket import RingGeometry
from kpcap_agent.capture import CaptureLimits, CaptureResult, StopReason, run_capture
from kpcap_agent.copies import CopyFilter
from tests.support.tpacket_ring import RingFrame, ring_source
from tests.support.udp import udp_frame

GEOMETRY = RingGeometry(block_bytes=4 * mmap.PAGESIZE, block_count=8)
Blocks = Sequence[Sequence[tuple[int, bytes] | RingFrame]]


def _capture(
    blocks: Blocks, path: Path, *, fast: bool, copy_filter: bool = True, **limits: int
) -> tuple[CaptureResult, int]:
    """One capture of the ring; returns its result and how many blocks went the fast path."""
    source = ring_source(GEOMETRY, blocks, copy_filter=CopyFilter() if copy_filter else None)
    with source, PcapWriter(path=path) as writer:
        result = run_capture(
            source=source,
            writer=writer,
            limits=CaptureLimits(
                packet_limit=limits.get("packet_limit", 10_000),
                time_limit=0.3,
                byte_limit=limits.get("byte_limit"),
            ),
            accept=None if fast else (lambda _frame: True),  # a check forces the general path
            stop_event=threading.Event(),
        )
        return result, source.fast_blocks


def _both_ways(blocks: Blocks, tmp_path: Path, **options: int) -> tuple[CaptureResult, int]:
    fast, fast_blocks = _capture(blocks, tmp_path / "fast.pcap", fast=True, **options)
    general, general_blocks = _capture(blocks, tmp_path / "general.pcap", fast=False, **options)
    assert (tmp_path / "fast.pcap").read_bytes() == (tmp_path / "general.pcap").read_bytes()
    assert (fast.packets, fast.bytes) == (general.packets, general.bytes)
    assert general_blocks == 0
    return fast, fast_blocks


def _frames(count: int, *, start: int = 0, interface: int = 2) -> list[tuple[int, bytes]]:
    return [
        (interface, udp_frame(payload_length=(18, 200, 1400)[number % 3], marker=start + number))
        for number in range(count)
    ]


def test_plain_blocks_go_the_fast_path_and_write_what_the_general_path_writes(tmp_path: Path) -> None:
    blocks = [_frames(9), _frames(5, start=9), _frames(12, start=14)]
    for copy_filter in (True, False):
        result, fast_blocks = _both_ways(blocks, tmp_path, copy_filter=copy_filter)
        assert (result.packets, fast_blocks) == (26, 3)
        records = list(iter_pcap_records(tmp_path / "fast.pcap"))
        assert [record.data for record in records] == [frame for block in blocks for _, frame in block]
        assert [record.timestamp_ns % 1_000_000_000 for record in records[:9]] == list(range(9))
        (tmp_path / "fast.pcap").unlink()
        (tmp_path / "general.pcap").unlink()


def test_a_tag_to_put_back_sends_the_block_the_general_way(tmp_path: Path) -> None:
    inner = Ether(udp_frame(payload_length=30, marker=99))
    blocks = [
        _frames(4),
        [*_frames(2, start=4), RingFrame(2, bytes(inner), vlan_tci=7), *_frames(2, start=6)],
        _frames(3, start=8),
    ]
    result, fast_blocks = _both_ways(blocks, tmp_path)
    assert result.packets == 4 + 5 + 3
    assert fast_blocks == 1  # the first; the tagged block and those after it go the general way
    tagged = list(iter_pcap_records(tmp_path / "fast.pcap"))[6].data
    assert Ether(tagged)[Dot1Q].vlan == 7  # put back by the general path


def test_a_second_interface_wakes_the_copy_check_with_the_fast_blocks_replayed(tmp_path: Path) -> None:
    arriving = [udp_frame(payload_length=20, marker=number) for number in range(3)]
    forwarded = Ether(arriving[0])
    forwarded[IP].ttl -= 1
    del forwarded[IP].chksum
    blocks = [
        [(2, frame) for frame in arriving],
        _frames(2, start=10),
        [(3, bytes(forwarded)), (3, udp_frame(payload_length=20, marker=50))],
    ]
    result, fast_blocks = _both_ways(blocks, tmp_path)
    assert fast_blocks == 2
    # The forwarded copy of a frame the fast path wrote two blocks before is known, and skipped.
    assert result.packets == 3 + 2 + 1
    data = [record.data for record in iter_pcap_records(tmp_path / "fast.pcap")]
    assert bytes(forwarded) not in data


def test_limits_inside_a_block_end_the_capture_exactly(tmp_path: Path) -> None:
    blocks = [_frames(6), _frames(6, start=6)]
    result, fast_blocks = _both_ways(blocks, tmp_path, packet_limit=8)
    assert (result.packets, result.reason, fast_blocks) == (8, StopReason.PACKET_LIMIT, 1)
    sizes = [len(frame) for block in blocks for _, frame in block]
    (tmp_path / "bytes").mkdir()
    result, fast_blocks = _both_ways(blocks, tmp_path / "bytes", byte_limit=sum(sizes[:7]))
    assert (result.packets, result.reason, fast_blocks) == (7, StopReason.BYTE_LIMIT, 1)


def test_frames_cut_by_the_kernel_keep_their_wire_length(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=1400, marker=number) for number in range(4)]
    blocks = [[RingFrame(2, frame[:64], original_length=len(frame)) for frame in frames]]
    result, fast_blocks = _both_ways(blocks, tmp_path)
    assert (result.packets, result.bytes, fast_blocks) == (4, 4 * 64, 1)
    records = list(iter_pcap_records(tmp_path / "fast.pcap"))
    assert [(len(record.data), record.original_length) for record in records] == [(64, len(frames[0]))] * 4
