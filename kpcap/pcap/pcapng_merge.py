"""Merging captures into one pcapng (or one classic pcap): by timestamp, streaming, memory
bounded by the number of inputs and interfaces, not by the inputs' sizes.

Inputs are the per-node files of a capture, classic pcap or pcapng (:func:`merge_input` tells
them apart). Every input's interfaces get new ids in the output, in the order they are met; a
classic input is one interface whose name (``<node>/<interface>``) the caller gives. Packets are
taken one at a time from each input (``heapq.merge`` in :func:`kpcap.pcap.merge.merged_records`,
ties as mergecap breaks them); the other blocks an input holds are handled when its reader meets
them: interfaces and name records are written at once (before any packet that needs them), each
interface's last statistics at the end (one per interface: carried over, else its packet count).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from kpcap.pcap.classic import PcapFormatError, PcapHeader
from kpcap.pcap.merge import merge, merge_packets, merged_records
from kpcap.pcap.pcapng import NameRecords
from kpcap.pcap.pcapng_blocks import (
    InterfaceInfo,
    InterfaceStatistics,
    SectionInfo,
    enhanced_packet_block,
    interface_description_block,
    interface_statistics_block,
    section_header_block,
)
from kpcap.pcap.pcapng_reader import (
    PcapngEvent,
    PcapngInterface,
    PcapngNames,
    PcapngPacket,
    PcapngReader,
    PcapngSection,
    PcapngStatistics,
    open_capture,
)
from kpcap.pcap.reader import CHUNK_SIZE, PcapRecords
from kpcap.pcap.record import TimedPacket


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassicInput:
    """A classic pcap input: one interface, named by the caller (``<node>/<interface>``), and the
    statistics known of it apart from the file (the agent's report of kernel drops), if any."""

    records: PcapRecords
    interface_name: str
    statistics: InterfaceStatistics | None = None


MergeInput = ClassicInput | PcapngReader


def merge_input(
    chunks: Iterable[bytes],
    *,
    interface_name: str,
    statistics: InterfaceStatistics | None = None,
    strict: bool = False,
) -> MergeInput:
    """An input of either format; ``interface_name`` and ``statistics`` apply to a classic one
    (a pcapng input names its interfaces itself)."""
    opened = open_capture(chunks, strict=strict)
    if isinstance(opened, PcapngReader):
        return opened
    return ClassicInput(records=opened, interface_name=interface_name, statistics=statistics)


class _Output:
    """The merged file's interfaces, names and statistics, and the blocks not yet sent."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.interfaces: list[InterfaceInfo] = []
        self.names = NameRecords()
        self.statistics: dict[int, InterfaceStatistics] = {}
        self.packets: list[int] = []

    def add_interface(self, interface: InterfaceInfo) -> int:
        self.pending += interface_description_block(interface) + self.names.interface_written()
        self.interfaces.append(interface)
        self.packets.append(0)
        return len(self.interfaces) - 1

    def add_names(self, names: Iterable[tuple[str, str]]) -> None:
        self.pending += self.names.add(names)


def _classic_packets(source: ClassicInput, output: _Output) -> Iterator[PcapngPacket]:
    header = source.records.header
    interface_id = output.add_interface(
        InterfaceInfo(name=source.interface_name, linktype=header.linktype, snaplen=header.snaplen)
    )
    if source.statistics is not None:
        output.statistics[interface_id] = source.statistics
    for record in source.records:
        yield PcapngPacket(record.timestamp_ns, record.data, record.original_length, interface_id, 0)


def _pcapng_packets(source: PcapngReader, output: _Output) -> Iterator[PcapngPacket]:
    ids: list[int] = []  # this section's interface ids -> the output's
    for event in source:
        if isinstance(event, PcapngPacket):
            yield event._replace(interface_id=ids[event.interface_id])
        elif isinstance(event, PcapngInterface):
            ids.append(output.add_interface(event.info))
        elif isinstance(event, PcapngNames):
            output.add_names(event.names)
        elif isinstance(event, PcapngStatistics):
            output.statistics[ids[event.interface_id]] = event.statistics
        elif isinstance(event, PcapngSection):
            ids = []


def _packets(source: MergeInput, output: _Output) -> Iterator[PcapngPacket]:
    if isinstance(source, ClassicInput):
        return _classic_packets(source, output)
    return _pcapng_packets(source, output)


def merge_pcapng(
    inputs: Sequence[MergeInput],
    *,
    section: SectionInfo,
    names: Iterable[tuple[str, str]] = (),
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """The merged pcapng, as chunks of about ``chunk_size`` bytes: one section (``section``),
    name records for ``names`` ((address, name): pods and nodes) and those the inputs hold.

    Raises PcapFormatError (before anything is sent) when no input describes an interface.
    """
    output = _Output()
    pending = output.pending
    pending += section_header_block(section)
    output.add_names(names)
    streams = [_packets(source, output) for source in inputs]
    counts = output.packets
    last_ns = 0
    for _, packet in merged_records(streams):
        # Blocks the readers met on the way (interfaces, names) are already in ``pending``.
        pending += enhanced_packet_block(
            interface_id=packet.interface_id,
            timestamp_ns=packet.timestamp_ns,
            data=packet.data,
            original_length=packet.original_length,
            flags=packet.flags,
        )
        counts[packet.interface_id] += 1
        last_ns = packet.timestamp_ns
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if not counts:
        # Nothing was sent yet (no packet without an interface). A pcapng of no interface is one
        # mergecap 4.0 refuses ("can't be written as a pcapng file"): not a file kpcap writes.
        raise PcapFormatError("no files to merge, or none describes an interface")
    for interface_id, packets in enumerate(counts):
        statistics = output.statistics.get(interface_id) or InterfaceStatistics(
            timestamp_ns=last_ns, delivered=packets
        )
        pending += interface_statistics_block(interface_id=interface_id, statistics=statistics)
    yield bytes(pending)


def _classic_stream(events: Iterable[PcapngEvent], linktype: int) -> Iterator[PcapngPacket]:
    """A pcapng input's packets for a classic output (whose one link type is ``linktype``)."""
    for event in events:
        if isinstance(event, PcapngPacket):
            yield event
        elif isinstance(event, PcapngInterface) and event.info.linktype != linktype:
            raise PcapFormatError(
                f"interface {event.info.name!r} has link type {event.info.linktype}, the merged "
                f"file {linktype}: they cannot be merged into one classic pcap"
            )


def _leading_interfaces(source: PcapngReader) -> tuple[list[InterfaceInfo], Iterator[PcapngPacket]]:
    """The interfaces a pcapng input describes before its first packet, and all its packets."""
    events = iter(source)
    interfaces: list[InterfaceInfo] = []
    first: list[PcapngEvent] = []
    for event in events:
        if isinstance(event, PcapngInterface):
            interfaces.append(event.info)
        elif isinstance(event, PcapngPacket):
            first.append(event)
            break
    linktype = interfaces[0].linktype if interfaces else 0
    return interfaces, _classic_stream(itertools.chain(first, events), linktype)


def merge_pcap(
    inputs: Sequence[MergeInput], *, nanosecond: bool | None = None, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """The inputs merged into one classic pcap: ``mergecap -F pcap`` with ``nanosecond=False``,
    ``mergecap -F nsecpcap`` with True; None: nanoseconds if an input has them (pcapng inputs
    count as nanosecond ones, as kpcap writes them)."""
    if all(isinstance(source, ClassicInput) for source in inputs):
        classic = [source.records for source in inputs if isinstance(source, ClassicInput)]
        return merge(classic, chunk_size=chunk_size, nanosecond=nanosecond)
    headers: list[PcapHeader] = []
    streams: list[Iterable[TimedPacket]] = []
    for source in inputs:
        if isinstance(source, ClassicInput):
            headers.append(source.records.header)
            streams.append(source.records)
        else:
            interfaces, packets = _leading_interfaces(source)
            headers.extend(PcapHeader("<", True, (1, 0), i.snaplen, i.linktype) for i in interfaces)
            streams.append(packets)
    return merge_packets(headers=headers, inputs=streams, chunk_size=chunk_size, nanosecond=nanosecond)
