"""Writing classic pcap (kpcap.pcap.writer): files every tool reads back, never overwritten."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpcap.pcap import PcapRecords, PcapWriter, Record, iter_pcap_records, pcap_bytes
from tests.support.udp import udp_frame


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


def test_pcap_bytes_reads_back_as_the_file_writer_writes(tmp_path: Path) -> None:
    records = [
        Record.at(timestamp_ns=1_700_000_000_000_000_123, data=b"abc", original_length=1500),
        Record(1_700_000_001, 5, b"defgh", 5, 3),
    ]
    path = tmp_path / "written.pcap"
    with PcapWriter(path=path, snaplen=64) as writer:
        writer.write_batch(records)
    assert pcap_bytes(records, snaplen=64) == path.read_bytes()
    assert [r[:4] for r in iter_pcap_records(path)] == [r[:4] for r in records]
    assert list(PcapRecords([pcap_bytes([], snaplen=64)])) == []


def test_a_record_spells_its_timestamp_both_ways() -> None:
    record = Record.at(timestamp_ns=3_000_000_007, data=b"xy")
    assert record == (3, 7, b"xy", 2, 0)
    assert (record.timestamp_ns, record.captured_length) == (3_000_000_007, 2)
