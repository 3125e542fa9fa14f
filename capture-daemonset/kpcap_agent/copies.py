"""Copies of one packet seen on several interfaces: the policy, and the filter that drops them.

With ``ETH_P_ALL`` on several interfaces the kernel hands the socket one copy of a packet per
interface it crosses: a routed or bridged packet is seen arriving on one interface and leaving
(``PACKET_OUTGOING``) on another; a VLAN-tagged frame is seen on the parent and again, untagged, on
the VLAN sub-interface.

- ``CopyPolicy.ONE_COPY`` (default): keep a packet once, the first time it is seen (usually as it
  arrives on the node). A later frame is dropped as a copy when it carries the same layer-3 packet
  (IPv4 TTL and header checksum and IPv6 hop limit ignored, since forwarding changes them; link
  headers and VLAN tags ignored) and was seen on a *different* interface within
  ``copy_window_seconds`` (0.5 s). Identical packets on one interface (retransmissions, trafgen
  bursts) are all kept: a copy on another interface cancels at most as many copies as were kept.
  Packets rewritten on the way (NAT, tunnels) are different packets and are kept on both sides.
  Memory is bounded (at most 131072 remembered packets). The live source uses it only when more
  than one interface is captured, and keeps it dormant until frames actually come from a second
  interface (:class:`kpcap_agent.afpacket.LiveSource`).
- ``CopyPolicy.EVERY_COPY``: every copy on every interface, like ``tcpdump -i any``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from kpcap.filters import ETHERTYPE_IPV4, ETHERTYPE_IPV6, VLAN_TAG_LENGTH, VLAN_TPIDS


class CopyPolicy(enum.StrEnum):
    """What to do with the copies of one packet seen on several interfaces (module docstring)."""

    ONE_COPY = "one-copy"
    EVERY_COPY = "every-copy"


class _Seen:
    __slots__ = ("copies_elsewhere", "kept", "last_seen_ns", "origin_interface")

    def __init__(self, *, origin_interface: int, last_seen_ns: int) -> None:
        self.origin_interface = origin_interface
        self.kept = 1
        self.copies_elsewhere: dict[int, int] = {}
        self.last_seen_ns = last_seen_ns


# Bytes of the layer-3 packet a cut frame must keep to be told from others: the IPv4 or IPv6 header
# and the first 8 bytes after it (ports, TCP sequence number, ICMP identifier).
_IDENTIFYING_BYTES: Final = {ETHERTYPE_IPV4: 20 + 8, ETHERTYPE_IPV6: 40 + 8}


def layer3_identity(frame: bytes, *, original_length: int | None = None) -> int | None:
    """A hash of the frame's layer-3 packet with the fields forwarding rewrites left out, or None
    when the frame was cut too short to tell it from other packets.

    Link header and VLAN tags are skipped, IPv4 TTL and header checksum and IPv6 hop limit ignored.
    ``original_length``: the frame's length on the wire (None: ``len(frame)``, not cut). A frame cut
    by a snap length is identified only if it keeps its IP header and 8 bytes more (with less, two
    different packets look alike and one would be dropped as the other's copy); the packet's length
    counts too.
    """
    offset = 12
    ethertype = int.from_bytes(frame[12:14])
    while ethertype in VLAN_TPIDS and len(frame) >= offset + 2 + VLAN_TAG_LENGTH:
        offset += VLAN_TAG_LENGTH
        ethertype = int.from_bytes(frame[offset : offset + 2])
    packet = frame[offset + 2 :]
    packet_length = len(packet)
    if original_length is not None and original_length > len(frame):
        if packet_length < _IDENTIFYING_BYTES.get(ethertype, 1 << 16):
            return None
        packet_length = original_length - offset - 2
    if ethertype == ETHERTYPE_IPV4 and len(packet) >= 20:
        return hash((ethertype, packet_length, packet[:8], packet[9:10], packet[12:]))
    if ethertype == ETHERTYPE_IPV6 and len(packet) >= 40:
        return hash((ethertype, packet_length, packet[:7], packet[8:]))
    return hash((ethertype, packet_length, packet))


@dataclass(kw_only=True)
class CopyFilter:
    """Implements :attr:`CopyPolicy.ONE_COPY`: says whether a frame is a copy to skip."""

    window_ns: int = 500_000_000
    max_remembered: int = 131072
    _seen: OrderedDict[int, _Seen] = field(default_factory=OrderedDict, init=False, repr=False)

    def is_copy(
        self, *, data: bytes, interface_index: int, timestamp_ns: int, original_length: int | None = None
    ) -> bool:
        seen_packets = self._seen
        # Forget packets not seen for a window (least recently seen first), and bound the memory.
        while seen_packets:
            oldest = next(iter(seen_packets.values()))
            if (
                oldest.last_seen_ns >= timestamp_ns - self.window_ns
                and len(seen_packets) < self.max_remembered
            ):
                break
            seen_packets.popitem(last=False)
        identity = layer3_identity(data, original_length=original_length)
        if identity is None:
            return False  # cut too short to be told from other packets: keep every copy
        seen = seen_packets.get(identity)
        if seen is None:
            seen_packets[identity] = _Seen(origin_interface=interface_index, last_seen_ns=timestamp_ns)
            return False
        seen.last_seen_ns = timestamp_ns
        seen_packets.move_to_end(identity)
        if interface_index == seen.origin_interface:
            seen.kept += 1
            return False
        copies = seen.copies_elsewhere.get(interface_index, 0)
        if copies < seen.kept:
            seen.copies_elsewhere[interface_index] = copies + 1
            return True
        return False
