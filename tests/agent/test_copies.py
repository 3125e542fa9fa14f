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
