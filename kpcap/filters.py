"""The capture filter as a libpcap expression (for the kernel) and as a pure-Python predicate (the
agent's second check, so that no packet outside the filter is ever written).

Both are built from the validated, typed ``CaptureFilter`` only, never from user text, and have the
same verdict on every Ethernet frame (tests compile the expression with libpcap and compare):

* All given fields must match (AND). An empty filter matches every frame, IP or not.
* Addresses: ``ip src host A`` / ``ip6 src host A`` (IP only: libpcap's bare ``host`` would also
  match ARP and RARP).
* Ports: libpcap's ``src port N`` / ``dst port N``: TCP, UDP or SCTP over IPv4 or IPv6.
  IPv4: the port is read after the header length given by IHL; non-first fragments (fragment
  offset != 0) carry no ports and never match a port filter; first fragments do.
  IPv6: extension headers are not walked; a port filter matches only when the next header right
  after the fixed 40-byte header is TCP, UDP or SCTP.
* Protocol: ``ip proto N or ip6 proto N``. IPv4: the header's protocol field, on every fragment.
  IPv6: the fixed header's next header, or, as libpcap does, the next header of a Fragment header
  (44) that directly follows it; other extension headers are not walked.
* VLAN: frames with one or two 802.1Q / 802.1ad tags (TPID 0x8100, 0x88a8 or 0x9100) match by their
  inner packet: ``E or (vlan and (E or (vlan and E)))``. The nesting matters: each ``vlan`` in a
  libpcap expression shifts the offsets for everything after it, so ``E or (vlan and E) or (vlan
  and vlan and E)`` would read the double-tagged case 12 bytes in, not 8. Where the kernel strips
  the outer tag before the filter runs (VLAN offload), the inner packet matches the ``E`` branch.
* Like compiled BPF, no sanity checks (IP version nibble, lengths, checksums) are made, and a frame
  too short for a byte the verdict needs does not match.
"""

from __future__ import annotations

import struct
from typing import Final

from kpcap.model import CaptureFilter, IPAddress

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
VLAN_TPIDS: Final = frozenset({0x8100, 0x88A8, 0x9100})  # the TPIDs libpcap's `vlan` accepts
VLAN_TAG_LENGTH: Final = 4
MAX_VLAN_TAGS: Final = 2
ETHERNET_HEADER_LENGTH: Final = 14
IPV6_HEADER_LENGTH: Final = 40
IPV6_FRAGMENT_HEADER: Final = 44
PORT_CARRYING_PROTOCOLS: Final = frozenset({6, 17, 132})  # TCP, UDP, SCTP, as libpcap's `port`
IPV4_FRAGMENT_OFFSET_MASK: Final = 0x1FFF


def bpf_expression(capture_filter: CaptureFilter) -> str:
    """The libpcap filter expression for ``capture_filter`` ("" for an empty filter: every frame).

    Only formatted integers and ``ipaddress`` values go into the text, so it cannot carry anything
    a user typed verbatim.
    """
    clauses: list[str] = []
    if capture_filter.source_address is not None:
        clauses.append(f"{_family(capture_filter.source_address)} src host {capture_filter.source_address}")
    if capture_filter.destination_address is not None:
        address = capture_filter.destination_address
        clauses.append(f"{_family(address)} dst host {address}")
    if capture_filter.source_port is not None:
        clauses.append(f"src port {int(capture_filter.source_port)}")
    if capture_filter.destination_port is not None:
        clauses.append(f"dst port {int(capture_filter.destination_port)}")
    if capture_filter.protocol is not None:
        protocol = int(capture_filter.protocol)
        clauses.append(f"(ip proto {protocol} or ip6 proto {protocol})")
    if not clauses:
        return ""
    packet = " and ".join(clauses)
    # Untagged, one tag, two tags (MAX_VLAN_TAGS); nested because `vlan` shifts all later offsets.
    return f"{packet} or (vlan and ({packet} or (vlan and ({packet}))))"


def matches(capture_filter: CaptureFilter, frame: bytes) -> bool:
    """Whether the raw Ethernet ``frame`` matches ``capture_filter``, exactly as the compiled
    ``bpf_expression`` would decide (see the module docstring for the semantics)."""
    if capture_filter.is_empty:
        return True
    try:
        for tags in range(MAX_VLAN_TAGS + 1):
            shift = tags * VLAN_TAG_LENGTH
            if _matches_untagged(capture_filter, frame, shift=shift):
                return True
            if _u16(frame, 12 + shift) not in VLAN_TPIDS:
                return False
    except _Truncated:
        return False
    return False


class _Truncated(Exception):  # noqa: N818 - control flow, never escapes this module
    """A byte the verdict needs is past the end of the frame (BPF rejects the frame then)."""


def _family(address: IPAddress) -> str:
    return "ip" if address.version == 4 else "ip6"


def _u8(frame: bytes, offset: int) -> int:
    if offset + 1 > len(frame):
        raise _Truncated
    return frame[offset]


def _u16(frame: bytes, offset: int) -> int:
    if offset + 2 > len(frame):
        raise _Truncated
    value: int = struct.unpack_from("!H", frame, offset)[0]
    return value


def _bytes(frame: bytes, offset: int, length: int) -> bytes:
    if offset + length > len(frame):
        raise _Truncated
    return frame[offset : offset + length]


def _matches_untagged(capture_filter: CaptureFilter, frame: bytes, *, shift: int) -> bool:
    """The filter against the packet whose EtherType sits at 12 + shift (the libpcap ``E``)."""
    ethertype = _u16(frame, 12 + shift)
    network = ETHERNET_HEADER_LENGTH + shift
    return (
        _address_matches(capture_filter.source_address, frame, ethertype, network, source=True)
        and _address_matches(capture_filter.destination_address, frame, ethertype, network, source=False)
        and _port_matches(capture_filter.source_port, frame, ethertype, network, source=True)
        and _port_matches(capture_filter.destination_port, frame, ethertype, network, source=False)
        and _protocol_matches(capture_filter.protocol, frame, ethertype, network)
    )


def _address_matches(
    address: IPAddress | None, frame: bytes, ethertype: int, network: int, *, source: bool
) -> bool:
    if address is None:
        return True
    if address.version == 4:
        offset = network + (12 if source else 16)
        return ethertype == ETHERTYPE_IPV4 and _bytes(frame, offset, 4) == address.packed
    offset = network + (8 if source else 24)
    return ethertype == ETHERTYPE_IPV6 and _bytes(frame, offset, 16) == address.packed


def _port_matches(port: int | None, frame: bytes, ethertype: int, network: int, *, source: bool) -> bool:
    if port is None:
        return True
    port_offset = 0 if source else 2
    if ethertype == ETHERTYPE_IPV6:
        if _u8(frame, network + 6) not in PORT_CARRYING_PROTOCOLS:
            return False
        return _u16(frame, network + IPV6_HEADER_LENGTH + port_offset) == port
    if ethertype == ETHERTYPE_IPV4:
        if _u8(frame, network + 9) not in PORT_CARRYING_PROTOCOLS:
            return False
        if _u16(frame, network + 6) & IPV4_FRAGMENT_OFFSET_MASK:
            return False  # a non-first fragment: no transport header, so no ports
        header_length = (_u8(frame, network) & 0x0F) * 4
        return _u16(frame, network + header_length + port_offset) == port
    return False


def _protocol_matches(protocol: int | None, frame: bytes, ethertype: int, network: int) -> bool:
    if protocol is None:
        return True
    if ethertype == ETHERTYPE_IPV4:
        return _u8(frame, network + 9) == protocol
    if ethertype == ETHERTYPE_IPV6:
        next_header = _u8(frame, network + 6)
        if next_header == protocol:
            return True
        return next_header == IPV6_FRAGMENT_HEADER and _u8(frame, network + IPV6_HEADER_LENGTH) == protocol
    return False
