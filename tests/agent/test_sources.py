"""The finite packet sources (kpcap_agent.sources): a pcap file ends the capture when it runs out."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap.pcap import PcapWriter
from kpcap_agent.sources import PcapFileSource, SourceExhausted


def test_file_source_end_of_source(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    PcapWriter(path=path).close()
    with pytest.raises(SourceExhausted):
        PcapFileSource(path=path).next_frames(timeout=0.1)
