"""Merging per-node files into one pcapng or classic pcap (kpcap.pcap.pcapng_merge): packets equal
the inputs', in timestamp order, every interface named, read by Wireshark's tools without a warning,
the classic output byte for byte mergecap's, memory bounded whatever the inputs' sizes."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpcap.pcap import (
    DEFAULT_SNAPLEN,
    PACKET_HOST,
    PACKET_OUTGOING,
    InterfaceStatistics,
    PcapFormatError,
    PcapngInterface,
    PcapngPacket,
    PcapngReader,
    PcapngStatistics,
    PcapngWriter,
    PcapRecords,
    PcapWriter,
    Record,
    capture_section,
    global_header,
    merge_input,
    merge_pcap,
    merge_pcapng,
    node_interface,
    packet_flags,
    pcap_bytes,
    record_bytes,
)
from kpcap.pcap.pcapng_blocks import (
    InterfaceInfo,
    enhanced_packet_block,
    interface_description_block,
    section_header_block,
)
from tests.support.udp import udp_frame
from tests.support.wireshark import check_tools_read, require_tools, run_quietly, tshark_fields

START = 1_700_000_000_000_000_000
MS = 1_000_000
SECTION = capture_section(capture_id="uid-3", namespace="team-a", name="three-nodes")
NAMES = [("198.18.200.1", "team-a/client-0"), ("198.18.200.2", "team-a/server-0")]

# (interface name, timestamp, data, flags), as the merged file must hold them
Expected = tuple[str, int, bytes, int]


def classic_file(path: Path, timestamps: list[int], marker: int) -> list[tuple[int, bytes]]:
    packets = [(t, udp_frame(payload_length=30 + n, marker=marker + n)) for n, t in enumerate(timestamps)]
    with PcapWriter(path=path) as writer:
        for timestamp, data in packets:
            writer.write_frame(timestamp_ns=timestamp, data=data)
    return packets


def three_node_files(tmp_path: Path) -> tuple[list[Path], list[tuple[int, int, Expected]]]:
    """node-1 and node-2 classic (node-2 cut short mid-record), node-3 pcapng with two interfaces
    (the second described after packets of the first). Returns the files and the packets each
    input holds as (input index, timestamp, expected row)."""
    one, two, three = tmp_path / "node-1.pcap", tmp_path / "node-2.pcap", tmp_path / "node-3.pcapng"
    rows: list[tuple[int, int, Expected]] = []
    for t, data in classic_file(one, [START + n * 3 * MS for n in range(10)], marker=100):
        rows.append((0, t, ("node-1/eth0", t, data, 0)))
    node_two = classic_file(
        two, [START + n * 5 * MS + 1000 for n in range(6)] + [START + 40 * MS], marker=200
    )
    two.write_bytes(two.read_bytes()[:-5])  # the node died while writing its last packet
    for t, data in node_two[:-1]:
        rows.append((1, t, ("node-2/eth0", t, data, 0)))
    with three.open("wb") as file:
        writer = PcapngWriter(file=file, section=SECTION)
        eth0 = writer.add_interface(node_interface(node="node-3", interface="eth0"))
        writer.write_names([("198.18.200.2", "team-a/server-0"), ("198.18.0.3", "node-3")])
        interfaces = {eth0: "node-3/eth0"}
        for n in range(8):
            if n == 3:
                interfaces[writer.add_interface(node_interface(node="node-3", interface="veth9"))] = (
                    "node-3/veth9"
                )
            interface = eth0 if n < 3 or n % 2 else 1
            t = START + n * 3 * MS  # ties with node-1: the later input first, as mergecap
            data = udp_frame(payload_length=50, marker=300 + n)
            flags = packet_flags(PACKET_OUTGOING if n % 2 else PACKET_HOST)
            writer.write_packet(interface_id=interface, timestamp_ns=t, data=data, flags=flags)
            rows.append((2, t, (interfaces[interface], t, data, flags)))
        writer.finish(timestamp_ns=START + 10**9, dropped={eth0: 2, 1: 0})
    return [one, two, three], rows


def whole_copy(path: Path) -> Path:
    """The whole records of a file cut mid-record: mergecap refuses such a file (kpcap reads it
    up to its last whole record)."""
    copy = path.with_name(f"{path.stem}-whole.pcap")
    copy.write_bytes(pcap_bytes(list(PcapRecords([path.read_bytes()])), snaplen=DEFAULT_SNAPLEN))
    return copy


def expected_order(rows: list[tuple[int, int, Expected]]) -> list[Expected]:
    ordered = sorted(rows, key=lambda row: (row[1], -row[0]))  # stable: file order within an input
    return [expected for _, _, expected in ordered]


def chunks_of(path: Path, size: int = 97) -> Iterator[bytes]:
    data = path.read_bytes()
    return (data[i : i + size] for i in range(0, len(data), size))


def merged(paths: list[Path]) -> bytes:
    inputs = [
        merge_input(
            chunks_of(path),
            interface_name=f"{path.stem}/eth0",
            statistics=InterfaceStatistics(timestamp_ns=START + 10**9, dropped=4, delivered=10)
            if path.stem == "node-1"
            else None,
        )
        for path in paths
    ]
    return b"".join(merge_pcapng(inputs, section=SECTION, names=NAMES, chunk_size=500))


def packets_of(pcapng: bytes) -> list[Expected]:
    names: list[str] = []
    packets: list[Expected] = []
    for event in PcapngReader([pcapng], strict=True):
        if isinstance(event, PcapngInterface):
            names.append(event.info.name)
        elif isinstance(event, PcapngPacket):
            packets.append((names[event.interface_id], event.timestamp_ns, event.data, event.flags))
    return packets


def test_three_nodes_merge_into_one_pcapng_of_their_packets(tmp_path: Path) -> None:
    require_tools()
    paths, rows = three_node_files(tmp_path)
    output = tmp_path / "merged.pcapng"
    output.write_bytes(merged(paths))
    expected = expected_order(rows)
    assert packets_of(output.read_bytes()) == expected
    # Wireshark sees the same: every packet's node and interface, its time, direction and names.
    shown = tshark_fields(
        output,
        "frame.interface_name",
        "frame.time_epoch",
        "frame.packet_flags_direction",
        "ip.src_host",
        "ip.dst_host",
        options=("-N", "n"),
    )
    assert [(row[0], row[1]) for row in shown] == [
        (e[0], f"{e[1] // 10**9}.{e[1] % 10**9:09d}") for e in expected
    ]
    assert [int(row[2] or "0", 16) for row in shown] == [e[3] & 3 for e in expected]
    assert {(row[3], row[4]) for row in shown} == {("team-a/client-0", "team-a/server-0")}
    capinfos = check_tools_read(output, tmp_path)
    assert "Number of interfaces in file: 4" in capinfos
    assert "Capture comment:     kpcap capture team-a/three-nodes" in capinfos
    # Statistics: node-1's given by the caller, node-2's counted, node-3's carried over.
    statistics = {
        e.interface_id: e.statistics
        for e in PcapngReader([output.read_bytes()])
        if isinstance(e, PcapngStatistics)
    }
    assert (statistics[0].dropped, statistics[0].delivered) == (4, 10)
    assert (statistics[1].dropped, statistics[1].delivered) == (None, 6)
    assert [(statistics[i].dropped, statistics[i].delivered) for i in (2, 3)] == [(2, 6), (0, 2)]
    # mergecap merges the same files into the same packets in the same order.
    theirs = tmp_path / "mergecap.pcapng"
    run_quietly(["mergecap", "-w", str(theirs), str(paths[0]), str(whole_copy(paths[1])), str(paths[2])])
    assert [p[1:3] for p in packets_of(theirs.read_bytes())] == [e[1:3] for e in expected]


@pytest.mark.parametrize(("nanosecond", "file_type"), [(False, "pcap"), (True, "nsecpcap")])
def test_classic_output_equals_mergecap(tmp_path: Path, nanosecond: bool, file_type: str) -> None:
    require_tools()
    paths, _ = three_node_files(tmp_path)
    paths[1] = whole_copy(paths[1])
    for inputs in (paths, paths[:2]):  # pcapng and classic inputs; classic only (kpcap.pcap.merge)
        theirs = subprocess.run(
            ["mergecap", "-F", file_type, "-w", "-", *map(str, inputs)], check=True, capture_output=True
        ).stdout
        opened = [merge_input(chunks_of(path), interface_name="n/eth0") for path in inputs]
        ours = b"".join(merge_pcap(opened, nanosecond=nanosecond, chunk_size=300))
        assert ours == theirs


def test_a_multi_section_input_keeps_each_sections_interfaces(tmp_path: Path) -> None:
    require_tools()
    stream = io.BytesIO()
    for section, node in enumerate(("node-a", "node-b")):  # one file that was appended to
        writer = PcapngWriter(file=stream, section=SECTION)
        writer.add_interface(node_interface(node=node, interface="eth0"))
        for n in range(3):
            timestamp = START + (2 * n + section) * MS
            writer.write_packet(interface_id=0, timestamp_ns=timestamp, data=udp_frame(payload_length=20))
        writer.finish(timestamp_ns=START + 10 * MS)
    output = tmp_path / "sections.pcapng"
    output.write_bytes(
        b"".join(merge_pcapng([merge_input([stream.getvalue()], interface_name="-")], section=SECTION))
    )
    assert [row[0] for row in tshark_fields(output, "frame.interface_name")] == ["node-a/eth0"] * 3 + [
        "node-b/eth0"
    ] * 3  # one input: its own order
    check_tools_read(output, tmp_path)


def test_link_types_that_differ_cannot_make_one_classic_pcap() -> None:
    stream = io.BytesIO()
    writer = PcapngWriter(file=stream, section=SECTION)
    writer.add_interface(node_interface(node="n", interface="eth0"))
    writer.write_packet(interface_id=0, timestamp_ns=START, data=b"x" * 20)
    writer.add_interface(InterfaceInfo(name="n/wg0", linktype=101, snaplen=100))
    writer.write_packet(interface_id=1, timestamp_ns=START + 1, data=b"y" * 20)
    with pytest.raises(PcapFormatError, match="interface 'n/wg0' has link type 101, the merged file 1"):
        b"".join(merge_pcap([merge_input([stream.getvalue()], interface_name="-")]))


def test_no_interface_at_all_is_an_error_not_a_file_mergecap_refuses() -> None:
    with pytest.raises(PcapFormatError, match="no files to merge, or none describes an interface"):
        b"".join(merge_pcapng([], section=SECTION, names=NAMES))
    only_a_section = merge_input([section_header_block(SECTION)], interface_name="-")
    with pytest.raises(PcapFormatError, match="none describes an interface"):
        b"".join(merge_pcapng([only_a_section], section=SECTION))


def generated_input(*, packets: int, offset: int, pcapng: bool) -> Iterator[bytes]:
    """An input made as it is read (its size costs no memory): classic or pcapng, 64 KiB chunks."""
    frame = udp_frame(payload_length=200)
    pending = bytearray()
    if pcapng:
        pending += section_header_block(SECTION)
        pending += interface_description_block(InterfaceInfo(name="n/eth0", linktype=1, snaplen=65535))
    else:
        pending += global_header(nanosecond=True, snaplen=65535, linktype=1)
    for n in range(packets):
        timestamp = START + n * 3000 + offset
        if pcapng:
            pending += enhanced_packet_block(
                interface_id=0, timestamp_ns=timestamp, data=frame, original_length=len(frame)
            )
        else:
            pending += record_bytes(Record.at(timestamp_ns=timestamp, data=frame), nanosecond=True)
        if len(pending) >= 65536:
            yield bytes(pending)
            pending.clear()
    yield bytes(pending)


def merge_peak(packets: int, *, to_pcapng: bool) -> tuple[int, int]:
    """(peak traced bytes, output bytes) of merging three generated inputs of ``packets`` each."""
    tracemalloc.start()
    try:
        inputs = [
            merge_input(
                generated_input(packets=packets, offset=i, pcapng=i == 2), interface_name=f"n{i}/eth0"
            )
            for i in range(3)
        ]
        chunks = merge_pcapng(inputs, section=SECTION) if to_pcapng else merge_pcap(inputs)
        size = sum(len(chunk) for chunk in chunks)
        return tracemalloc.get_traced_memory()[1], size
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("to_pcapng", [True, False])
def test_memory_is_bounded_by_the_number_of_inputs_not_their_size(to_pcapng: bool) -> None:
    small_peak, small_size = merge_peak(1_000, to_pcapng=to_pcapng)
    large_peak, large_size = merge_peak(10_000, to_pcapng=to_pcapng)
    assert large_size > 9 * small_size  # 3 x 10000 packets of 242 bytes: about 8 MB merged
    assert large_peak < small_peak + 64 * 1024, (small_peak, large_peak)
    assert large_peak < 2 * 1024 * 1024
