"""Where simple captures' PCAPs are kept (kpcap_operator.sample_store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap.storage.directory import DirectoryStore
from kpcap_operator.sample_store import open_sample_store


def test_sample_store_is_a_directory_or_a_bucket(tmp_path: Path) -> None:
    store = open_sample_store(str(tmp_path))
    assert isinstance(store.store, DirectoryStore)
    key = store.key(namespace="team-a", capture_id="ab" * 16)
    assert key == f"team-a/pcap_{'ab' * 16}.pcap"
    uri = store.store.put_bytes(key=key, data=b"pcap").uri
    assert uri == f"file://{tmp_path}/{key}"
    bucket = open_sample_store("s3://kpcap-samples/simple/v1?region=us-east-1")
    assert bucket.store.scheme == "s3"
    assert bucket.key(namespace="n", capture_id="c") == "simple/v1/n/pcap_c.pcap"
    with pytest.raises(ValueError, match="KPCAP_SAMPLE_STORE: must be an absolute directory path"):
        open_sample_store("relative/dir")
    with pytest.raises(ValueError, match="KPCAP_SAMPLE_STORE"):
        open_sample_store("ftp://x/y")
