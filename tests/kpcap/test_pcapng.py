"""Writing and reading pcapng (kpcap.pcap.pcapng*): files Wireshark's tools read without a warning,
with the node and interface of every packet, its direction and the pods' and nodes' names."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kpcap.pcap import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    InterfaceInfo,
    InterfaceStatistics,
    PcapFormatError,
    PcapngInterface,
    PcapngNames,
    PcapngPacket,
    PcapngReader,
    PcapngStatistics,
    PcapngWriter,
    PcapRecords,
    Record,
    capture_section,
    kpcap_version,
    node_interface,
    open_capture,
    packet_flags,
    pcap_bytes,
)
from kpcap.pcap.pcapng_blocks import BLOCK_ENHANCED_PACKET
from tests.support.udp import udp_frame
from tests.support.wireshark import check_tools_read, require_tools, run_quietly, tshark_fields

START = 1_700_000_000_123_456_789
POD_V6 = "2001:db8::10"


def ipv6_frame(marker: int) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
        / IPv6(src=POD_V6, dst="2001:db8::20")
        / UDP(sport=1000, dport=2000)
        / Raw(marker.to_bytes(4, "big"))
    )


def write_capture(path: Path) -> list[tuple[str, int, bytes, int]]:
    """A two-node capture file; returns (interface name, timestamp, data, flags) per packet."""
    written = []
    with path.open("wb") as file:
        writer = PcapngWriter(
            file=file, section=capture_section(capture_id="0f2c-uid", namespace="team-a", name="dns")
        )
        one = writer.add_interface(node_interface(node="node-1", interface="eth0", snaplen=64))
        two = writer.add_interface(node_interface(node="node-2", interface="veth1a2b"))
        writer.write_names(
            [
                ("198.18.200.1", "team-a/client-0"),
                ("198.18.200.2", "node-2"),
                (POD_V6, "team-a/server-6"),
                ("198.18.200.2", "node-2"),  # written once
            ]
        )
        types = (PACKET_HOST, PACKET_OUTGOING, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, 7)
        for number, packet_type in enumerate(types):
            interface = one if number % 2 == 0 else two
            data = udp_frame(payload_length=100, marker=number) if number < 5 else ipv6_frame(number)
            timestamp = START + number * 1_000_001
            flags = packet_flags(packet_type)
            stored = writer.write_packet(
                interface_id=interface, timestamp_ns=timestamp, data=data, flags=flags
            )
            name = writer.interfaces[interface].name
            written.append((name, timestamp, data[:stored], flags))
        writer.finish(timestamp_ns=START + 10**9, dropped={one: 7})
    assert writer.packets == 6
    return written


def test_tshark_shows_node_interface_direction_and_names(tmp_path: Path) -> None:
    require_tools()
    path = tmp_path / "capture.pcapng"
    written = write_capture(path)
    rows = tshark_fields(
        path,
        "frame.interface_name",
        "frame.packet_flags_direction",
        "frame.packet_flags_reception_type",
        "frame.time_epoch",
        "frame.cap_len",
        "ip.src_host",
        "ip.dst_host",
        "ipv6.src_host",
        options=("-N", "n"),
    )
    assert [row[0] for row in rows] == [name for name, *_ in written]
    assert [row[0] for row in rows[:2]] == ["node-1/eth0", "node-2/veth1a2b"]
    # inbound (1) for host, broadcast, multicast, otherhost; outbound (2) for outgoing; 0 unknown
    assert [int(row[1] or "0", 16) for row in rows] == [1, 2, 1, 1, 1, 0]  # 0: no epb_flags
    assert [int(row[2] or 0) for row in rows] == [1, 0, 3, 2, 4, 0]
    assert [row[3] for row in rows] == [f"{t // 10**9}.{t % 10**9:09d}" for _, t, _, _ in written]
    assert [int(row[4]) for row in rows] == [64, 142, 64, 142, 64, len(ipv6_frame(5))]  # snaplen 64 on node-1
    assert rows[0][5:7] == ["team-a/client-0", "node-2"]
    assert rows[5][7] == "team-a/server-6"
    capinfos = check_tools_read(path, tmp_path)
    assert f"Capture application: kpcap {kpcap_version()}" in capinfos
    assert "Capture comment:     kpcap capture team-a/dns" in capinfos
    assert "Capture comment:     kpcap capture id 0f2c-uid" in capinfos
    assert "Name = node-1/eth0" in capinfos
    assert "Time precision = nanoseconds (9)" in capinfos
    assert capinfos.count("Number of stat entries = 1") == 2
    assert "Number of resolved IPv6 addresses in file: 1" in capinfos


def test_reader_returns_what_the_writer_wrote(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcapng"
    written = write_capture(path)
    reader = PcapngReader([path.read_bytes()], strict=True)
    assert reader.section.info.application == f"kpcap {kpcap_version()}"
    events = list(reader)
    interfaces = [e for e in events if isinstance(e, PcapngInterface)]
    assert [i.info.name for i in interfaces] == ["node-1/eth0", "node-2/veth1a2b"]
    assert [i.info.snaplen for i in interfaces] == [64, 262_144]
    packets = [e for e in events if isinstance(e, PcapngPacket)]
    names = [interfaces[p.interface_id].info.name for p in packets]
    assert (
        list(
            zip(
                names,
                [p.timestamp_ns for p in packets],
                [p.data for p in packets],
                [p.flags for p in packets],
                strict=True,
            )
        )
        == written
    )
    assert packets[0].original_length == len(udp_frame(payload_length=100))
    (nrb,) = [e for e in events if isinstance(e, PcapngNames)]
    assert nrb.names == (
        ("198.18.200.1", "team-a/client-0"),
        ("198.18.200.2", "node-2"),
        (POD_V6, "team-a/server-6"),
    )
    statistics = {e.interface_id: e.statistics for e in events if isinstance(e, PcapngStatistics)}
    assert statistics[0] == InterfaceStatistics(
        timestamp_ns=START + 10**9,
        start_ns=START,
        end_ns=START + 4 * 1_000_001,
        received=10,
        dropped=7,
        delivered=3,
    )
    assert (statistics[1].dropped, statistics[1].delivered) == (None, 3)


def test_reads_pcapng_written_by_wireshark_in_microseconds(tmp_path: Path) -> None:
    require_tools()
    records = [
        Record(1_700_000_000 + n, 123_456_000, udp_frame(payload_length=20, marker=n), 62, 0)
        for n in range(3)
    ]
    classic = tmp_path / "micro.pcap"
    classic.write_bytes(pcap_bytes(records, snaplen=1000, nanosecond=False))
    converted = tmp_path / "micro.pcapng"
    run_quietly(["editcap", "-F", "pcapng", str(classic), str(converted)])
    opened = open_capture([converted.read_bytes()])
    assert isinstance(opened, PcapngReader)
    assert [(p.timestamp_ns, p.data) for p in opened.packets()] == [(r.timestamp_ns, r.data) for r in records]
    assert isinstance(open_capture([classic.read_bytes()]), PcapRecords)


def test_packet_flags_of_the_af_packet_types() -> None:
    assert packet_flags(PACKET_HOST) == 0b00101  # inbound, unicast
    assert packet_flags(PACKET_BROADCAST) == 0b01101
    assert packet_flags(PACKET_MULTICAST) == 0b01001
    assert packet_flags(PACKET_OTHERHOST) == 0b10001  # inbound, promiscuous
    assert packet_flags(PACKET_OUTGOING) == 0b00010
    assert packet_flags(5) == 0  # PACKET_LOOPBACK: direction unknown


def block_offsets(data: bytes) -> dict[int, list[int]]:
    """Where each block of a little-endian pcapng starts, by block type."""
    offsets: dict[int, list[int]] = {}
    position = 0
    while position < len(data):
        block_type, length = struct.unpack_from("<II", data, position)
        offsets.setdefault(block_type, []).append(position)
        position += length
    return offsets


def test_a_cut_file_ends_at_its_last_whole_block(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcapng"
    write_capture(path)
    data = path.read_bytes()
    whole = list(PcapngReader([data]).packets())
    # Cut inside the last packet block: it is dropped (the statistics after it too).
    cut = data[: block_offsets(data)[BLOCK_ENHANCED_PACKET][-1] + 20]
    chunks = [cut[i : i + 7] for i in range(0, len(cut), 7)]  # blocks across chunk boundaries
    assert list(PcapngReader(chunks).packets()) == whole[:-1]
    with pytest.raises(PcapFormatError, match="truncated pcapng block"):
        list(PcapngReader([cut], strict=True))
    with pytest.raises(PcapFormatError, match="not a pcapng file"):
        PcapngReader([pcap_bytes([], snaplen=10)])


def test_bad_arguments_name_the_field() -> None:
    writer = PcapngWriter(file=io.BytesIO(), section=capture_section(capture_id="x", namespace="n", name="c"))
    with pytest.raises(ValueError, match="address must be IPv4 or IPv6, got 'node-1'"):
        writer.write_names([("node-1", "node-1")])
    with pytest.raises(ValueError, match=r"snaplen must be in 1\.\.2\*\*31-1, got 0"):
        writer.add_interface(InterfaceInfo(name="n/eth0", linktype=1, snaplen=0))
    with pytest.raises(
        ValueError, match=r"interface_id must be an added interface's id \(none added yet\), got 0"
    ):
        writer.write_packet(interface_id=0, timestamp_ns=0, data=b"x")


def test_names_given_before_any_interface_follow_the_first_one(tmp_path: Path) -> None:
    require_tools()
    path = tmp_path / "names-first.pcapng"
    with path.open("wb") as file:
        writer = PcapngWriter(file=file, section=capture_section(capture_id="u", namespace="n", name="c"))
        writer.write_names([("198.18.200.1", "n/client")])  # mergecap 4.0 refuses an NRB before every IDB
        writer.add_interface(node_interface(node="node-1", interface="eth0"))
        writer.write_packet(interface_id=0, timestamp_ns=START, data=udp_frame(payload_length=10))
        writer.finish(timestamp_ns=START)
    assert tshark_fields(path, "ip.src_host", options=("-N", "n")) == [["n/client"]]
    check_tools_read(path, tmp_path)


def test_reads_a_big_endian_file_with_microsecond_default_resolution() -> None:
    def block(block_type: int, body: bytes) -> bytes:
        return struct.pack(">II", block_type, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))

    shb = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    name = b"n/eth0\x00\x00"  # 6 bytes and padding
    idb = block(1, struct.pack(">HHI", 1, 0, 1500) + struct.pack(">HH", 2, 6) + name + b"\x00" * 4)
    timestamp_us = 1_700_000_000_654_321
    epb = block(
        6, struct.pack(">IIIII", 0, timestamp_us >> 32, timestamp_us & 0xFFFFFFFF, 3, 60) + b"abc\x00"
    )
    reader = PcapngReader([shb + idb + epb], strict=True)
    assert reader.section.byte_order == ">"
    events = list(reader)
    assert isinstance(events[0], PcapngInterface)
    assert events[0].info.name == "n/eth0"
    assert events[1] == PcapngPacket(timestamp_us * 1000, b"abc", 60, 0, 0)
