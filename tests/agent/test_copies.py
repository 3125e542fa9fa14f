"""Copy de-duplication (kpcap_agent.copies): one packet seen on several interfaces is kept once."""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.l2 import Dot1Q, Ether

from kpcap_agent.copies import CopyFilter, layer3_identity
from tests.support.udp import udp_frame


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


def test_cut_frames_are_copies_only_when_they_keep_enough_to_tell_packets_apart() -> None:
    first, second = (udp_frame(payload_length=30, marker=number) for number in (1, 2))
    # Cut to 64 bytes (IP and UDP headers kept): the same packet on another interface is a copy.
    copies = CopyFilter()
    assert not copies.is_copy(data=first[:64], interface_index=2, timestamp_ns=0, original_length=len(first))
    assert copies.is_copy(data=first[:64], interface_index=3, timestamp_ns=1, original_length=len(first))
    # Cut to 30 bytes (into the IP header), different packets look alike: nothing is called a copy,
    # so no packet is ever dropped as another's copy (the copies of one packet are all kept).
    assert first[:30] == second[:30]
    assert layer3_identity(first[:30], original_length=len(first)) is None
    copies = CopyFilter()
    seen = [
        copies.is_copy(data=frame[:30], interface_index=index, timestamp_ns=index, original_length=len(frame))
        for index, frame in enumerate((first, second, first), start=2)
    ]
    assert seen == [False, False, False]
    # The wire length counts: two cuts with the same bytes kept but different lengths differ.
    longer = udp_frame(payload_length=300, marker=1)
    assert layer3_identity(first[:64], original_length=len(first)) != layer3_identity(
        first[:64], original_length=len(longer)
    )
