"""Merging classic PCAP streams by timestamp, byte for byte as ``mergecap -F pcap``.

``merge`` does a heap merge of several inputs' records by timestamp; on equal timestamps the later
input in the list comes first, as mergecap does (its ``is_earlier`` keeps the last of equal
candidates), so for the same files in the same order the output is mergecap's. The output is
classic libpcap: microsecond resolution unless an input has nanosecond timestamps (then
nanosecond, as ``mergecap -F nsecpcap``; ``mergecap -F pcap`` always writes microseconds, which
``nanosecond=False`` gives), snap length 262144 (mergecap's, Wireshark's standard maximum) or an
input's larger one, the common link type (files of different link types cannot be merged into
one classic PCAP). An input cut short inside a record (a node that died mid-write) ends at its
last whole record.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, TypeVar

from kpcap.pcap.classic import DEFAULT_SNAPLEN, PcapFormatError, PcapHeader, global_header, record_bytes
from kpcap.pcap.reader import CHUNK_SIZE, PcapRecords
from kpcap.pcap.record import TimedPacket

MERGED_SNAPLEN: Final = DEFAULT_SNAPLEN
Packet = TypeVar("Packet", bound=TimedPacket)


def merged_header(headers: Sequence[PcapHeader], *, nanosecond: bool | None = None) -> bytes:
    """The merged file's global header (``nanosecond`` None: if an input has nanoseconds)."""
    if not headers:
        raise PcapFormatError("no files to merge")
    linktypes = sorted({h.linktype for h in headers})
    if len(linktypes) > 1:
        raise PcapFormatError(f"the files have different link types {linktypes}: they cannot be merged")
    return global_header(
        nanosecond=any(h.nanosecond for h in headers) if nanosecond is None else nanosecond,
        snaplen=max(MERGED_SNAPLEN, *(h.snaplen for h in headers)),
        linktype=linktypes[0],
    )


def _keyed(index: int, records: Iterable[Packet]) -> Iterator[tuple[int, int, Packet]]:
    for record in records:
        yield record.timestamp_ns, -index, record


def merged_records(inputs: Sequence[Iterable[Packet]]) -> Iterator[tuple[int, Packet]]:
    """(input index, record) of every input, by timestamp; on ties the later input first (mergecap)."""
    keyed = [_keyed(index, records) for index, records in enumerate(inputs)]
    for _, negative_index, record in heapq.merge(*keyed, key=lambda item: (item[0], item[1])):
        yield -negative_index, record


def merge(
    inputs: Sequence[PcapRecords], *, chunk_size: int = CHUNK_SIZE, nanosecond: bool | None = None
) -> Iterator[bytes]:
    """The merged PCAP, as chunks of about ``chunk_size`` bytes (header first)."""
    return merge_packets(
        headers=[i.header for i in inputs], inputs=inputs, chunk_size=chunk_size, nanosecond=nanosecond
    )


def merge_packets(
    *,
    headers: Sequence[PcapHeader],
    inputs: Sequence[Iterable[TimedPacket]],
    chunk_size: int = CHUNK_SIZE,
    nanosecond: bool | None = None,
) -> Iterator[bytes]:
    """:func:`merge` of packet streams whose headers (link types, snap lengths) are given apart
    (pcapng inputs: one per interface)."""
    header = merged_header(headers, nanosecond=nanosecond)
    if nanosecond is None:
        nanosecond = any(h.nanosecond for h in headers)
    pending = bytearray(header)
    for _, record in merged_records(inputs):
        pending += record_bytes(record, nanosecond=nanosecond)
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)
