"""Where captured frames come from: a live AF_PACKET ring, a pcap file, or anything shaped the same.

:class:`PacketSource` is the small protocol :func:`kpcap_agent.capture.run_capture` reads from, so a
capture can be fed by the live kernel source on a node, by a pcap file (tests of the limit logic
without a network) or by an in-memory list (unit tests).

Live source (:func:`open_live_source`), in the order that makes it safe:

1. ``socket(AF_PACKET, SOCK_RAW, 0)``: protocol 0 registers no packet hook, so nothing is queued yet;
2. ``PACKET_VERSION = TPACKET_V3``;
3. ``SO_ATTACH_FILTER`` with the classic BPF program libpcap compiles from the caller's expression
   (the expression is built from validated typed values by ``kpcap.filters``, never user text),
   prefixed with an interface check on the ``ifindex`` ancillary load (and, for the sampler, by a
   random 1-in-N sampling check: ``sample_one_in``), then ``SO_LOCK_FILTER`` so the filter can no
   longer be removed or replaced;
4. ``PACKET_RX_RING`` (TPACKET_V3 blocks) mapped with mmap, and a drain of anything queued (nothing
   is expected: belt and braces);
5. only then ``bind`` to ``ETH_P_ALL``, so no frame that fails the filter is ever queued.

Why a TPACKET_V3 ring rather than ``recvmsg``: measured here, a Python ``recvmsg`` loop drains
about 60k small frames/s (one syscall and one ``SIOCGIFNAME`` ioctl per frame, made by CPython to
build the address), while the ring hands over a whole block of frames per wake-up with no syscall
per frame, which keeps up with tcpdump (which uses the same ring). The ring is the socket's buffer:
:class:`RingGeometry` (default 64 blocks of 1 MiB) absorbs bursts of about 460k small (60-byte) or
43k large (1442-byte) frames. 64 MiB rather than tcpdump's 32: a Python loop loses the CPU to the
traffic's own softirq work more easily than tcpdump, and needs the deeper buffer to ride out bursts
(measured in benchmarks/capture.py). The ring is mapped, so it counts in the RSS (~125 MB in all).

Interfaces. Default: every interface of the current network namespace except loopback, including
interfaces created during the capture (pods' veths come and go), with one socket bound to all of
them; the interface selection is done by the kernel filter, before queueing. Or a list of named
interfaces.

Copies (:class:`CopyPolicy`). With ``ETH_P_ALL`` on several interfaces the kernel hands the socket
one copy of a packet per interface it crosses: a routed or bridged packet is seen arriving on one
interface and leaving (``PACKET_OUTGOING``) on another; a VLAN-tagged frame is seen on the parent
and again, untagged, on the VLAN sub-interface.

- ``CopyPolicy.ONE_COPY`` (default): keep a packet once, the first time it is seen (usually as it
  arrives on the node). A later frame is dropped as a copy when it carries the same layer-3 packet
  (IPv4 TTL and header checksum and IPv6 hop limit ignored, since forwarding changes them; link
  headers and VLAN tags ignored) and was seen on a *different* interface within
  ``copy_window_seconds`` (0.5 s). Identical packets on one interface (retransmissions, trafgen
  bursts) are all kept: a copy on another interface cancels at most as many copies as were kept.
  Packets rewritten on the way (NAT, tunnels) are different packets and are kept on both sides.
  Memory is bounded (at most 131072 remembered packets). Only active when more than one interface
  is captured, and (the check being the costliest per-frame step) dormant until frames actually
  come from a second interface; the latest frames are kept aside to bring it up to date then
  (:class:`LiveSource`).
- ``CopyPolicy.EVERY_COPY``: every copy on every interface, like ``tcpdump -i any``.

VLAN. The kernel strips the 802.1Q/802.1ad tag of received frames into metadata
(``tp_vlan_tci``/``tp_vlan_tpid``) before the packet taps run; the live source puts the tag back
into the frame, so the pcap shows the tagged frame as it was on the wire. Consequences for the
kernel filter, tested in tests/agent/test_live_capture.py:

- the filter sees the untagged frame: a filter such as ``udp and dst port 53`` (what
  ``kpcap.filters.bpf_expression`` builds) matches tagged and untagged traffic alike;
- libpcap's ``vlan`` keyword compiles differently by handle: for a live Linux handle it uses the
  ``vlanp``/``vlan_tci`` ancillary loads, but for the dead Ethernet handle used here (no interface
  needed to compile) it checks for 0x8100 in the frame, which the kernel has removed, so
  ``vlan`` never matches received tagged frames. Do not use ``vlan`` in filter expressions.
- a frame whose tag is still inline (the inner tag of QinQ, outgoing copies on NICs without VLAN
  offload) is seen tagged by the filter, so ``ip``/``udp`` checks at fixed offsets do not match it.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import mmap
import os
import select
import socket
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from kpcap_agent.pcapfile import DEFAULT_SNAPLEN, LINKTYPE_ETHERNET, FrameRecord, iter_pcap_records

# Linux ABI constants (linux/if_packet.h, asm-generic/socket.h, linux/filter.h).
SOL_PACKET: Final = 263
ETH_P_ALL: Final = 0x0003
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
TPACKET_V3: Final = 2
SO_ATTACH_FILTER: Final = 26
SO_LOCK_FILTER: Final = 44
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
TP_STATUS_VLAN_VALID: Final = 0x10
TP_STATUS_VLAN_TPID_VALID: Final = 0x40
_SKF_AD_IFINDEX: Final = 0xFFFFF000 + 8  # SKF_AD_OFF (-0x1000) + SKF_AD_IFINDEX, as u32
_SKF_AD_RANDOM: Final = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM (a fresh prandom u32 per load)
# Opcodes (linux/bpf_common.h): class | size | mode, or class | op | source.
_BPF_LD_W_ABS: Final = 0x20  # BPF_LD 0x00 | BPF_W 0x00 | BPF_ABS 0x20
_BPF_ALU_MOD_K: Final = 0x94  # BPF_ALU 0x04 | BPF_MOD 0x90 | BPF_K 0x00
_BPF_JMP_JEQ_K: Final = 0x15  # BPF_JMP 0x05 | BPF_JEQ 0x10 | BPF_K 0x00
_BPF_JMP_JA: Final = 0x05  # BPF_JMP 0x05 | BPF_JA 0x00
_BPF_RET_K: Final = 0x06  # BPF_RET 0x06 | BPF_K 0x00
MAX_SAMPLE_ONE_IN: Final = 2**31 - 1
_MAX_SELECTED_INTERFACES: Final = 200  # jump offsets in classic BPF are 8-bit

_TPACKET_REQ3: Final = struct.Struct("=7I")
_TPACKET_STATS_V3: Final = struct.Struct("=3I")
_BLOCK_STATUS_OFFSET: Final = 8
_BLOCK_HEADER: Final = struct.Struct("=4x4xIII")  # block status, frame count, offset of the first frame
# Fields read from a frame: the 48-byte tpacket3_hdr, then the sockaddr_ll after it. In order:
# next offset, seconds, nanoseconds, snaplen, len, status, mac offset, vlan tci, vlan tpid, ifindex
# (skipped: net offset, rxhash, padding, sll family and protocol).
_FRAME_HEADER: Final = struct.Struct("=6IH2x4xIH10x4xi")
_VLAN_TAG: Final = struct.Struct("!HH")
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_VLAN_ETHERTYPES: Final = frozenset({0x8100, 0x88A8, 0x9100})
# The live source's copy check while a single interface has been seen (see LiveSource).
_NO_INTERFACE_YET: Final = -1
_CHECK_EVERY_FRAME: Final = -2
_COPY_REPLAY_BYTES: Final = 4 << 20


class Frame(NamedTuple):
    """One captured frame. A NamedTuple, and seconds and nanoseconds kept apart as in the kernel's
    ring and in a pcap record header: one is built per packet, and this is the cheapest shape."""

    seconds: int
    nanoseconds: int
    data: bytes
    original_length: int
    interface_index: int = 0

    @property
    def timestamp_ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanoseconds

    @classmethod
    def at(cls, *, timestamp_ns: int, data: bytes, original_length: int | None = None) -> Frame:
        seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
        return cls(seconds, nanoseconds, data, len(data) if original_length is None else original_length)


class SourceExhausted(Exception):  # noqa: N818 -- an end-of-stream signal, not an error
    """A finite source (pcap file, list) has no more frames; live sources never raise it."""


class PacketSource(Protocol):
    """What run_capture needs from a source of frames."""

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Names of the interfaces the frames come from (for the capture's report)."""
        ...

    def next_frames(self, *, timeout: float) -> Sequence[FrameRecord]:
        """Frames available now, waiting at most ``timeout`` seconds for some; ``[]`` on timeout.

        Each is a :class:`Frame` or a plain tuple of the same shape (the live source's, cheaper).

        Raises :class:`SourceExhausted` when a finite source has no more frames.
        """
        ...

    def kernel_drops(self) -> int:
        """Frames the kernel dropped for want of buffer space since the source was opened."""
        ...


@dataclass(kw_only=True)
class MemorySource:
    """Frames from memory, ``batch_size`` per call; for unit tests."""

    frames: Iterable[Frame | bytes]
    batch_size: int = 64
    interface_names: tuple[str, ...] = ("memory",)
    _iterator: Iterator[Frame | bytes] | None = field(default=None, init=False, repr=False)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self.interface_names

    def next_frames(self, *, timeout: float) -> Sequence[Frame]:  # noqa: ARG002 -- frames are at hand
        if self._iterator is None:
            self._iterator = iter(self.frames)
        batch: list[Frame] = []
        for item in self._iterator:
            batch.append(item if isinstance(item, Frame) else Frame(0, 0, item, len(item)))
            if len(batch) == self.batch_size:
                break
        if not batch:
            raise SourceExhausted
        return batch

    def kernel_drops(self) -> int:
        return 0


class PcapFileSource:
    """Replays the frames of a classic pcap file (Ethernet), with their timestamps, as fast as read."""

    def __init__(self, *, path: Path, batch_size: int = 256) -> None:
        self._records = iter_pcap_records(path)
        self._batch_size = batch_size
        self._path = path

    @property
    def interfaces(self) -> tuple[str, ...]:
        return (f"file:{self._path.name}",)

    def next_frames(self, *, timeout: float) -> Sequence[Frame]:  # noqa: ARG002 -- frames are at hand
        batch = [
            Frame.at(
                timestamp_ns=record.timestamp_ns, data=record.data, original_length=record.original_length
            )
            for record, _ in zip(self._records, range(self._batch_size), strict=False)
        ]
        if not batch:
            raise SourceExhausted
        return batch

    def kernel_drops(self) -> int:
        return 0


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


def layer3_identity(frame: bytes) -> int:
    """A hash of the frame's layer-3 packet with the fields forwarding rewrites left out.

    Link header and VLAN tags are skipped, IPv4 TTL and header checksum and IPv6 hop limit ignored.
    """
    offset = 12
    ethertype = int.from_bytes(frame[12:14])
    while ethertype in _VLAN_ETHERTYPES and len(frame) >= offset + 6:
        offset += 4
        ethertype = int.from_bytes(frame[offset : offset + 2])
    packet = frame[offset + 2 :]
    if ethertype == _ETHERTYPE_IPV4 and len(packet) >= 20:
        return hash((ethertype, packet[:8], packet[9:10], packet[12:]))
    if ethertype == _ETHERTYPE_IPV6 and len(packet) >= 40:
        return hash((ethertype, packet[:7], packet[8:]))
    return hash((ethertype, packet))


@dataclass(kw_only=True)
class CopyFilter:
    """Implements :attr:`CopyPolicy.ONE_COPY`: says whether a frame is a copy to skip."""

    window_ns: int = 500_000_000
    max_remembered: int = 131072
    _seen: OrderedDict[int, _Seen] = field(default_factory=OrderedDict, init=False, repr=False)

    def is_copy(self, *, data: bytes, interface_index: int, timestamp_ns: int) -> bool:
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
        identity = layer3_identity(data)
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


def compile_bpf(*, expression: str, snaplen: int) -> list[tuple[int, int, int, int]]:
    """Compile a filter expression for Ethernet with libpcap (through scapy); no interface needed.

    The accepting ``ret`` instructions are rewritten to return ``snaplen`` (libpcap's dead handle
    returns scapy's MTU, 65535, which would truncate GRO super-packets).
    """
    from scapy.arch.common import compile_filter

    program = compile_filter(expression, linktype=LINKTYPE_ETHERNET)
    instructions: list[tuple[int, int, int, int]] = []
    for index in range(program.bf_len):
        instruction = program.bf_insns[index]
        code, jump_true, jump_false, constant = (
            int(instruction.code),
            int(instruction.jt),
            int(instruction.jf),
            # scapy declares k as a signed 32-bit field: an IPv4 address from 128.0.0.0 up reads
            # negative; the kernel's sock_filter.k is unsigned.
            int(instruction.k) & 0xFFFFFFFF,
        )
        if code == _BPF_RET_K and constant != 0:
            constant = snaplen
        instructions.append((code, jump_true, jump_false, constant))
    return instructions


def interface_check(
    *, only: Sequence[int] | None, excluded: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """BPF instructions to put in front of a program: reject frames of the wrong interfaces.

    Jumps in classic BPF are relative and forward, so a prefix needs no change to the program.
    """
    if only is not None:
        selected, reject_listed = list(only), False
    else:
        selected, reject_listed = list(excluded), True
    if not selected:
        return []
    if len(selected) > _MAX_SELECTED_INTERFACES:
        raise ValueError(f"at most {_MAX_SELECTED_INTERFACES} interfaces can be selected")
    count = len(selected)
    prefix = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_IFINDEX)]
    if reject_listed:
        # ld ifindex; jeq each -> ret 0; ja over it; ret 0; <program>
        prefix += [
            (_BPF_JMP_JEQ_K, count + 1 - position, 0, index) for position, index in enumerate(selected, 1)
        ]
        prefix += [(_BPF_JMP_JA, 0, 0, 1), (_BPF_RET_K, 0, 0, 0)]
    else:
        # ld ifindex; jeq each -> <program>; ret 0; <program>
        prefix += [
            (_BPF_JMP_JEQ_K, count + 1 - position, 0, index) for position, index in enumerate(selected, 1)
        ]
        prefix += [(_BPF_RET_K, 0, 0, 0)]
    return prefix


def sampling_check(*, one_in: int) -> list[tuple[int, int, int, int]]:
    """BPF instructions to put in front of a program: keep each frame with probability 1/``one_in``.

    ``ld rand; mod #N; jeq #0 -> <program>; ret #0``: the kernel draws a random number per frame
    (``SKF_AD_RANDOM``), so frames are kept independently of one another, and a dropped frame is
    never queued. ``one_in`` 1 gives no instruction at all (the program is unchanged).
    """
    if isinstance(one_in, bool) or not isinstance(one_in, int):
        raise TypeError(f"sample_one_in must be an integer in 1..{MAX_SAMPLE_ONE_IN}, got {one_in!r}")
    if not 1 <= one_in <= MAX_SAMPLE_ONE_IN:
        raise ValueError(f"sample_one_in must be in 1..{MAX_SAMPLE_ONE_IN}, got {one_in}")
    if one_in == 1:
        return []
    return [
        (_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),
        (_BPF_ALU_MOD_K, 0, 0, one_in),
        (_BPF_JMP_JEQ_K, 1, 0, 0),  # remainder 0: skip the ret, on to the program
        (_BPF_RET_K, 0, 0, 0),
    ]


def live_program(
    *,
    filter_expression: str,
    snaplen: int,
    only: Sequence[int] | None,
    excluded: Sequence[int],
    sample_one_in: int = 1,
) -> list[tuple[int, int, int, int]]:
    """The classic BPF program :func:`open_live_source` attaches: the sampling check (none for
    ``sample_one_in`` 1), the interface check (:func:`interface_check`), then the compiled filter."""
    return (
        sampling_check(one_in=sample_one_in)
        + interface_check(only=only, excluded=excluded)
        + compile_bpf(expression=filter_expression, snaplen=snaplen)
    )


def _attach_filter(sock: socket.socket, instructions: Sequence[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))
    program = struct.pack("@HP", len(instructions), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
    sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)


def _bind_all_protocols(sock: socket.socket, *, interface_index: int) -> None:
    # CPython's AF_PACKET bind needs an interface name; ifindex 0 (every interface) needs libc.
    libc = ctypes.CDLL(None, use_errno=True)
    address = struct.pack(
        "=HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL), interface_index, 0, 0, 0, b""
    )
    if libc.bind(sock.fileno(), ctypes.c_char_p(address), len(address)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"bind AF_PACKET to ifindex {interface_index}: {os.strerror(error)}")


@dataclass(frozen=True, kw_only=True)
class RingGeometry:
    block_bytes: int = 1 << 20
    block_count: int = 64
    block_timeout_ms: int = 20  # a partly filled block is handed over after this long

    def __post_init__(self) -> None:
        if self.block_bytes % mmap.PAGESIZE or self.block_bytes & (self.block_bytes - 1):
            raise ValueError("block_bytes must be a power of two multiple of the page size")
        if self.block_count < 2:
            raise ValueError("block_count must be at least 2")


class LiveSource:
    """TPACKET_V3 AF_PACKET ring source; see the module docstring. Open it with open_live_source.

    :meth:`next_frames` hands over one ring block per call (up to thousands of frames), as plain
    tuples shaped like :class:`Frame`: this is the per-packet path, kept to one ``struct`` unpack,
    one slice and one tuple per frame.

    The copy check (``CopyPolicy.ONE_COPY``) costs more than all the rest, and only ever matters
    once frames come from a second interface. Until then it is dormant: the frames of the last few
    blocks (up to ``_COPY_REPLAY_BYTES`` of them) are kept aside, and when a frame from another
    interface shows up they are replayed into the :class:`CopyFilter` (which then knows exactly
    what it would have known, unless more than that much traffic passed within its window) before
    that frame is checked; from then on every frame is checked.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        ring: mmap.mmap,
        geometry: RingGeometry,
        interface_names: tuple[str, ...],
        copy_filter: CopyFilter | None,
    ) -> None:
        self._socket = sock
        self._ring = ring
        self._geometry = geometry
        self._interface_names = interface_names
        self._copy_filter = copy_filter
        self._block_index = 0
        self._drops = 0
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self.copies_skipped = 0
        # The only interface seen so far while the copy check is dormant, or a marker (module top).
        self._quiet_interface: int = _NO_INTERFACE_YET
        self._replay: deque[tuple[list[FrameRecord], int]] = deque()  # frames, ring bytes
        self._replay_bytes = 0

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self._interface_names

    def _block_ready(self, block_start: int) -> bool:
        # On x86 loads are not reordered with other loads, and the kernel sets the status after
        # writing the frames (smp_wmb), so frames read after this check are complete.
        (status,) = struct.unpack_from("=I", self._ring, block_start + _BLOCK_STATUS_OFFSET)
        return bool(status & TP_STATUS_USER)

    def next_frames(self, *, timeout: float) -> list[FrameRecord]:
        ring = self._ring
        block_start = self._block_index * self._geometry.block_bytes
        if not self._block_ready(block_start):
            self._poller.poll(max(0, int(timeout * 1000)))
            if not self._block_ready(block_start):
                return []
        _, frame_count, offset = _BLOCK_HEADER.unpack_from(ring, block_start)
        offset += block_start
        first_offset = offset
        frames: list[FrameRecord] = []
        append = frames.append
        unpack_header = _FRAME_HEADER.unpack_from
        copy_filter = self._copy_filter
        quiet = self._quiet_interface
        for _ in range(frame_count):
            (
                next_offset,
                seconds,
                nanoseconds,
                captured_length,
                original_length,
                status,
                mac_offset,
                vlan_tci,
                vlan_tpid,
                interface_index,
            ) = unpack_header(ring, offset)
            data_start = offset + mac_offset
            data = ring[data_start : data_start + captured_length]
            offset += next_offset
            if interface_index != quiet:
                if copy_filter is None or quiet == _NO_INTERFACE_YET:
                    quiet = interface_index  # no copy check (yet): just note the interface
                else:
                    if quiet != _CHECK_EVERY_FRAME:  # a second interface: wake the copy check
                        self._wake_copy_filter(copy_filter, frames)
                        quiet = _CHECK_EVERY_FRAME
                    if copy_filter.is_copy(
                        data=data,
                        interface_index=interface_index,
                        timestamp_ns=seconds * 1_000_000_000 + nanoseconds,
                    ):
                        self.copies_skipped += 1
                        continue
            if status & TP_STATUS_VLAN_VALID:
                # The kernel moved the 802.1Q/802.1ad tag to metadata: put it back where it was.
                tpid = vlan_tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + _VLAN_TAG.pack(tpid, vlan_tci) + data[12:]
                original_length += 4
            append((seconds, nanoseconds, data, original_length, interface_index))
        # Hand the block back to the kernel only once its frames are copied out.
        struct.pack_into("=I", ring, block_start + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self._block_index = (self._block_index + 1) % self._geometry.block_count
        self._quiet_interface = quiet
        if copy_filter is not None and quiet >= 0 and frames:
            self._keep_for_replay(frames, offset - first_offset)
        return frames

    def _keep_for_replay(self, frames: list[FrameRecord], size: int) -> None:
        """While the copy check is dormant, keep the latest frames to replay into it."""
        self._replay.append((frames, size))
        self._replay_bytes += size
        while self._replay_bytes > _COPY_REPLAY_BYTES and len(self._replay) > 1:
            self._replay_bytes -= self._replay.popleft()[1]

    def _wake_copy_filter(self, copy_filter: CopyFilter, current_block: list[FrameRecord]) -> None:
        """A frame from a second interface: tell the copy check about the frames kept so far."""
        for frames in (*(kept for kept, _ in self._replay), current_block):
            for seconds, nanoseconds, data, _, interface_index in frames:
                copy_filter.is_copy(
                    data=data,
                    interface_index=interface_index,
                    timestamp_ns=seconds * 1_000_000_000 + nanoseconds,
                )
        self._replay.clear()
        self._replay_bytes = 0

    def kernel_drops(self) -> int:
        # PACKET_STATISTICS resets the kernel's counters on each read: accumulate.
        raw = self._socket.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS_V3.size)
        _, drops, _ = _TPACKET_STATS_V3.unpack(raw)
        self._drops += drops
        return self._drops

    def close(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(self._socket.fileno())
        self._ring.close()
        self._socket.close()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_live_source(
    *,
    filter_expression: str,
    interfaces: Sequence[str] | None = None,
    exclude_interfaces: Sequence[str] = ("lo",),
    copy_policy: CopyPolicy = CopyPolicy.ONE_COPY,
    snaplen: int = DEFAULT_SNAPLEN,
    geometry: RingGeometry = RingGeometry(),
    sample_one_in: int = 1,
) -> LiveSource:
    """Open the kernel capture in the calling thread's network namespace (module docstring).

    ``interfaces`` None means every interface except ``exclude_interfaces`` (also those created
    later); otherwise exactly the named ones (``exclude_interfaces`` is then ignored).
    ``sample_one_in`` N > 1 samples in the kernel: each frame is kept with probability 1/N,
    independently (:func:`sampling_check`), before the interface check and the filter, so dropped
    frames are never copied to the ring; 1 (the default, full captures) adds no instruction.
    Needs CAP_NET_RAW only (the filter, its lock and the ring need no other capability). Call it
    in a thread of the namespace to capture: the socket stays there whichever thread reads it.
    """
    sampling_check(one_in=sample_one_in)  # refuse a bad rate before anything is opened
    if interfaces is not None:
        if not interfaces:
            raise ValueError("interfaces: give at least one name, or None for all")
        selected = [socket.if_nametoindex(name) for name in interfaces]
        only: list[int] | None = selected
        excluded: list[int] = []
        names = tuple(interfaces)
        bind_index = selected[0] if len(selected) == 1 else 0
    else:
        present = {name: index for index, name in socket.if_nameindex()}
        only = None
        excluded = [present[name] for name in exclude_interfaces if name in present]
        names = tuple(sorted(name for name in present if name not in exclude_interfaces))
        bind_index = 0
    program = live_program(
        filter_expression=filter_expression,
        snaplen=snaplen,
        only=only,
        excluded=excluded,
        sample_one_in=sample_one_in,
    )

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing yet
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        _attach_filter(sock, program)
        frame_bytes = 2048  # only used by the kernel to validate the request for TPACKET_V3
        sock.setsockopt(
            SOL_PACKET,
            PACKET_RX_RING,
            _TPACKET_REQ3.pack(
                geometry.block_bytes,
                geometry.block_count,
                frame_bytes,
                geometry.block_bytes // frame_bytes * geometry.block_count,
                geometry.block_timeout_ms,
                0,
                0,
            ),
        )
        ring = mmap.mmap(
            sock.fileno(),
            geometry.block_bytes * geometry.block_count,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        sock.setblocking(False)
        _drain(sock)
        _bind_all_protocols(sock, interface_index=bind_index)
    except BaseException:
        sock.close()
        raise
    several_interfaces = interfaces is None or len(interfaces) > 1
    copy_filter = CopyFilter() if copy_policy is CopyPolicy.ONE_COPY and several_interfaces else None
    return LiveSource(sock=sock, ring=ring, geometry=geometry, interface_names=names, copy_filter=copy_filter)


def _drain(sock: socket.socket) -> None:
    """Discard anything queued before the filter was in place (nothing is expected: protocol 0)."""
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return
