"""The capture loop's limits with in-memory and pcap-file sources (no network)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from kpcap.pcap import GLOBAL_HEADER_SIZE, RECORD_HEADER_SIZE, PcapWriter, Record, iter_pcap_records
from kpcap_agent.capture import CaptureLimits, CaptureResult, StopReason, run_capture
from kpcap_agent.sources import MemorySource, PcapFileSource
from tests.support.udp import udp_frame


def capture(
    tmp_path: Path,
    frames: Sequence[Record | bytes],
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
    assert path.stat().st_size == GLOBAL_HEADER_SIZE + RECORD_HEADER_SIZE * result.packets + result.bytes


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
    assert path.stat().st_size == GLOBAL_HEADER_SIZE


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

    def next_frames(self, *, timeout: float) -> Sequence[Record]:
        self.waits.append(timeout)
        self.now += timeout
        return []

    def kernel_drops(self) -> int:
        return 0

    def rejected(self) -> int:
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
