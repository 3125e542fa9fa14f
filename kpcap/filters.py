"""The capture filter as a libpcap expression (for the kernel) and as a pure-Python predicate (the
agent's second check, so that no packet outside the filter is ever written).

``matches(capture_filter, frame)`` is the readable reference predicate; the agent calls the one from
``compile_matcher(capture_filter)``, which precomputes everything once and gives the same verdicts at
a fraction of the per-frame cost (see the notes above it; ``benchmarks/filters.py`` measures both).

All are built from the validated, typed ``CaptureFilter`` only, never from user text, and have the
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

import itertools
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from kpcap.model import CaptureFilter, IPAddress

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
TPID_8021Q: Final = 0x8100
VLAN_TPIDS: Final = frozenset({TPID_8021Q, 0x88A8, 0x9100})  # the TPIDs libpcap's `vlan` accepts
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


# --- the compiled matcher (the agent's per-frame check) ------------------------------------------------
#
# ``matches`` above is the readable reference; ``compile_matcher`` gives the same verdict with far fewer
# Python operations per frame. Everything that depends only on the filter is worked out once:
#
# * The verdict is the filter (``E``) on the innermost packet: at shift 0 if the EtherType at 12 is not
#   a VLAN TPID, else at 4 if the one at 16 is not, else at 8 (E is false on a TPID EtherType, as every
#   clause needs IP). A byte past the end only ever makes that E false: a clause reads beyond the
#   EtherType only when it is IP, and then no later VLAN branch exists.
# * For the common shapes (IPv4 with a 20-byte header, IPv6) every field E needs sits at a fixed
#   offset, so one precompiled ``struct.Struct`` reads them all in one call and one set lookup decides:
#   the set holds every field tuple for which E is true (IPv4: all 8 flag combinations with fragment
#   offset 0, each allowed protocol). A tuple outside the set whose shape field (EtherType, plus
#   version/IHL for IPv4) is the expected one is a definite no.
# * Anything else (VLAN tags, IPv4 options, a version nibble other than 4, IPv6 extension headers for
#   the protocol, frames too short for the struct) goes to a slower path: the fixed-offset fast path
#   again after the tags, else the reference code for that one packet.

_IPV4_SHAPE: Final = b"\x08\x00\x45"  # EtherType IPv4, version 4, IHL 5 (no options)
_IPV6_SHAPE: Final = b"\x86\xdd"
_VLAN_TPID_BYTES: Final = frozenset(tpid.to_bytes(2, "big") for tpid in VLAN_TPIDS)
# The IPv4 flags/fragment-offset field of a packet that carries ports: any flags, offset 0.
_IPV4_FIRST_FRAGMENT_FIELDS: Final = tuple(flags << 13 for flags in range(8))
# By shape length: every shape (the first bytes from offset 12) that starts with a VLAN TPID.
_TAGGED_SHAPES: Final = {
    length: frozenset(
        tpid + bytes([*rest])
        for tpid in _VLAN_TPID_BYTES
        for rest in itertools.product(range(256), repeat=length - 2)
    )
    for length in (len(_IPV4_SHAPE), len(_IPV6_SHAPE))
}
_NEVER: Final = sys.maxsize  # a minimum length no frame reaches: that fast path is off


@dataclass(frozen=True, slots=True, kw_only=True)
class _FastPath:
    """One fixed-offset layout: the fields E reads, read at once, and the tuples for which E is true."""

    layout: struct.Struct  # offsets from the start of the frame; unpacked at +4 / +8 behind VLAN tags
    accepted: frozenset[tuple[object, ...]]
    # The first field (the shape) of a tuple for which "not accepted" is a definite no (None: never).
    decided_shape: bytes | None
    # First fields that mean "a VLAN tag at offset 12" (the TPID, then anything).
    tagged_shapes: frozenset[bytes]


def compile_matcher(capture_filter: CaptureFilter) -> Callable[[bytes], bool]:
    """A predicate with exactly the verdicts of ``matches(capture_filter, frame)``, precomputed once
    for ``capture_filter``: an untagged IPv4 (20-byte header) or IPv6 frame costs a length check,
    one ``struct`` unpack and one set lookup."""
    if capture_filter.is_empty:
        return _match_every_frame
    unpack4, size4, accepted4, shape4, tagged4 = _unpacked(_ipv4_fast_path(capture_filter))
    unpack6, size6, accepted6, shape6, tagged6 = _unpacked(_ipv6_fast_path(capture_filter))
    tpids = _VLAN_TPID_BYTES

    def packet(frame: bytes, shift: int) -> bool:
        """E on the packet whose EtherType sits at 12 + shift."""
        available = len(frame) - shift
        if available >= size4:
            fields = unpack4(frame, shift)
            if fields in accepted4:
                return True
            if fields[0] == shape4:
                return False
        if available >= size6:
            fields = unpack6(frame, shift)
            if fields in accepted6:
                return True
            if fields[0] == shape6:
                return False
        return _reference_packet(capture_filter, frame, shift)

    def tagged(frame: bytes) -> bool:
        """The frame has a VLAN tag at offset 12: E on the packet behind one or two tags."""
        if frame[16:18] not in tpids:
            return packet(frame, VLAN_TAG_LENGTH)
        return packet(frame, 2 * VLAN_TAG_LENGTH)  # behind a third tag E is false (a TPID, not IP)

    def matcher(frame: bytes) -> bool:
        length = len(frame)
        if length >= size4:
            fields = unpack4(frame)
            if fields in accepted4:
                return True
            shape = fields[0]
            if shape == shape4:
                return False
            if shape in tagged4:
                return tagged(frame)
        if length >= size6:
            fields = unpack6(frame)
            if fields in accepted6:
                return True
            shape = fields[0]
            if shape == shape6:
                return False
            if shape in tagged6:
                return tagged(frame)
        if frame[12:14] in tpids:  # a tagged frame too short for the fast paths' layouts
            return tagged(frame)
        return _reference_packet(capture_filter, frame, 0)  # an unusual untagged frame

    return matcher


def _reference_packet(capture_filter: CaptureFilter, frame: bytes, shift: int) -> bool:
    """E at ``shift`` by the reference code; a byte past the end makes it false."""
    try:
        return _matches_untagged(capture_filter, frame, shift=shift)
    except _Truncated:
        return False


def _match_every_frame(frame: bytes) -> bool:  # noqa: ARG001 - the empty filter keeps everything
    return True


def _unpacked(
    path: _FastPath | None,
) -> tuple[
    Callable[..., tuple[Any, ...]], int, frozenset[tuple[object, ...]], bytes | None, frozenset[bytes]
]:
    if path is None:  # E is never true on this family: its frames go to the general path
        return _unpack_nothing, _NEVER, frozenset(), None, frozenset()
    return path.layout.unpack_from, path.layout.size, path.accepted, path.decided_shape, path.tagged_shapes


def _unpack_nothing(frame: bytes, offset: int = 0) -> tuple[Any, ...]:  # noqa: ARG001
    raise AssertionError("a disabled fast path is never read")  # its minimum length is never reached


def _layout(fields: list[tuple[int, str]]) -> struct.Struct:
    """A big-endian struct reading each (offset, format) field, skipping the bytes between them."""
    parts = ["!"]
    position = 0
    for offset, code in sorted(fields):
        if offset > position:
            parts.append(f"{offset - position}x")
        parts.append(code)
        position = offset + struct.calcsize(f"!{code}")
    return struct.Struct("".join(parts))


def _accepted(fields: list[tuple[int, str, Iterable[object]]]) -> frozenset[tuple[object, ...]]:
    values = [tuple(allowed) for _, _, allowed in sorted(fields, key=lambda field: field[0])]
    return frozenset(itertools.product(*values))


def _ipv4_fast_path(capture_filter: CaptureFilter) -> _FastPath | None:
    """Untagged IPv4 with a 20-byte header (IHL 5): every field at a fixed offset."""
    network = ETHERNET_HEADER_LENGTH
    addresses = _address_fields(capture_filter, version=4, source=network + 12, destination=network + 16)
    if addresses is None:
        return None
    fields: list[tuple[int, str, Iterable[object]]] = [(12, "3s", (_IPV4_SHAPE,)), *addresses]
    protocols = _allowed_protocols(capture_filter)
    if protocols is not None:
        fields.append((network + 9, "B", protocols))
    if _has_port(capture_filter):
        fields.append((network + 6, "H", _IPV4_FIRST_FRAGMENT_FIELDS))
    transport = network + 20
    fields.extend(_port_fields(capture_filter, transport))
    return _fast_path(fields, decided_shape=_IPV4_SHAPE)


def _ipv6_fast_path(capture_filter: CaptureFilter) -> _FastPath | None:
    """Untagged IPv6: the fixed 40-byte header and, for ports, the transport header right after it."""
    network = ETHERNET_HEADER_LENGTH
    addresses = _address_fields(capture_filter, version=6, source=network + 8, destination=network + 24)
    if addresses is None:
        return None
    fields: list[tuple[int, str, Iterable[object]]] = [(12, "2s", (_IPV6_SHAPE,)), *addresses]
    protocols = _allowed_protocols(capture_filter)
    if protocols is not None:
        fields.append((network + 6, "B", protocols))
    fields.extend(_port_fields(capture_filter, network + IPV6_HEADER_LENGTH))
    # With a protocol but no port, a Fragment header may carry the protocol (read by the general path).
    decided = not (capture_filter.protocol is not None and not _has_port(capture_filter))
    return _fast_path(fields, decided_shape=_IPV6_SHAPE if decided else None)


def _address_fields(
    capture_filter: CaptureFilter, *, version: int, source: int, destination: int
) -> list[tuple[int, str, Iterable[object]]] | None:
    """The filter's addresses as fields at ``source`` and ``destination``; None if one is of the
    other IP version (no frame of this family can match: the fast path is off)."""
    fields: list[tuple[int, str, Iterable[object]]] = []
    for address, offset in (
        (capture_filter.source_address, source),
        (capture_filter.destination_address, destination),
    ):
        if address is not None:
            if address.version != version:
                return None
            fields.append((offset, f"{len(address.packed)}s", (address.packed,)))
    return fields


def _has_port(capture_filter: CaptureFilter) -> bool:
    return capture_filter.source_port is not None or capture_filter.destination_port is not None


def _allowed_protocols(capture_filter: CaptureFilter) -> frozenset[int] | None:
    """The protocol numbers (IPv4 protocol / IPv6 next header) for which E can be true; None: any."""
    allowed: frozenset[int] | None = None
    if _has_port(capture_filter):
        allowed = PORT_CARRYING_PROTOCOLS
    if capture_filter.protocol is not None:
        protocol = frozenset({int(capture_filter.protocol)})
        allowed = protocol if allowed is None else allowed & protocol
    return allowed


def _port_fields(capture_filter: CaptureFilter, transport: int) -> list[tuple[int, str, Iterable[object]]]:
    fields: list[tuple[int, str, Iterable[object]]] = []
    if capture_filter.source_port is not None:
        fields.append((transport, "H", (int(capture_filter.source_port),)))
    if capture_filter.destination_port is not None:
        fields.append((transport + 2, "H", (int(capture_filter.destination_port),)))
    return fields


def _fast_path(
    fields: list[tuple[int, str, Iterable[object]]], *, decided_shape: bytes | None
) -> _FastPath | None:
    accepted = _accepted(fields)
    if not accepted:
        return None  # e.g. a port with a protocol that carries none: E is never true on this family
    layout = _layout([(offset, code) for offset, code, _ in fields])
    shape_length = struct.calcsize(f"!{fields[0][1]}")  # fields[0] is the shape at offset 12
    return _FastPath(
        layout=layout,
        accepted=accepted,
        decided_shape=decided_shape,
        tagged_shapes=_TAGGED_SHAPES[shape_length],
    )
