"""Reading captured PCAPs back in tests (scapy's reader: an independent check of what the agent wrote)."""

from __future__ import annotations

import io

from scapy.layers.inet import UDP
from scapy.utils import PcapReader


def udp_payloads(pcap: bytes) -> list[tuple[int, bytes]]:
    """(destination port, payload) of every UDP packet in ``pcap``, in file order."""
    return [(int(p[UDP].dport), bytes(p[UDP].payload)) for p in PcapReader(io.BytesIO(pcap)) if UDP in p]
