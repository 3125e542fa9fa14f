"""The live packet source: an AF_PACKET socket with a TPACKET_V3 ring, in the kernel's order.

:func:`open_live_source` opens it in the order that makes it safe:

1. ``socket(AF_PACKET, SOCK_RAW, 0)``: protocol 0 registers no packet hook, so nothing is queued yet;
2. ``PACKET_VERSION = TPACKET_V3``;
3. ``SO_ATTACH_FILTER`` with the classic BPF program :func:`kpcap_agent.bpf.live_program` builds
   (sampling check, interface check, the caller's compiled expression), then ``SO_LOCK_FILTER`` so
   the filter can no longer be removed or replaced;
4. ``PACKET_RX_RING`` (TPACKET_V3 blocks) mapped with mmap, and a drain of anything queued (nothing
   is expected: belt and braces);
5. only then ``bind`` to ``ETH_P_ALL``, so no frame that fails the filter is ever queued.

Why a TPACKET_V3 ring rather than ``recvmsg``: measured here, a Python ``recvmsg`` loop drains
about 60k small frames/s (one syscall and one ``SIOCGIFNAME`` ioctl per frame, made by CPython to
build the address), while the ring hands over a whole block of frames per wake-up with no syscall
per frame, which keeps up with tcpdump (which uses the same ring). The ring is the socket's buffer:
:class:`RingGeometry` (default 128 blocks of 512 KiB) absorbs bursts of about 460k small (60-byte) or
43k large (1442-byte) frames. 64 MiB rather than tcpdump's 32: a Python loop loses the CPU to the
traffic's own softirq work more easily than tcpdump, and needs the deeper buffer to ride out bursts
(measured in benchmarks/capture.py). The ring is mapped, so it counts in the RSS (about 90 MB in all
once open, under 100 MB at the end of a 500 MB capture).

Interfaces. Default: every interface of the current network namespace except loopback, including
interfaces created during the capture (pods' veths come and go), with one socket bound to all of
them; the interface selection is done by the kernel filter, before queueing. Or a list of named
interfaces. Copies of a packet seen on several of them: :mod:`kpcap_agent.copies`.

VLAN. The kernel strips the 802.1Q/802.1ad tag of received frames into metadata
(``tp_vlan_tci``/``tp_vlan_tpid``) before the packet taps run; the live source puts the tag back
into the frame, so the pcap shows the tagged frame as it was on the wire. What that means for the
kernel filter: :mod:`kpcap_agent.bpf`.

Which frames are checked again in userspace. The kernel filter is the spec's filter, compiled, and
locked: a frame it passed is a frame the spec keeps, so the capture loop does not check it again
(that check cost about a fifth of the per-frame time under a flood). The one exception is a frame
whose outer tag the kernel stripped before filtering: the filter saw it one tag short, and so keeps
a frame with three tags that the spec (up to two) does not. Those frames, and only those, go through
the spec's userspace check (:meth:`LiveSource.recheck_tagged_frames`); what it refuses is counted in
:meth:`LiveSource.rejected`.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kpcap.filters import TPID_8021Q, VLAN_TAG_LENGTH
from kpcap.pcap import DEFAULT_SNAPLEN, RecordTuple, StagedRecordWriter
from kpcap_agent.bpf import Instruction, live_program, sampling_check
from kpcap_agent.copies import CopyFilter, CopyPolicy
from kpcap_agent.ring_records import (
    ANY_INTERFACE,
    FIRST_INTERFACE,
    FRAME_HEADER,
    copy_block_records,
    frames_of_copied_block,
)

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

_TPACKET_REQ3: Final = struct.Struct("=7I")
_TPACKET_STATS_V3: Final = struct.Struct("=3I")
_BLOCK_STATUS_OFFSET: Final = 8
_BLOCK_HEADER: Final = struct.Struct("=4x4xIII")  # block status, frame count, offset of the first frame
_VLAN_TAG: Final = struct.Struct("!HH")
# The live source's copy check while a single interface has been seen (see LiveSource).
_NO_INTERFACE_YET: Final = FIRST_INTERFACE
_CHECK_EVERY_FRAME: Final = -2
# Blocks that go the general way after one the fast path could not take (a VLAN tag, say): traffic
# like that one tends to go on, and each try costs a partial copy.
_GENERAL_PATH_BLOCKS: Final = 64
_COPY_REPLAY_BYTES: Final = 4 << 20


def _attach_filter(sock: socket.socket, instructions: Sequence[Instruction]) -> None:
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


RING_BYTES: Final = 64 << 20
MIN_BLOCK_BYTES: Final = 256 << 10
MAX_BLOCK_BYTES: Final = 1 << 20  # a block's records are staged in the writer at once (ring_records)
_FRAME_SLACK: Final = 256  # a frame's place in a block beyond its data: tpacket3_hdr, sockaddr_ll, tag


@dataclass(frozen=True, kw_only=True)
class RingGeometry:
    block_bytes: int = 512 << 10
    block_count: int = RING_BYTES // (512 << 10)
    block_timeout_ms: int = 20  # a partly filled block is handed over after this long

    def __post_init__(self) -> None:
        if self.block_bytes % mmap.PAGESIZE or self.block_bytes & (self.block_bytes - 1):
            raise ValueError("block_bytes must be a power of two multiple of the page size")
        if self.block_bytes > MAX_BLOCK_BYTES:
            raise ValueError(f"block_bytes must be at most {MAX_BLOCK_BYTES}, got {self.block_bytes}")
        if self.block_count < 2:
            raise ValueError("block_count must be at least 2")

    @classmethod
    def for_snaplen(cls, snaplen: int) -> RingGeometry:
        """A 64 MiB ring of the smallest blocks that hold a whole frame of ``snaplen`` bytes (at least
        256 KiB): 512 KiB for the full 262144 bytes, as libpcap sizes tcpdump's. The kernel cuts a
        frame longer than a block, so a block must hold the longest one kept; smaller blocks are
        quicker to allocate when the socket opens (an order-8 allocation may need compaction)."""
        block = MIN_BLOCK_BYTES
        while block < snaplen + _FRAME_SLACK and block < MAX_BLOCK_BYTES:
            block <<= 1
        return cls(block_bytes=block, block_count=RING_BYTES // block)


class LiveSource:
    """TPACKET_V3 AF_PACKET ring source; see the module docstring. Open it with open_live_source.

    :meth:`next_frames` hands over one ring block per call (up to thousands of frames), as plain
    tuples shaped like :class:`~kpcap.pcap.Record`: this is the per-packet path, kept to one
    ``struct`` unpack, one slice and one tuple per frame.

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
        self._recheck: Callable[[bytes], bool] | None = None
        self._rejected = 0
        # The only interface seen so far while the copy check is dormant, or a marker (module top).
        self._quiet_interface: int = _NO_INTERFACE_YET
        # Frames kept for the dormant copy check: frame lists of general-path blocks, or copies of
        # fast-path blocks (raw bytes, frame count, first frame's offset); with their ring bytes.
        self._replay: deque[tuple[list[RecordTuple] | tuple[bytes, int, int], int]] = deque()
        self._replay_bytes = 0
        self._view = memoryview(ring)
        self._general_blocks_left = 0
        self.fast_blocks = 0  # blocks that went the fast path (kpcap_agent.ring_records)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self._interface_names

    def _block_ready(self, block_start: int) -> bool:
        # On x86 loads are not reordered with other loads, and the kernel sets the status after
        # writing the frames (smp_wmb), so frames read after this check are complete.
        (status,) = struct.unpack_from("=I", self._ring, block_start + _BLOCK_STATUS_OFFSET)
        return bool(status & TP_STATUS_USER)

    def _next_block(self, *, timeout: float) -> int | None:
        """Where the next block starts once the kernel hands it over, waiting up to ``timeout``;
        None if it did not."""
        block_start = self._block_index * self._geometry.block_bytes
        if not self._block_ready(block_start):
            self._poller.poll(max(0, int(timeout * 1000)))
            if not self._block_ready(block_start):
                return None
        return block_start

    def _release_block(self, block_start: int) -> None:
        """Hand the block back to the kernel (its frames are copied out) and move to the next."""
        struct.pack_into("=I", self._ring, block_start + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self._block_index = (self._block_index + 1) % self._geometry.block_count

    def next_frames(self, *, timeout: float) -> list[RecordTuple]:
        ring = self._ring
        block_start = self._next_block(timeout=timeout)
        if block_start is None:
            return []
        _, frame_count, offset = _BLOCK_HEADER.unpack_from(ring, block_start)
        offset += block_start
        first_offset = offset
        frames: list[RecordTuple] = []
        append = frames.append
        unpack_header = FRAME_HEADER.unpack_from
        copy_filter = self._copy_filter
        recheck = self._recheck
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
            if status & TP_STATUS_VLAN_VALID:
                # The kernel moved the 802.1Q/802.1ad tag to metadata: put it back where it was.
                tpid = vlan_tpid if status & TP_STATUS_VLAN_TPID_VALID else TPID_8021Q
                data = data[:12] + _VLAN_TAG.pack(tpid, vlan_tci) + data[12:]
                original_length += VLAN_TAG_LENGTH
                # The kernel filter judged the frame without its outer tag: the one case where it
                # is broader than the spec (module docstring), so the spec's check runs here.
                if recheck is not None and not recheck(data):
                    self._rejected += 1
                    continue
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
                        original_length=original_length,
                    ):
                        self.copies_skipped += 1
                        continue
            append((seconds, nanoseconds, data, original_length, interface_index))
        self._release_block(block_start)  # only once its frames are copied out
        self._quiet_interface = quiet
        if copy_filter is not None and quiet >= 0 and frames:
            self._keep_for_replay(frames, offset - first_offset)
        return frames

    def copy_next_block(
        self, *, writer: StagedRecordWriter, timeout: float, packet_room: int, byte_room: int
    ) -> tuple[int, int] | None:
        """The fast path (:mod:`kpcap_agent.ring_records`): the next block's frames straight into
        ``writer``'s records; (packets, bytes) written, (0, 0) when no block came within
        ``timeout``, None when the block must go through :meth:`next_frames` (nothing written then).

        Taken only while the copy check is dormant or absent, no frame needs the userspace check,
        and the whole block fits in ``packet_room`` packets and ``byte_room`` bytes.
        """
        if self._quiet_interface == _CHECK_EVERY_FRAME:
            return None
        if self._general_blocks_left:
            self._general_blocks_left -= 1
            return None
        ring = self._ring
        block_start = self._next_block(timeout=timeout)
        if block_start is None:
            return 0, 0
        _, frame_count, first_offset = _BLOCK_HEADER.unpack_from(ring, block_start)
        if frame_count > packet_room:
            return None
        copy_filter = self._copy_filter
        buffer, position = writer.stage(room=self._geometry.block_bytes)
        copied = copy_block_records(
            ring=ring,
            view=self._view,
            offset=block_start + first_offset,
            frame_count=frame_count,
            buffer=buffer,
            position=position,
            snaplen=writer.snaplen,
            byte_room=byte_room,
            interface=ANY_INTERFACE if copy_filter is None else self._quiet_interface,
        )
        if copied is None:
            self._general_blocks_left = _GENERAL_PATH_BLOCKS
            return None
        writer.commit(end=copied.end, packets=copied.packets, packet_bytes=copied.packet_bytes)
        self.fast_blocks += 1
        if copy_filter is not None and frame_count:
            self._quiet_interface = copied.interface
            # One copy of the block (a memcpy), parsed only if a second interface ever shows up.
            raw = self._ring[block_start : copied.frames_end]
            self._keep_for_replay((raw, frame_count, first_offset), len(raw))
        self._release_block(block_start)
        return copied.packets, copied.packet_bytes

    def _keep_for_replay(self, frames: list[RecordTuple] | tuple[bytes, int, int], size: int) -> None:
        """While the copy check is dormant, keep the latest frames to replay into it."""
        self._replay.append((frames, size))
        self._replay_bytes += size
        while self._replay_bytes > _COPY_REPLAY_BYTES and len(self._replay) > 1:
            self._replay_bytes -= self._replay.popleft()[1]

    def _wake_copy_filter(self, copy_filter: CopyFilter, current_block: list[RecordTuple]) -> None:
        """A frame from a second interface: tell the copy check about the frames kept so far."""
        for kept in (*(kept for kept, _ in self._replay), current_block):
            if isinstance(kept, tuple):
                raw, frame_count, offset = kept
                for timestamp_ns, data, original_length, interface_index in frames_of_copied_block(
                    raw, frame_count=frame_count, offset=offset
                ):
                    copy_filter.is_copy(
                        data=data,
                        interface_index=interface_index,
                        timestamp_ns=timestamp_ns,
                        original_length=original_length,
                    )
                continue
            for seconds, nanoseconds, data, original_length, interface_index in kept:
                copy_filter.is_copy(
                    data=data,
                    interface_index=interface_index,
                    timestamp_ns=seconds * 1_000_000_000 + nanoseconds,
                    original_length=original_length,
                )
        self._replay.clear()
        self._replay_bytes = 0

    def recheck_tagged_frames(self, accept: Callable[[bytes], bool]) -> None:
        """Check VLAN-tagged frames with ``accept`` (the spec's userspace filter) from now on.

        Every other frame the kernel filter passed is exactly what the spec keeps, so it is not
        checked again (module docstring); the capture loop then needs no check of its own.
        """
        self._recheck = accept

    def rejected(self) -> int:
        return self._rejected

    def kernel_drops(self) -> int:
        # PACKET_STATISTICS resets the kernel's counters on each read: accumulate.
        raw = self._socket.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS_V3.size)
        _, drops, _ = _TPACKET_STATS_V3.unpack(raw)
        self._drops += drops
        return self._drops

    def close(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(self._socket.fileno())
        self._view.release()
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
    geometry: RingGeometry | None = None,
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
    if geometry is None:
        geometry = RingGeometry.for_snaplen(snaplen)
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
