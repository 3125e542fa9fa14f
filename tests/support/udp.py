"""A UDP-over-IPv4 Ethernet frame for the capture tests (fixed addresses, a numbered payload)."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw


def udp_frame(*, payload_length: int, port: int = 5555, marker: int = 0) -> bytes:
    payload = marker.to_bytes(4, "big") + bytes(max(0, payload_length - 4))
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.18.200.1", dst="198.18.200.2")
        / UDP(sport=1234, dport=port)
        / Raw(payload)
    )
