"""Merging PCAP streams by timestamp (kpcap.pcap): small generated files, cut into chunks of any size."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpcap.pcap import (
    MAGIC_MICRO,
    MAGIC_NANO,
    PcapFormatError,
    PcapRecords,
    merge,
)

MERGECAP = "/usr/bin/mergecap"

Packet = tuple[int, bytes]  # (timestamp in ns, data)


def pcap(packets: list[Packet], *, nano: bool = False, big_endian: bool = False, linktype: int = 1) -> bytes:
    order = ">" if big_endian else "<"
    out = struct.pack(f"{order}IHHiIII", MAGIC_NANO if nano else MAGIC_MICRO, 2, 4, 0, 0, 65535, linktype)
    for stamp, data in packets:
        seconds, fraction = divmod(stamp, 1_000_000_000)
        fraction = fraction if nano else fraction // 1000
        out += struct.pack(f"{order}IIII", seconds, fraction, len(data), len(data) + 4) + data
    return out


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        yield data[position : position + size]
        position += size
        index += 1


def records(data: bytes) -> list[Packet]:
    return [(r.timestamp_ns, r.data) for r in PcapRecords([data])]


packet_lists = st.lists(
    st.tuples(
        st.integers(1_600_000_000, 1_600_000_100).map(lambda s: s * 1_000_000_000), st.binary(max_size=40)
    ),
    max_size=30,
).map(lambda ps: sorted(((t + i * 1000, d) for i, (t, d) in enumerate(ps)), key=lambda p: p[0]))


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(packet_lists, min_size=1, max_size=4),
    sizes=st.lists(st.integers(1, 70), max_size=5),
    out_chunk=st.integers(1, 300),
)
def test_merge_is_the_timestamp_ordered_union(
    files: list[list[Packet]], sizes: list[int], out_chunk: int
) -> None:
    inputs = [PcapRecords(chunks(pcap(packets), sizes)) for packets in files]
    merged = b"".join(merge(inputs, chunk_size=out_chunk))
    # Ties: the later file first, as mergecap does.
    tagged = [(t, -i, d) for i, packets in enumerate(files) for t, d in packets]
    expected = [(t, d) for t, _, d in sorted(tagged, key=lambda p: (p[0], p[1]))]
    assert records(merged) == expected


def test_merge_equals_mergecap(tmp_path: Path) -> None:
    a = [(1_700_000_000_000_000_000 + i * 3_000_000, b"a%d" % i) for i in range(50)]
    b = [(1_700_000_000_000_000_000 + i * 5_000_000 + 1000, b"b%d" % i) for i in range(30)]
    c = [(1_700_000_000_000_000_000 + i * 3_000_000, b"c%d" % i) for i in range(10)]  # ties with a
    paths = []
    for name, packets in (("a", a), ("b", b), ("c", c)):
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(pcap(packets))
        paths.append(path)
    theirs = subprocess.run(
        [MERGECAP, "-F", "pcap", "-w", "-", *map(str, paths)], check=True, capture_output=True
    ).stdout
    ours = b"".join(merge([PcapRecords(chunks(p.read_bytes(), [7])) for p in paths]))
    assert ours == theirs


def test_nanosecond_and_big_endian_inputs() -> None:
    a = pcap([(10_000_000_001, b"x")], nano=True)
    b = pcap([(10_000_000_000, b"y"), (10_000_001_000, b"z")], big_endian=True)
    merged = b"".join(merge([PcapRecords([a]), PcapRecords([b])]))
    assert struct.unpack("<I", merged[:4])[0] == MAGIC_NANO
    assert records(merged) == [(10_000_000_000, b"y"), (10_000_000_001, b"x"), (10_000_001_000, b"z")]


def test_a_truncated_file_ends_at_its_last_whole_record() -> None:
    data = pcap([(1_000_000_000, b"abc"), (2_000_000_000, b"defg")])
    assert records(data[:-2]) == [(1_000_000_000, b"abc")]


def test_strict_reading_refuses_a_cut_file_and_reads_a_whole_one() -> None:
    data = pcap([(1_000_000_000, b"abc"), (2_000_000_000, b"defg")])
    assert [r.data for r in PcapRecords([data], strict=True)] == [b"abc", b"defg"]
    with pytest.raises(PcapFormatError, match="truncated record data"):
        list(PcapRecords([data[:-2]], strict=True))
    with pytest.raises(PcapFormatError, match="truncated record header"):
        list(PcapRecords([data[: 24 + 16 + 3 + 5]], strict=True))


def test_not_a_pcap_or_mixed_linktypes() -> None:
    with pytest.raises(PcapFormatError, match="not a classic PCAP"):
        PcapRecords([b"\x0a\x0d\x0d\x0a" + bytes(40)])
    with pytest.raises(PcapFormatError, match="24-byte header"):
        PcapRecords([b"\xd4\xc3"])
    with pytest.raises(PcapFormatError, match="different link types"):
        list(merge([PcapRecords([pcap([], linktype=1)]), PcapRecords([pcap([], linktype=101)])]))
