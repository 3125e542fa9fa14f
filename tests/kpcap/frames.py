"""Test helpers: Ethernet frames built with scapy, with the variations the filter must handle."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

MAC_DST = bytes.fromhex("020000000002")
MAC_SRC = bytes.fromhex("020000000001")

IPV4_ADDRESSES = ("198.18.0.1", "198.18.0.2", "198.19.255.9")
IPV6_ADDRESSES = ("2001:db8::1", "2001:db8::2", "::ffff:198.18.0.1")
PORTS = (0, 53, 80, 443, 65535)
PROTOCOLS = (1, 6, 17, 47, 58, 132, 0, 255)
TPIDS = (0x8100, 0x88A8, 0x9100)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameSpec:
    kind: str  # "ipv4", "ipv6", "arp", "other"
    source: str = ""
    destination: str = ""
    protocol: int = 6
    source_port: int = 0
    destination_port: int = 0
    vlan_tpids: tuple[int, ...] = ()
    ipv4_fragment_offset: int = 0  # in 8-byte units; > 0 = a non-first fragment
    ipv4_more_fragments: bool = False
    ipv4_options: bool = False
    ipv6_extension: str = "none"  # "none", "fragment", "hop-by-hop"
    truncate_to: int | None = None


def _transport(protocol: int, source_port: int, destination_port: int, *, ipv6: bool) -> Packet:
    if protocol == 6:
        return TCP(sport=source_port, dport=destination_port)
    if protocol == 17:
        return UDP(sport=source_port, dport=destination_port)
    if protocol == 132:
        return SCTP(sport=source_port, dport=destination_port)
    if protocol == 1 and not ipv6:
        return ICMP()
    if protocol == 58 and ipv6:
        return ICMPv6EchoRequest()
    # Any other protocol: bytes that would read as the ports if a filter looked there by mistake.
    return Raw(struct.pack("!HH", source_port, destination_port) + b"\x00" * 16)


def build_frame(spec: FrameSpec) -> bytes:
    ethertype: int
    network: Packet
    if spec.kind == "ipv4":
        ethertype = 0x0800
        transport = _transport(spec.protocol, spec.source_port, spec.destination_port, ipv6=False)
        flags = "MF" if spec.ipv4_more_fragments else 0
        options = b"\x01\x01\x01\x00" if spec.ipv4_options else b""  # NOP NOP NOP EOL
        network = IP(
            src=spec.source,
            dst=spec.destination,
            proto=spec.protocol,
            flags=flags,
            frag=spec.ipv4_fragment_offset,
            options=options,
        ) / Raw(bytes(transport))
        payload = bytes(network)
    elif spec.kind == "ipv6":
        ethertype = 0x86DD
        transport = Raw(bytes(_transport(spec.protocol, spec.source_port, spec.destination_port, ipv6=True)))
        if spec.ipv6_extension == "fragment":
            network = IPv6(src=spec.source, dst=spec.destination, nh=44) / IPv6ExtHdrFragment(
                nh=spec.protocol, offset=0, m=1
            )
        elif spec.ipv6_extension == "hop-by-hop":
            network = IPv6(src=spec.source, dst=spec.destination, nh=0) / IPv6ExtHdrHopByHop(nh=spec.protocol)
        else:
            network = IPv6(src=spec.source, dst=spec.destination, nh=spec.protocol)
        payload = bytes(network / transport)
    elif spec.kind == "arp":
        ethertype = 0x0806
        payload = bytes(ARP(psrc=spec.source, pdst=spec.destination))
    else:
        ethertype = 0x88B5  # local experimental EtherType
        payload = bytes(range(64))
    header = MAC_DST + MAC_SRC
    for index, tpid in enumerate(spec.vlan_tpids):
        header += struct.pack("!HH", tpid, 100 + index)
    frame = header + struct.pack("!H", ethertype) + payload
    if spec.truncate_to is not None:
        frame = frame[: spec.truncate_to]
    return frame


def address_version(text: str) -> int:
    return ipaddress.ip_address(text).version
