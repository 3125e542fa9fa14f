"""The live AF_PACKET source with real packets between network namespaces (root; CI runs as root)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from kpcap.filters import bpf_expression, compile_matcher, matches
from kpcap.model import CaptureFilter
from kpcap.pcap import GLOBAL_HEADER_SIZE, RECORD_HEADER_SIZE, iter_pcap_records
from kpcap_agent.capture import CaptureLimits, StopReason
from kpcap_agent.copies import CopyPolicy
from tests.agent.netns import (
    NetnsThread,
    Routed,
    VethPair,
    in_netns,
    run,
    send_frames,
    start_capture,
    trafgen_burst,
)

UDP_5555 = "udp and dst port 5555"


def frame_to(pair: VethPair, *, port: int, marker: int, payload_length: int = 20) -> bytes:
    return bytes(
        Ether(src=pair.left.mac, dst=pair.right.mac)
        / IP(src=pair.left.address, dst=pair.right.address)
        / UDP(sport=40000, dport=port)
        / Raw(marker.to_bytes(4, "big") + bytes(payload_length))
    )


def tshark_raw_frames(path: Path) -> list[bytes]:
    output = subprocess.run(
        ["tshark", "-r", str(path), "-x", "-T", "json"], capture_output=True, text=True, check=True
    ).stdout
    return [bytes.fromhex(packet["_source"]["layers"]["frame_raw"][0]) for packet in json.loads(output)]


def test_only_matching_packets_are_written_byte_for_byte(veth_pair: VethPair, tmp_path: Path) -> None:
    # Non-matching traffic is already flowing when the capture's socket is opened.
    noise_stop = threading.Event()
    noise = [frame_to(veth_pair, port=53, marker=number) for number in range(50)]

    def send_noise() -> int:
        sent = 0
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sender:
            sender.bind((veth_pair.left.interface, 0))
            while not noise_stop.is_set():
                sender.send(noise[sent % len(noise)])
                sent += 1
                time.sleep(0.0005)
        return sent

    noise_thread = NetnsThread(netns=veth_pair.left.netns, function=send_noise)
    noise_thread.start()
    time.sleep(0.2)
    path = tmp_path / "matching.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30),
    )
    matching = [frame_to(veth_pair, port=5555, marker=number, payload_length=number) for number in range(200)]
    mixed = [frame for pair in zip(matching, noise * 4, strict=False) for frame in pair]
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=mixed)
    time.sleep(0.3)
    noise_stop.set()
    assert noise_thread.result() > 0
    running.stop_event.set()
    result = running.result()

    assert result.reason is StopReason.STOPPED
    assert (result.packets, result.rejected) == (200, 0)
    assert result.bytes == sum(map(len, matching))
    assert isinstance(result.kernel_drops, int)
    assert result.kernel_drops >= 0
    assert result.interfaces == (veth_pair.right.interface,)
    assert [bytes(packet) for packet in rdpcap(str(path))] == matching
    assert tshark_raw_frames(path) == matching


def test_packet_limit_under_a_trafgen_burst(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "burst.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=60),
    )
    frame = frame_to(veth_pair, port=5555, marker=7)
    trafgen_burst(
        netns=veth_pair.left.netns,
        interface=veth_pair.left.interface,
        frame=frame,
        count=50000,
        config_dir=tmp_path,
    )
    result = running.result()
    assert (result.packets, result.reason) == (10000, StopReason.PACKET_LIMIT)
    assert result.kernel_drops >= 0
    tshark_count = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(tshark_count) == 10000
    assert {record.data for record in iter_pcap_records(path)} == {frame}


def test_a_whole_burst_is_captured(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "all.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=1_000_000, time_limit=60),
    )
    trafgen_burst(
        netns=veth_pair.left.netns,
        interface=veth_pair.left.interface,
        frame=frame_to(veth_pair, port=5555, marker=1),
        count=50000,
        config_dir=tmp_path,
    )
    time.sleep(1)
    running.stop_event.set()
    result = running.result()
    assert (result.packets, result.kernel_drops) == (50000, 0)


def test_byte_limit_within_one_packet(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "bytes.pcap"
    byte_limit = 20000
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30, byte_limit=byte_limit),
    )
    frames = [
        frame_to(veth_pair, port=5555, marker=number, payload_length=100 + 13 * number)
        for number in range(100)
    ]
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
    result = running.result()
    assert result.reason is StopReason.BYTE_LIMIT
    assert result.bytes <= byte_limit < result.bytes + len(frames[result.packets])
    assert [record.data for record in iter_pcap_records(path)] == frames[: result.packets]
    assert path.stat().st_size == GLOBAL_HEADER_SIZE + RECORD_HEADER_SIZE * result.packets + result.bytes


def test_time_limit_without_traffic(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "quiet.pcap"
    started = time.monotonic()
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10, time_limit=3),
    )
    result = running.result()
    elapsed = time.monotonic() - started
    assert (result.packets, result.reason) == (0, StopReason.TIME_LIMIT)
    assert 3 <= result.duration_seconds < 4
    assert elapsed < 4.5  # including opening the socket and compiling the filter
    assert subprocess.run(["tcpdump", "-r", str(path)], capture_output=True, check=True).stdout == b""


def test_stop_event_ends_early_with_a_valid_pcap(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "stopped.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=120),
    )
    frames = [frame_to(veth_pair, port=5555, marker=number) for number in range(20)]
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
    time.sleep(0.3)
    stop_requested = time.monotonic()
    running.stop_event.set()
    result = running.result()
    assert time.monotonic() - stop_requested < 1
    assert (result.packets, result.reason) == (20, StopReason.STOPPED)
    assert tshark_raw_frames(path) == frames


def tagged_frames(pair: VethPair) -> list[bytes]:
    return [
        bytes(
            Ether(src=pair.left.mac, dst=pair.right.mac)
            / Dot1Q(vlan=100, prio=3)
            / IP(src="198.18.200.11", dst="198.18.200.12")
            / UDP(sport=40000, dport=5555)
            / Raw(number.to_bytes(4, "big") + bytes(20))
        )
        for number in range(10)
    ]


def test_vlan_tagged_frames_keep_their_tag(veth_pair: VethPair, tmp_path: Path) -> None:
    tagged = tagged_frames(veth_pair)
    untagged = [frame_to(veth_pair, port=5555, marker=100 + number) for number in range(10)]
    capture_filter = CaptureFilter(destination_port=5555)
    captures = {
        name: start_capture(
            netns=veth_pair.right.netns,
            path=tmp_path / f"{name}.pcap",
            filter_expression=expression,
            limits=CaptureLimits(packet_limit=10000, time_limit=30),
            interfaces=interfaces,
            accept=lambda frame: matches(capture_filter, frame),
        )
        for name, expression, interfaces in (
            ("named", bpf_expression(capture_filter), [veth_pair.right.interface]),
            ("all", bpf_expression(capture_filter), None),
            ("plain", UDP_5555, [veth_pair.right.interface]),
            ("vlan-keyword", "vlan 100", [veth_pair.right.interface]),
        )
    }
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=tagged + untagged)
    time.sleep(0.5)
    for running in captures.values():
        running.stop_event.set()
    results = {name: running.result() for name, running in captures.items()}

    # The tag the kernel moved to metadata is back in the written frame, byte for byte; the kernel
    # filter saw the untagged frame, so a plain `udp and dst port 5555` matches tagged frames too.
    for name in ("named", "all", "plain"):
        assert tshark_raw_frames(tmp_path / f"{name}.pcap") == tagged + untagged, name
    # Finding: libpcap's `vlan` compiled for a dead Ethernet handle checks for 0x8100 in the frame,
    # which the kernel stripped before the filter runs, so it matches no received tagged frame.
    assert results["vlan-keyword"].packets == 0
    assert all(result.rejected == 0 for result in results.values())


def test_only_frames_judged_without_their_outer_tag_are_checked_again(
    veth_pair: VethPair, tmp_path: Path
) -> None:
    # The agent's arrangement: no userspace check in the loop; the source re-checks the frames whose
    # outer tag the kernel stripped before its filter ran. A frame with three tags passes the kernel
    # filter (it sees two) but not the spec (up to two): it is the one the re-check must refuse.
    def stacked(tags: int, number: int) -> bytes:
        frame = Ether(src=veth_pair.left.mac, dst=veth_pair.right.mac)
        for tag in range(tags):
            frame /= Dot1Q(vlan=100 + tag)
        frame /= IP(src="198.18.200.11", dst="198.18.200.12") / UDP(sport=40000, dport=5555)
        return bytes(frame / Raw(number.to_bytes(4, "big") + bytes(20)))

    kept = [stacked(tags, number) for number in range(5) for tags in (0, 1, 2)]
    three_tags = [stacked(3, number) for number in range(5)]
    capture_filter = CaptureFilter(destination_port=5555)
    captures = {
        name: start_capture(
            netns=veth_pair.right.netns,
            path=tmp_path / f"{name}.pcap",
            filter_expression=bpf_expression(capture_filter),
            limits=CaptureLimits(packet_limit=10000, time_limit=30),
            interfaces=[veth_pair.right.interface],
            recheck=recheck,
        )
        for name, recheck in (
            ("agent", lambda frame: matches(capture_filter, frame)),
            ("kernel only", lambda _frame: True),
        )
    }
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=kept + three_tags)
    time.sleep(0.5)
    for running in captures.values():
        running.stop_event.set()
    results = {name: running.result() for name, running in captures.items()}

    assert tshark_raw_frames(tmp_path / "agent.pcap") == kept
    assert results["agent"].rejected == len(three_tags)
    # Without the re-check the kernel's verdict alone keeps the three-tag frames: the check is needed.
    assert tshark_raw_frames(tmp_path / "kernel only.pcap") == kept + three_tags


def test_vlan_sub_interface_copy_is_kept_once(veth_pair: VethPair, tmp_path: Path) -> None:
    # The kernel hands a tagged frame to the parent (tag in metadata) and again, untagged, to the
    # VLAN sub-interface: two copies of one packet when capturing on all interfaces.
    vlan_interface = f"{veth_pair.right.interface}.1"
    created = subprocess.run(
        ["ip", "-n", veth_pair.right.netns, "link", "add", "link", veth_pair.right.interface, "name", vlan_interface,
         "type", "vlan", "id", "100"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if "Unknown device type" in created.stderr:
        pytest.skip("this kernel has no 8021q (VLAN sub-interfaces); CopyFilter's unit test covers it")
    assert created.returncode == 0, created.stderr
    run("ip", "-n", veth_pair.right.netns, "link", "set", vlan_interface, "up")
    tagged = tagged_frames(veth_pair)
    captures = {
        policy: start_capture(
            netns=veth_pair.right.netns,
            path=tmp_path / f"{policy}.pcap",
            filter_expression=UDP_5555,
            limits=CaptureLimits(packet_limit=10000, time_limit=30),
            copy_policy=policy,
        )
        for policy in CopyPolicy
    }
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=tagged)
    time.sleep(0.5)
    for running in captures.values():
        running.stop_event.set()
        running.result()
    assert tshark_raw_frames(tmp_path / f"{CopyPolicy.ONE_COPY}.pcap") == tagged
    every_copy = [record.data for record in iter_pcap_records(tmp_path / f"{CopyPolicy.EVERY_COPY}.pcap")]
    assert sorted(every_copy) == sorted(tagged + [frame[:12] + frame[16:] for frame in tagged])


def test_forwarded_packets_are_kept_once(routed: Routed, tmp_path: Path) -> None:
    captures = {
        policy: start_capture(
            netns=routed.router_client_side.netns,
            path=tmp_path / f"{policy}.pcap",
            filter_expression=UDP_5555,
            limits=CaptureLimits(packet_limit=10000, time_limit=30),
            copy_policy=policy,
        )
        for policy in CopyPolicy
    }
    payloads = [number.to_bytes(2, "big") * 10 for number in range(20)] + [b"same" * 5] * 5

    def send() -> None:
        # Unconnected UDP with DF: IP id 0, so the five "same" datagrams are identical packets.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for payload in payloads:
                sender.sendto(payload, (routed.server.address, 5555))
                time.sleep(0.002)

    in_netns(routed.client.netns, send)
    time.sleep(0.5)
    for running in captures.values():
        running.stop_event.set()
    results = {policy: running.result() for policy, running in captures.items()}

    one_copy = rdpcap(str(tmp_path / f"{CopyPolicy.ONE_COPY}.pcap"))
    assert [bytes(packet[UDP].payload) for packet in one_copy] == payloads
    assert {packet[Ether].src for packet in one_copy} == {routed.client.mac}  # the arriving copies
    assert {packet[IP].ttl for packet in one_copy} == {64}
    every_copy = rdpcap(str(tmp_path / f"{CopyPolicy.EVERY_COPY}.pcap"))
    assert len(every_copy) == 2 * len(payloads)
    assert sorted({packet[IP].ttl for packet in every_copy}) == [63, 64]
    assert set(results[CopyPolicy.ONE_COPY].interfaces) == {
        routed.router_client_side.interface,
        routed.router_server_side.interface,
    }


def test_named_interfaces_only(routed: Routed, tmp_path: Path) -> None:
    path = tmp_path / "server-side.pcap"
    running = start_capture(
        netns=routed.router_client_side.netns,
        path=path,
        filter_expression=UDP_5555,
        limits=CaptureLimits(packet_limit=10000, time_limit=30),
        interfaces=[routed.router_server_side.interface],
    )

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for number in range(10):
                sender.sendto(bytes([number]) * 8, (routed.server.address, 5555))

    in_netns(routed.client.netns, send)
    time.sleep(0.3)
    running.stop_event.set()
    result = running.result()
    packets = rdpcap(str(path))
    assert result.packets == len(packets) == 10
    assert {packet[Ether].src for packet in packets} == {routed.router_server_side.mac}  # leaving copies


def _filter_corpus(pair: VethPair) -> list[bytes]:
    """Frames that differ in every field a filter can name: families, addresses, protocols, ports.

    No address belongs to the receiving namespace (which does not forward), so it answers none of
    them: the capture, which sees both directions, holds exactly the frames sent.
    """
    from scapy.layers.inet import ICMP, TCP
    from scapy.layers.inet6 import IPv6

    link = Ether(src=pair.left.mac, dst=pair.right.mac)
    v4 = [
        ("198.18.210.1", "198.18.210.2"),
        ("198.18.201.7", "198.18.210.2"),
        ("198.18.210.1", "198.18.202.9"),
    ]
    v6 = [("2001:db8::1", "2001:db8::2"), ("2001:db8::7", "2001:db8::2"), ("2001:db8::1", "2001:db8::9")]
    frames: list[bytes] = []
    marker = 0
    for family, pairs in ((IP, v4), (IPv6, v6)):
        for src, dst in pairs:
            for transport in (
                UDP(sport=1111, dport=53),
                UDP(sport=53, dport=2222),
                TCP(sport=1111, dport=443),
                TCP(sport=443, dport=53),
            ):
                marker += 1
                frames.append(
                    bytes(link / family(src=src, dst=dst) / transport / Raw(marker.to_bytes(4, "big")))
                )
            if family is IP:
                marker += 1
                frames.append(bytes(link / IP(src=src, dst=dst) / ICMP() / Raw(marker.to_bytes(4, "big"))))
    return frames


LIVE_FILTERS = {
    "v4 source address": CaptureFilter(source_address=ipaddress.ip_address("198.18.201.7")),
    "v4 destination address": CaptureFilter(destination_address=ipaddress.ip_address("198.18.202.9")),
    "v6 source address": CaptureFilter(source_address=ipaddress.ip_address("2001:db8::7")),
    "v6 destination address": CaptureFilter(destination_address=ipaddress.ip_address("2001:db8::9")),
    "source port": CaptureFilter(source_port=53),
    "destination port": CaptureFilter(destination_port=53),
    "protocol tcp": CaptureFilter(protocol=6),
    "protocol icmp": CaptureFilter(protocol=1),
    "v4 address + udp + port": CaptureFilter(
        source_address=ipaddress.ip_address("198.18.210.1"), protocol=17, destination_port=53
    ),
    "v6 both addresses + tcp source port": CaptureFilter(
        source_address=ipaddress.ip_address("2001:db8::1"),
        destination_address=ipaddress.ip_address("2001:db8::2"),
        protocol=6,
        source_port=443,
    ),
}


@pytest.mark.parametrize("name", sorted(LIVE_FILTERS))
def test_each_filter_field_keeps_exactly_the_matching_frames(
    veth_pair: VethPair, tmp_path: Path, name: str
) -> None:
    capture_filter = LIVE_FILTERS[name]
    corpus = _filter_corpus(veth_pair)
    expected = [frame for frame in corpus if matches(capture_filter, frame)]
    assert 0 < len(expected) < len(corpus), "the corpus has frames on both sides of this filter"
    path = tmp_path / "filtered.pcap"
    running = start_capture(
        netns=veth_pair.right.netns,
        path=path,
        filter_expression=bpf_expression(capture_filter),
        limits=CaptureLimits(packet_limit=10000, time_limit=30),
        accept=compile_matcher(capture_filter),
    )
    send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=corpus)
    time.sleep(0.3)
    running.stop_event.set()
    result = running.result()
    assert result.rejected == 0, "the kernel filter and the userspace check agree"
    written = [record.data for record in iter_pcap_records(path)]
    # Only our corpus: the link's own traffic (IPv6 router solicitations...) must not match these filters.
    assert written == expected
