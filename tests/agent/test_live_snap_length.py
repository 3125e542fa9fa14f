"""spec.snapLength with real packets between network namespaces (root; CI runs as root): the kernel
filter's accepting return cuts each frame, the record keeps the wire length, byteLimit counts what
is kept."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from kpcap.pcap import GLOBAL_HEADER_SIZE, RECORD_HEADER_SIZE, iter_pcap_records, parse_global_header
from kpcap_agent.capture import CaptureLimits, StopReason
from tests.agent.netns import VethPair, send_frames, start_capture

UDP_5555 = "udp and dst port 5555"
SNAP = 64


def udp_frames(pair: VethPair, *, sizes: list[int], vlan: int | None = None) -> list[bytes]:
    """Frames to port 5555 with payloads of ``sizes`` bytes (a 4-byte marker first)."""
    tag = [Dot1Q(vlan=vlan)] if vlan is not None else []
    frames = []
    for number, size in enumerate(sizes):
        layers = Ether(src=pair.left.mac, dst=pair.right.mac)
        for layer in tag:
            layers = layers / layer
        layers = (
            layers
            / IP(src=pair.left.address, dst=pair.right.address)
            / UDP(sport=40000, dport=5555)
            / Raw(number.to_bytes(4, "big") + bytes(size))
        )
        frames.append(bytes(layers))
    return frames


def tshark_lengths(path: Path) -> list[tuple[int, int]]:
    """(captured, original) length of each record, as an independent reader sees them."""
    output = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.cap_len", "-e", "frame.len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(int(kept), int(wire)) for kept, wire in (line.split("\t") for line in output.splitlines())]


def test_the_kernel_cuts_each_frame_and_the_record_keeps_its_wire_length(
    veth_pair: VethPair, tmp_path: Path
) -> None:
    # The writer keeps its default snap length (262144): whatever is cut was cut in the kernel.
    path = tmp_path / "cut.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30),
        snaplen=SNAP,
    )
    frames = udp_frames(veth_pair, sizes=[0, 17, 18, 19, 100, 600, 1400])
    assert [len(frames[0]) < SNAP, len(frames[2]) == SNAP, len(frames[-1]) > 1400] == [True] * 3
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
    time.sleep(0.5)
    running.stop_event.set()
    result = running.result()

    records = list(iter_pcap_records(path))
    assert [record.data for record in records] == [frame[:SNAP] for frame in frames]
    assert [record.original_length for record in records] == [len(frame) for frame in frames]
    assert all(len(record.data) <= SNAP for record in records)
    assert tshark_lengths(path) == [(min(len(frame), SNAP), len(frame)) for frame in frames]
    assert result.bytes == sum(min(len(frame), SNAP) for frame in frames)


def test_byte_limit_counts_the_kept_bytes(veth_pair: VethPair, tmp_path: Path) -> None:
    # The agent's settings: kernel and file at the snap length. 1442-byte frames, 64 kept of each:
    # byteLimit 640 is reached by the 10th packet (not by the first, as wire bytes would).
    path = tmp_path / "bytes.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30, byte_limit=10 * SNAP),
        snaplen=SNAP,
        writer_snaplen=SNAP,
    )
    frames = udp_frames(veth_pair, sizes=[1400] * 30)
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
    result = running.result()

    assert (result.reason, result.packets, result.bytes) == (StopReason.BYTE_LIMIT, 10, 10 * SNAP)
    records = list(iter_pcap_records(path))
    assert [(record.data, record.original_length) for record in records] == [
        (frame[:SNAP], len(frame)) for frame in frames[:10]
    ]
    assert path.stat().st_size == GLOBAL_HEADER_SIZE + 10 * (RECORD_HEADER_SIZE + SNAP)
    assert parse_global_header(path.read_bytes()[:GLOBAL_HEADER_SIZE]).snaplen == SNAP


def test_vlan_tagged_frames_stay_within_the_snap_length(veth_pair: VethPair, tmp_path: Path) -> None:
    # The kernel cuts the untagged frame; the tag put back adds 4 bytes, which the file's snap
    # length cuts again, so a record never holds more than snapLength (the wire length has the tag).
    path = tmp_path / "tagged.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30),
        interfaces=[veth_pair.right.interface],
        snaplen=SNAP,
        writer_snaplen=SNAP,
    )
    frames = udp_frames(veth_pair, sizes=[10, 200, 1000], vlan=100)
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
    time.sleep(0.5)
    running.stop_event.set()
    running.result()

    records = list(iter_pcap_records(path))
    assert [(record.data, record.original_length) for record in records] == [
        (frame[:SNAP], len(frame)) for frame in frames
    ]
