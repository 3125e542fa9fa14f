"""Writing pcapng with Kubernetes identity: the section names the capture, each interface is
``<node>/<interface>``, packets carry their direction, pods and nodes are named by address.

:class:`PcapngWriter` streams the blocks of :mod:`kpcap.pcap.pcapng_blocks` to a binary file
object (a file, a socket's file, a BytesIO): the section header first, interfaces as they are
added, packets, name records whenever they are known (Wireshark applies them to the whole file),
and :meth:`PcapngWriter.finish` writes each interface's statistics last (packets written and
kernel drops), as dumpcap does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import BinaryIO, Final

from kpcap.pcap.classic import DEFAULT_SNAPLEN, LINKTYPE_ETHERNET
from kpcap.pcap.pcapng_blocks import (
    InterfaceInfo,
    InterfaceStatistics,
    SectionInfo,
    enhanced_packet_block,
    interface_description_block,
    interface_statistics_block,
    name_record,
    name_resolution_block,
    section_header_block,
)


def kpcap_version() -> str:
    # Imported here: importlib.metadata costs 25 ms, and the agent imports this package before its
    # capture socket opens.
    import importlib.metadata

    try:
        return importlib.metadata.version("kpcap")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def capture_section(*, capture_id: str, namespace: str, name: str) -> SectionInfo:
    """The section header of a capture's file: ``kpcap <version>`` and comments naming it."""
    return SectionInfo(
        application=f"kpcap {kpcap_version()}",
        comments=(f"kpcap capture {namespace}/{name}", f"kpcap capture id {capture_id}"),
    )


def interface_name(*, node: str, interface: str) -> str:
    return f"{node}/{interface}"


def node_interface(
    *, node: str, interface: str, snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET
) -> InterfaceInfo:
    """The interface block of one node's interface (``<node>/<interface>``)."""
    return InterfaceInfo(
        name=interface_name(node=node, interface=interface),
        linktype=linktype,
        snaplen=snaplen,
        description=f"interface {interface} of node {node}",
    )


class NameRecords:
    """The name records of a file: each (address, name) pair once, and none before the first
    interface block (mergecap 4.0 cannot copy a name block that comes before every interface
    block: "can't be written as a pcapng file"). A file with no interface gets none."""

    def __init__(self) -> None:
        self._known: set[tuple[str, str]] = set()
        self._held: list[tuple[str, str]] = []
        self._interfaces_out = False

    def add(self, names: Iterable[tuple[str, str]]) -> bytes:
        """The block to write now for the new pairs among ``names`` (b"" if none, or held)."""
        for pair in dict.fromkeys(names):
            if pair not in self._known:
                name_record(*pair)  # a bad address fails here, naming it, not when released
                self._known.add(pair)
                self._held.append(pair)
        return self._release() if self._interfaces_out else b""

    def interface_written(self) -> bytes:
        """The block of the names held until now (call after writing an interface block)."""
        self._interfaces_out = True
        return self._release()

    def _release(self) -> bytes:
        if not self._held:
            return b""
        held, self._held = self._held, []
        return name_resolution_block(held)


class _Counts:
    __slots__ = ("first_ns", "last_ns", "packets")

    def __init__(self) -> None:
        self.packets = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None


class PcapngWriter:
    """Streams one pcapng section to ``file`` (which the caller opens and closes).

    Counts :attr:`packets` and :attr:`packet_bytes` (captured data, as the classic writer does)
    and :attr:`bytes_written` (the whole file so far).
    """

    def __init__(self, *, file: BinaryIO, section: SectionInfo) -> None:
        self._file: Final = file
        self._interfaces: list[InterfaceInfo] = []
        self._counts: list[_Counts] = []
        self._names = NameRecords()
        self.packets = 0
        self.packet_bytes = 0
        self.bytes_written = 0
        self.finished = False
        self._write(section_header_block(section))

    def _write(self, raw: bytes) -> None:
        if self.finished:
            raise ValueError("write to a pcapng file after finish()")
        self._file.write(raw)
        self.bytes_written += len(raw)

    @property
    def interfaces(self) -> tuple[InterfaceInfo, ...]:
        return tuple(self._interfaces)

    def add_interface(self, interface: InterfaceInfo) -> int:
        """Describe an interface; returns its id for :meth:`write_packet`."""
        if not 1 <= interface.snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen must be in 1..2**31-1, got {interface.snaplen}")
        self._write(interface_description_block(interface) + self._names.interface_written())
        self._interfaces.append(interface)
        self._counts.append(_Counts())
        return len(self._interfaces) - 1

    def write_packet(
        self, *, interface_id: int, timestamp_ns: int, data: bytes, original_length: int = 0, flags: int = 0
    ) -> int:
        """Append one packet (at most the interface's snap length of it); returns the bytes stored.

        ``flags`` are epb_flags (:func:`~kpcap.pcap.pcapng_blocks.packet_flags` of the AF_PACKET
        packet type gives the direction); ``original_length`` defaults to the data's length.
        """
        if not 0 <= interface_id < len(self._interfaces):
            added = f"0..{len(self._interfaces) - 1}" if self._interfaces else "none added yet"
            raise ValueError(f"interface_id must be an added interface's id ({added}), got {interface_id}")
        snaplen = self._interfaces[interface_id].snaplen
        original = max(original_length, len(data))
        if len(data) > snaplen:
            data = data[:snaplen]
        self._write(
            enhanced_packet_block(
                interface_id=interface_id,
                timestamp_ns=timestamp_ns,
                data=data,
                original_length=original,
                flags=flags,
            )
        )
        counts = self._counts[interface_id]
        counts.packets += 1
        if counts.first_ns is None:
            counts.first_ns = timestamp_ns
        counts.last_ns = timestamp_ns
        self.packets += 1
        self.packet_bytes += len(data)
        return len(data)

    def write_names(self, names: Iterable[tuple[str, str]]) -> None:
        """Name records for (address, name) pairs not written yet (pods as ``<namespace>/<pod>``,
        nodes by their names); IPv4 or IPv6 addresses. Before any interface, they are held until
        the first (:class:`NameRecords`)."""
        if block := self._names.add(names):
            self._write(block)

    def write_statistics(self, *, interface_id: int, statistics: InterfaceStatistics) -> None:
        self._write(interface_statistics_block(interface_id=interface_id, statistics=statistics))

    def finish(self, *, timestamp_ns: int, dropped: Mapping[int, int] | None = None) -> None:
        """Write every interface's statistics (its packets, the kernel's drops from ``dropped`` by
        interface id) and flush; nothing may be written after."""
        drops = dropped or {}
        for interface_id, counts in enumerate(self._counts):
            drop = drops.get(interface_id)
            statistics = InterfaceStatistics(
                timestamp_ns=timestamp_ns,
                start_ns=counts.first_ns,
                end_ns=counts.last_ns,
                received=None if drop is None else counts.packets + drop,
                dropped=drop,
                delivered=counts.packets,
            )
            self.write_statistics(interface_id=interface_id, statistics=statistics)
        self._file.flush()
        self.finished = True
