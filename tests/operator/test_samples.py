"""Simple captures' samples (kpcap_operator.samples): the window asked for, and the merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kpcap.model import parse_spec
from kpcap.pcap import PcapRecords
from kpcap_operator.sampler_client import SamplerAnswer
from kpcap_operator.samples import merge_newest, sample_window
from tests.operator.sampler_answers import SPEC, pcap


def test_window_ends_at_offset_time_or_now() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert sample_window(spec=SPEC, now=now) == (
        int((now - timedelta(seconds=60)).timestamp()) * 10**9,
        int(now.timestamp()) * 10**9,
    )
    offset = now - timedelta(hours=3)
    spec = parse_spec(
        {"type": "simple", "timeLimit": 5, "packetLimit": 1, "offsetTime": "2026-11-27T09:00:00Z"}, now=now
    )
    assert sample_window(spec=spec, now=now) == (
        int(offset.timestamp() - 5) * 10**9,
        int(offset.timestamp()) * 10**9,
    )


def test_merge_keeps_the_newest_packet_limit_in_timestamp_order() -> None:
    answers = [
        SamplerAnswer("n1", PcapRecords([pcap([(10, b"a1"), (30, b"a3"), (50, b"a5")])]), None, 0.01),
        SamplerAnswer("n2", PcapRecords([pcap([(20, b"b2"), (40, b"b4")])]), None, 0.01),
        SamplerAnswer("n3", None, "sampler did not answer within 1 s", 1.0),
    ]
    merged = merge_newest(answers, limit=3)
    records = list(PcapRecords([merged.pcap]))
    assert [(r.timestamp_ns, r.data) for r in records] == [(30, b"a3"), (40, b"b4"), (50, b"a5")]
    assert [r.original_length for r in records] == [102, 102, 102]
    assert merged.packets == 3
    assert merged.packet_bytes == 6
    assert merged.per_node == {"n1": 2, "n2": 1}
    assert PcapRecords([merged.pcap]).header.nanosecond


def test_merge_cuts_records_to_the_snap_length() -> None:
    # spec.snapLength on a simple capture: each record cut to it, its original length kept.
    def answers() -> list[SamplerAnswer]:  # an answer's records are read once
        return [SamplerAnswer("n1", PcapRecords([pcap([(10, b"abcdef"), (20, b"ab")])]), None, 0.01)]

    merged = merge_newest(answers(), limit=10, snap_length=3)
    records = list(PcapRecords([merged.pcap]))
    assert [(r.data, r.original_length) for r in records] == [(b"abc", 106), (b"ab", 102)]
    assert merged.packet_bytes == 5
    assert PcapRecords([merged.pcap]).header.snaplen == 3
    wide = merge_newest(answers(), limit=10, snap_length=262_144)
    assert [r.data for r in PcapRecords([wide.pcap])] == [b"abcdef", b"ab"]


def test_merge_of_empty_answers_is_a_valid_empty_pcap() -> None:
    merged = merge_newest([SamplerAnswer("n1", PcapRecords([pcap([])]), None, 0.0)], limit=10)
    assert merged.packets == 0
    assert list(PcapRecords([merged.pcap])) == []
