"""The capture loop's limits with in-memory and pcap-file sources (no network), and the pcap format."""

from __future__ import annotations

import mmap
import socket
import struct
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from kpcap_agent.capture import CaptureLimits, CaptureResult, StopReason, run_capture
from kpcap_agent.packetsource import (
    CopyFilter,
    Frame,
    LiveSource,
    MemorySource,
    PcapFileSource,
    RingGeometry,
    SourceExhausted,
    interface_check,
    layer3_identity,
)
from kpcap_agent.pcapfile import GLOBAL_HEADER_LENGTH, RECORD_HEADER_LENGTH, PcapWriter, iter_pcap_records


def udp_frame(*, payload_length: int, port: int = 5555, marker: int = 0) -> bytes:
    payload = marker.to_bytes(4, "big") + bytes(max(0, payload_length - 4))
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.18.200.1", dst="198.18.200.2")
        / UDP(sport=1234, dport=port)
        / Raw(payload)
    )


def capture(
    tmp_path: Path,
    frames: Sequence[Frame | bytes],
    *,
    limits: CaptureLimits,
    accept: object = None,
    stop_event: threading.Event | None = None,
    snaplen: int = 262144,
) -> tuple[CaptureResult, Path]:
    path = tmp_path / "out.pcap"
    with PcapWriter(path=path, snaplen=snaplen) as writer:
        result = run_capture(
            source=MemorySource(frames=frames, batch_size=7),
            writer=writer,
            limits=limits,
            accept=accept if callable(accept) else (lambda _frame: True),
            stop_event=stop_event or threading.Event(),
        )
    return result, path


def test_packet_limit_is_exact(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=20, marker=number) for number in range(100)]
    result, path = capture(tmp_path, frames, limits=CaptureLimits(packet_limit=42, time_limit=60))
    assert (result.packets, result.reason) == (42, StopReason.PACKET_LIMIT)
    assert [bytes(packet) for packet in rdpcap(str(path))] == frames[:42]


def test_byte_limit_counts_packet_data_and_stops_before_exceeding(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=100 + 37 * number, marker=number) for number in range(50)]
    byte_limit = 5000
    result, path = capture(
        tmp_path, frames, limits=CaptureLimits(packet_limit=10000, time_limit=60, byte_limit=byte_limit)
    )
    assert result.reason is StopReason.BYTE_LIMIT
    assert result.bytes == sum(len(frame) for frame in frames[: result.packets]) <= byte_limit
    assert result.bytes + len(frames[result.packets]) > byte_limit  # within one packet of the limit
    # bytes = packet data only: the file adds the global header and one record header per packet
    assert path.stat().st_size == GLOBAL_HEADER_LENGTH + RECORD_HEADER_LENGTH * result.packets + result.bytes


def test_byte_limit_reached_exactly_stops_at_once(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=58)] * 10  # 100-byte frames
    result, _ = capture(
        tmp_path, frames, limits=CaptureLimits(packet_limit=10000, time_limit=60, byte_limit=300)
    )
    assert (result.packets, result.bytes, result.reason) == (3, 300, StopReason.BYTE_LIMIT)


def test_byte_limit_counts_truncated_length(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=1000)] * 10
    result, path = capture(
        tmp_path, frames, limits=CaptureLimits(packet_limit=10000, time_limit=60, byte_limit=450), snaplen=100
    )
    assert (result.packets, result.bytes) == (4, 400)
    records = list(iter_pcap_records(path))
    assert all(len(record.data) == 100 and record.original_length == len(frames[0]) for record in records)


def test_rejected_frames_are_neither_written_nor_counted(tmp_path: Path) -> None:
    frames = [
        udp_frame(payload_length=20, port=5555 if number % 3 else 53, marker=number) for number in range(30)
    ]
    result, path = capture(
        tmp_path,
        frames,
        limits=CaptureLimits(packet_limit=10000, time_limit=60),
        accept=lambda frame: frame[36:38] == (5555).to_bytes(2, "big"),
    )
    assert (result.packets, result.rejected, result.reason) == (20, 10, StopReason.END_OF_SOURCE)
    assert [bytes(packet) for packet in rdpcap(str(path))] == [frame for frame in frames if frame[37] == 0xB3]


def test_stop_event_already_set_gives_a_valid_empty_file(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    result, path = capture(
        tmp_path,
        [udp_frame(payload_length=20)],
        limits=CaptureLimits(packet_limit=10, time_limit=60),
        stop_event=stop,
    )
    assert (result.packets, result.reason) == (0, StopReason.STOPPED)
    assert len(rdpcap(str(path))) == 0
    assert path.stat().st_size == GLOBAL_HEADER_LENGTH


class IdleSource:
    """A live-like source with no traffic, on a fake clock: each wait advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    @property
    def interfaces(self) -> tuple[str, ...]:
        return ("idle",)

    def clock(self) -> float:
        return self.now

    def next_frames(self, *, timeout: float) -> Sequence[Frame]:
        self.waits.append(timeout)
        self.now += timeout
        return []

    def kernel_drops(self) -> int:
        return 0


def test_time_limit_without_traffic_uses_receive_timeouts(tmp_path: Path) -> None:
    source = IdleSource()
    with PcapWriter(path=tmp_path / "idle.pcap") as writer:
        result = run_capture(
            source=source,
            writer=writer,
            limits=CaptureLimits(packet_limit=10, time_limit=3),
            accept=lambda _frame: True,
            stop_event=threading.Event(),
            clock=source.clock,
        )
    assert result.reason is StopReason.TIME_LIMIT
    assert result.duration_seconds == pytest.approx(3.0)
    assert max(source.waits) <= 0.2  # never waits longer than the poll interval


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="packet_limit"):
        CaptureLimits(packet_limit=0, time_limit=1)
    with pytest.raises(ValueError, match="time_limit"):
        CaptureLimits(packet_limit=1, time_limit=0)
    with pytest.raises(ValueError, match="byte_limit"):
        CaptureLimits(packet_limit=1, time_limit=1, byte_limit=0)


def test_pcap_file_source_replays_a_scapy_written_file(tmp_path: Path) -> None:
    packets = [Ether(udp_frame(payload_length=30, marker=number)) for number in range(25)]
    for number, packet in enumerate(packets):
        packet.time = 1_700_000_000 + number / 1000
    source_path = tmp_path / "in.pcap"
    wrpcap(str(source_path), packets)  # microsecond pcap, as most tools write
    output = tmp_path / "out.pcap"
    with PcapWriter(path=output) as writer:
        result = run_capture(
            source=PcapFileSource(path=source_path),
            writer=writer,
            limits=CaptureLimits(packet_limit=20, time_limit=60),
            accept=lambda _frame: True,
            stop_event=threading.Event(),
        )
    assert (result.packets, result.reason) == (20, StopReason.PACKET_LIMIT)
    written = rdpcap(str(output))
    assert [bytes(packet) for packet in written] == [bytes(packet) for packet in packets[:20]]
    assert [round(float(packet.time), 6) for packet in written] == [
        round(float(p.time), 6) for p in packets[:20]
    ]


def test_file_source_end_of_source(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    PcapWriter(path=path).close()
    with pytest.raises(SourceExhausted):
        PcapFileSource(path=path).next_frames(timeout=0.1)


def test_written_files_read_back_with_tcpdump_tshark_mergecap(tmp_path: Path) -> None:
    frames = [udp_frame(payload_length=10 + number, marker=number) for number in range(5)]
    paths = []
    for name, start in (("one", 1_700_000_000_000_000_001), ("two", 1_700_000_001_000_000_002)):
        path = tmp_path / f"{name}.pcap"
        with PcapWriter(path=path) as writer:
            for number, frame in enumerate(frames):
                writer.write_frame(timestamp_ns=start + number, data=frame)
        assert (writer.packets, writer.packet_bytes) == (5, sum(map(len, frames)))
        paths.append(path)
    tcpdump = subprocess.run(
        ["tcpdump", "--time-stamp-precision=nano", "-nr", str(paths[0])],
        capture_output=True,
        text=True,
        check=True,
        env={"TZ": "UTC"},
    )
    assert tcpdump.stdout.count("198.18.200.1.1234 > 198.18.200.2.5555: UDP") == 5
    assert tcpdump.stdout.splitlines()[0].startswith("22:13:20.000000001")  # nanoseconds kept
    merged = tmp_path / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), *map(str, paths)], check=True)
    tshark = subprocess.run(
        ["tshark", "-r", str(merged), "-T", "fields", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tshark.stdout.split() == ["5555"] * 10


def test_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "exists.pcap"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        PcapWriter(path=path)


def test_copy_filter_pairs_copies_across_interfaces() -> None:
    packet = Ether(udp_frame(payload_length=20))
    forwarded = packet.copy()
    forwarded[Ether].src, forwarded[Ether].dst = "02:00:00:00:00:aa", "02:00:00:00:00:bb"
    forwarded[IP].ttl -= 1
    del forwarded[IP].chksum
    arriving, leaving = bytes(packet), bytes(forwarded)
    tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / packet[IP])
    assert layer3_identity(arriving) == layer3_identity(leaving) == layer3_identity(tagged)
    copies = CopyFilter()
    seen = [
        copies.is_copy(data=arriving, interface_index=2, timestamp_ns=0),
        copies.is_copy(data=arriving, interface_index=2, timestamp_ns=1),  # identical, same interface: kept
        copies.is_copy(data=leaving, interface_index=3, timestamp_ns=2),
        copies.is_copy(data=leaving, interface_index=3, timestamp_ns=3),
        copies.is_copy(data=leaving, interface_index=3, timestamp_ns=4),  # a third leaving: not a copy
        copies.is_copy(data=tagged, interface_index=4, timestamp_ns=5),
    ]
    assert seen == [False, False, True, True, False, True]
    later = 5 + copies.window_ns + 1
    assert not copies.is_copy(data=leaving, interface_index=3, timestamp_ns=later)  # window passed


def test_copy_filter_memory_is_bounded() -> None:
    copies = CopyFilter(max_remembered=100)
    for number in range(1000):
        copies.is_copy(
            data=udp_frame(payload_length=8, marker=number), interface_index=1, timestamp_ns=number
        )
    assert len(copies._seen) <= 100


def test_interface_check_prefix_shapes() -> None:
    assert interface_check(only=None, excluded=()) == []
    assert interface_check(only=None, excluded=[1]) == [
        (0x20, 0, 0, 0xFFFFF008),
        (0x15, 1, 0, 1),
        (0x05, 0, 0, 1),
        (0x06, 0, 0, 0),
    ]
    assert interface_check(only=[5, 9], excluded=[1]) == [
        (0x20, 0, 0, 0xFFFFF008),
        (0x15, 2, 0, 5),
        (0x15, 1, 0, 9),
        (0x06, 0, 0, 0),
    ]


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
