"""The directory ObjectStore (the operator's store of simple captures): whole objects or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap.storage import ObjectStore, StorageError
from kpcap.storage.base import FailureReason
from kpcap.storage.directory import DirectoryStore


def test_it_is_an_object_store_and_round_trips(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "samples")
    assert isinstance(store, ObjectStore)
    result = store.put_bytes(key="ns/pcap_1.pcap", data=b"x" * 200_000)
    assert result.uri == f"file://{tmp_path}/samples/ns/pcap_1.pcap"
    assert result.size == 200_000
    assert store.exists("ns/pcap_1.pcap")
    with store.open_read("ns/pcap_1.pcap", chunk_size=65536) as reader:
        assert reader.size == 200_000
        chunks = list(reader)
    assert [len(c) for c in chunks] == [65536, 65536, 65536, 3392]
    assert store.get_bytes(key="ns/pcap_1.pcap", max_bytes=200_000) == b"x" * 200_000
    source = tmp_path / "local.pcap"
    source.write_bytes(b"abc")
    store.upload_file(local_path=source, key="ns/pcap_2.pcap")
    assert store.download_to(key="ns/pcap_2.pcap", path=tmp_path / "copy") == 3
    # No temporary file is left next to the objects.
    assert sorted(p.name for p in (tmp_path / "samples" / "ns").iterdir()) == ["pcap_1.pcap", "pcap_2.pcap"]
    store.delete("ns/pcap_1.pcap")
    store.delete("ns/pcap_1.pcap")  # already gone: not an error
    assert not store.exists("ns/pcap_1.pcap")


def test_errors_name_the_object_and_why(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises(StorageError, match=r"file://.*/nope: the object does not exist") as missing:
        store.open_read("nope")
    assert missing.value.reason == FailureReason.OBJECT_MISSING
    store.put_bytes(key="big", data=b"0123456789")
    with pytest.raises(StorageError, match="larger than allowed") as large:
        store.get_bytes(key="big", max_bytes=9)
    assert large.value.permanent
    for key in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(StorageError, match="relative path"):
            store.put_bytes(key=key, data=b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]
    with pytest.raises(ValueError, match="absolute path"):
        DirectoryStore(Path("relative"))


def test_a_failed_write_keeps_the_previous_object(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put_bytes(key="k", data=b"old")
    with pytest.raises(StorageError):
        store.upload_file(local_path=tmp_path / "missing-source", key="k")
    assert store.get_bytes(key="k", max_bytes=10) == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]
