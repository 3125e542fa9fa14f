"""The aligned, direct file under the PCAP writer (kpcap.pcap.direct_file): the bytes written are the
bytes given, with and without O_DIRECT, and a failing disk is an error, never a silent short file."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpcap.pcap import PcapWriter, Record, iter_pcap_records, pcap_bytes
from kpcap.pcap.direct_file import ALIGNMENT, AlignedFile, write_direct

DIRECT_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs"})


def _filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point that holds it)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fs_type, *_ = line.split()
        if (str(path) + "/").startswith(mount_point.rstrip("/") + "/") and len(mount_point) > len(best):
            best, kind = mount_point, fs_type
    return kind


def _records(count: int, *, seed: int) -> list[Record]:
    generator = random.Random(seed)
    return [
        Record(
            1_700_000_000 + number // 1000,
            number,
            generator.randbytes(generator.choice((60, 61, 1442, 4095, 4097, 9000))),
            9100,
            0,
        )
        for number in range(count)
    ]


def _mounted(tmp_path: Path, kind: str, *options: str) -> Iterator[Path]:
    mount_point = tmp_path / kind
    mount_point.mkdir()
    subprocess.run(["mount", "-t", kind, *options, kind, str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs: it refuses O_DIRECT (tmpfs takes it since Linux 6.6)."""
    yield from _mounted(tmp_path, "ramfs")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, to fill up."""
    yield from _mounted(tmp_path, "tmpfs", "-o", "size=2m")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_direct_and_page_cache_writes_hold_the_bytes_given(tmp_path: Path, ramfs: Path) -> None:
    records = _records(200, seed=1)  # ~1 MB: several chunks, tails carried over between them
    expected = pcap_bytes(records, snaplen=262_144)
    for directory in (tmp_path, ramfs):
        path = directory / "capture.pcap"
        with PcapWriter(path=path) as writer:
            for start in range(0, len(records), 7):
                writer.write_batch(records[start : start + 7])
        assert path.read_bytes() == expected, directory
        assert [record[:4] for record in iter_pcap_records(path)] == [record[:4] for record in records]
        if directory == ramfs:
            assert not writer.writes_past_page_cache  # refused there: the page cache path
        elif _filesystem_of(tmp_path) in DIRECT_FILESYSTEMS:
            assert writer.writes_past_page_cache
            assert sum(writer.chunks_written) > 0


def test_many_chunks_through_a_short_queue_keep_their_order(tmp_path: Path) -> None:
    # One chunk queued at a time: the capture thread waits for the writer thread, and nothing is
    # reordered or lost on the way.
    path = tmp_path / "ordered.bin"
    chunks = [bytes([number]) * (ALIGNMENT * 3 + number) for number in range(40)]
    file = AlignedFile(path=path, headroom=ALIGNMENT * 4, chunk_bytes=ALIGNMENT * 2, queue_chunks=1)
    for chunk in chunks:
        file.buffer[file.used : file.used + len(chunk)] = chunk
        file.used += len(chunk)
        if file.used >= file.flush_at:
            file.flush_chunks()
    file.close()
    assert path.read_bytes() == b"".join(chunks)
    file.close()  # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_an_error_naming_the_file(small_tmpfs: Path) -> None:
    path = small_tmpfs / "full.pcap"
    writer = PcapWriter(path=path)

    def write_more_than_there_is_room_for() -> None:
        for batch in range(100):  # 100 x 100 x 1442 bytes: far more than the 2 MiB there is
            writer.write_batch([(batch, number, bytes(1442), 1442, 0) for number in range(100)])
        writer.close()

    with pytest.raises(OSError, match=r"full\.pcap") as raised:
        write_more_than_there_is_room_for()
    assert "No space left" in str(raised.value)
    writer.close()  # closing again after the error neither hangs nor raises


def test_a_lagging_device_sends_chunks_through_the_page_cache_until_caught_up() -> None:
    decisions = []
    direct = True
    for backlog in (0, 3, 7, 8, 9, 5, 2, 1, 0, 4, 8):
        direct = write_direct(direct=direct, backlog=backlog, behind=8, caught_up=1)
        decisions.append(direct)
    assert decisions == [True, True, True, False, False, False, False, True, True, True, False]


def test_chunks_switching_between_direct_and_cached_writes_keep_the_bytes(tmp_path: Path) -> None:
    # A two-chunk queue and a producer faster than direct writes: chunks take both paths.
    path = tmp_path / "mixed.bin"
    generator = random.Random(3)
    chunks = [generator.randbytes(ALIGNMENT * 64 + number) for number in range(200)]
    file = AlignedFile(path=path, headroom=ALIGNMENT * 70, chunk_bytes=ALIGNMENT * 64, queue_chunks=2)
    for chunk in chunks:
        file.buffer[file.used : file.used + len(chunk)] = chunk
        file.used += len(chunk)
        file.flush_chunks()
    file.close()
    assert path.read_bytes() == b"".join(chunks)
    assert file.direct_chunks + file.cached_chunks >= 199
