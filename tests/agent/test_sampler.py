"""The sampler's pure core (SampleRing): sampling, truncation, budget, retention, queries. No network."""

from __future__ import annotations

import ipaddress
import tracemalloc
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kpcap.filters import compile_matcher
from kpcap.model import CaptureFilter
from kpcap.pcap import PcapWriter, Record, RecordTuple, iter_pcap_records
from kpcap_agent.sampler import (
    MAX_ORIGINAL_LENGTH,
    MAX_SNAP_LENGTH,
    MIN_SNAP_LENGTH,
    RECORD_OVERHEAD_BYTES,
    SampledPacket,
    SamplerConfig,
    SampleRing,
    SamplerStats,
)

NS = 1_000_000_000
T0 = 1_700_000_000  # seconds since the epoch: "now" for the injected clocks


def accept_all(_frame: bytes) -> bool:
    return True


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ring(
    *, sample_rate: int = 1, snap_length: int = 128, byte_budget: int = 1 << 20, retention: float = 86400.0
) -> SampleRing:
    config = SamplerConfig(
        sample_rate=sample_rate,
        snap_length=snap_length,
        byte_budget=byte_budget,
        retention_seconds=retention,
    )
    return SampleRing(config, clock=FakeClock())


def udp_frame(*, src: str = "10.0.0.1", dst: str = "10.0.0.2", dport: int = 53, payload: int = 10) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / Raw(b"x" * payload))


def test_sampling_keeps_every_nth_offered_frame_from_the_first() -> None:
    sampler = ring(sample_rate=3)
    kept = [sampler.offer(bytes([i]) * 70, timestamp_ns=T0 * NS + i) for i in range(10)]
    assert kept == [i % 3 == 0 for i in range(10)]
    held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=100)
    assert [packet.data[0] for packet in held] == [0, 3, 6, 9]
    stats = sampler.stats()
    assert (stats.offered, stats.sampled, stats.held_records) == (10, 4, 4)


def test_rate_one_keeps_everything() -> None:
    sampler = ring(sample_rate=1)
    assert all(sampler.offer(b"a" * 64, timestamp_ns=T0 * NS + i) for i in range(20))
    assert sampler.stats().held_records == 20


def test_snap_length_truncates_and_keeps_the_original_length() -> None:
    sampler = ring(snap_length=64)
    long_frame = udp_frame(payload=500)
    short_frame = b"s" * 40
    sampler.offer(long_frame, timestamp_ns=T0 * NS)
    sampler.offer(short_frame, timestamp_ns=T0 * NS + 1)
    sampler.offer(bytearray(b"b" * 64), timestamp_ns=T0 * NS + 2)
    long_record, short_record, exact_record = sampler.query(
        since_ns=0, until_ns=2**63, accept=accept_all, limit=10
    )
    assert long_record.data == long_frame[:64]
    assert long_record.original_length == len(long_frame) > 64
    assert short_record.data == short_frame
    assert short_record.original_length == 40
    assert type(exact_record.data) is bytes
    assert exact_record.original_length == 64
    assert sampler.stats().held_bytes == 64 + 40 + 64 + 3 * RECORD_OVERHEAD_BYTES


class BudgetCheckingDeque(deque[SampledPacket]):
    """Checks, at the moment of each append, that the records held never cost more than the budget."""

    budget = 0

    def append(self, record: SampledPacket) -> None:
        assert sum(held.cost for held in self) + record.cost <= self.budget
        super().append(record)


@settings(max_examples=200, deadline=None)
@given(
    sample_rate=st.integers(1, 5),
    snap_length=st.integers(MIN_SNAP_LENGTH, 300),
    extra_budget=st.integers(0, 2000),
    sizes=st.lists(st.integers(0, 400), max_size=80),
)
def test_budget_is_never_exceeded_and_the_newest_records_that_fit_are_held(
    sample_rate: int, snap_length: int, extra_budget: int, sizes: list[int]
) -> None:
    budget = snap_length + RECORD_OVERHEAD_BYTES + extra_budget
    sampler = ring(sample_rate=sample_rate, snap_length=snap_length, byte_budget=budget)
    checking = BudgetCheckingDeque()
    checking.budget = budget
    sampler._records = checking  # the ring's store, so every append is checked as it happens
    sampled_costs: list[int] = []
    for index, size in enumerate(sizes):
        kept = sampler.offer(bytes(size), timestamp_ns=T0 * NS + index)
        assert kept == (index % sample_rate == 0)
        if kept:
            sampled_costs.append(min(size, snap_length) + RECORD_OVERHEAD_BYTES)
        held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=10**6)
        stats = sampler.stats()
        assert stats.held_bytes == sum(record.cost for record in held) <= budget
        # The held records are the longest suffix of the sampled ones that fits the budget.
        expected, total = 0, 0
        for cost in reversed(sampled_costs):
            if total + cost > budget:
                break
            expected, total = expected + 1, total + cost
        assert stats.held_records == len(held) == expected
        assert stats.evicted_for_budget == len(sampled_costs) - expected
        assert stats.offered == index + 1


def test_budget_eviction_drops_the_oldest_first() -> None:
    budget = 3 * (100 + RECORD_OVERHEAD_BYTES)
    sampler = ring(snap_length=100, byte_budget=budget)
    for i in range(5):
        sampler.offer(bytes([i]) * 100, timestamp_ns=T0 * NS + i)
    held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=10)
    assert [packet.data[0] for packet in held] == [2, 3, 4]
    stats = sampler.stats()
    assert (stats.held_bytes, stats.evicted_for_budget) == (budget, 2)


def test_retention_evicts_records_older_than_the_clock_allows() -> None:
    clock = FakeClock(T0)
    config = SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20, retention_seconds=60)
    sampler = SampleRing(config, clock=clock)
    for second in range(10):
        sampler.offer(b"p" * 64, timestamp_ns=(T0 + second) * NS)
    assert sampler.stats().held_records == 10
    clock.now = T0 + 60 + 4.5  # records at T0 .. T0+4 are now older than 60 s
    held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=100)
    assert [packet.timestamp_ns for packet in held] == [(T0 + s) * NS for s in range(5, 10)]
    stats = sampler.stats()
    assert (stats.held_records, stats.evicted_for_retention) == (5, 5)
    assert stats.held_bytes == 5 * (64 + RECORD_OVERHEAD_BYTES)
    # A frame whose timestamp is already past retention is not stored.
    assert not sampler.offer(b"o" * 64, timestamp_ns=(T0 + 1) * NS)
    assert sampler.stats().evicted_for_retention == 6
    clock.now = T0 + 1000
    assert sampler.stats().held_records == 0
    assert sampler.stats().held_bytes == 0


def test_default_retention_is_24_hours() -> None:
    config = SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20)
    assert config.retention_seconds == 86400


def test_query_window_filter_and_limit() -> None:
    sampler = ring(snap_length=256)
    dns = compile_matcher(CaptureFilter(destination_port=53, protocol=17))
    for i in range(20):
        frame = udp_frame(dport=53 if i % 2 == 0 else 80, payload=i)
        sampler.offer(frame, timestamp_ns=(T0 + i) * NS)
    sampler.offer(bytes(Ether() / IP() / TCP(dport=53)), timestamp_ns=(T0 + 20) * NS)

    # Window [T0+4, T0+12], both ends included: even seconds 4, 6, 8, 10, 12 match the filter.
    window = {"since_ns": (T0 + 4) * NS, "until_ns": (T0 + 12) * NS}
    held = sampler.query(**window, accept=dns, limit=100)
    assert [p.timestamp_ns // NS - T0 for p in held] == [4, 6, 8, 10, 12]
    assert all(UDP in Ether(p.data) and Ether(p.data)[UDP].dport == 53 for p in held)

    # Over the limit: the newest ones, still in ascending order.
    held = sampler.query(**window, accept=dns, limit=2)
    assert [p.timestamp_ns // NS - T0 for p in held] == [10, 12]

    # Whole history, by address: nothing from elsewhere.
    other = compile_matcher(CaptureFilter(source_address=ipaddress.ip_address("192.0.2.9")))
    assert sampler.query(since_ns=0, until_ns=2**63, accept=other, limit=10) == []
    # Empty window.
    assert sampler.query(since_ns=(T0 + 30) * NS, until_ns=(T0 + 40) * NS, accept=accept_all, limit=5) == []


def test_query_of_out_of_order_timestamps_is_still_sorted_and_newest_first_for_the_limit() -> None:
    sampler = ring()
    offsets = [5, 3, 9, 1, 7, 7, 2]
    for position, second in enumerate(offsets):
        sampler.offer(bytes([position]) * 64, timestamp_ns=(T0 + second) * NS)
    held = sampler.query(since_ns=(T0 + 2) * NS, until_ns=(T0 + 8) * NS, accept=accept_all, limit=100)
    assert [p.timestamp_ns // NS - T0 for p in held] == [2, 3, 5, 7, 7]
    assert [p.data[0] for p in held] == [6, 1, 0, 4, 5]  # ties keep arrival order
    held = sampler.query(since_ns=(T0 + 2) * NS, until_ns=(T0 + 8) * NS, accept=accept_all, limit=3)
    assert [p.data[0] for p in held] == [0, 4, 5]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"since_ns": 10, "until_ns": 9, "limit": 1}, "since_ns must be <= until_ns"),
        ({"since_ns": 0, "until_ns": 9, "limit": 0}, "limit must be >= 1"),
    ],
)
def test_query_arguments_are_checked(kwargs: dict[str, int], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ring().query(accept=accept_all, **kwargs)


def test_negative_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timestamp_ns must be >= 0"):
        ring().offer(b"x" * 64, timestamp_ns=-1)


MIN_BUDGET = 128 + RECORD_OVERHEAD_BYTES


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("sample_rate", 0, ValueError, r"sample_rate must be in 1\.\.2147483647, got 0"),
        ("sample_rate", 2**31, ValueError, r"sample_rate must be in 1\.\.2147483647"),
        ("sample_rate", 1.5, TypeError, r"sample_rate must be an integer in 1\.\.2147483647"),
        ("sample_rate", True, TypeError, r"sample_rate must be an integer"),
        ("snap_length", MIN_SNAP_LENGTH - 1, ValueError, r"snap_length must be in 64\.\.65535, got 63"),
        ("snap_length", MAX_SNAP_LENGTH + 1, ValueError, r"snap_length must be in 64\.\.65535, got 65536"),
        ("snap_length", "96", TypeError, r"snap_length must be an integer in 64\.\.65535"),
        ("retention_seconds", 0, ValueError, r"retention_seconds must be in \(0, 604800\], got 0"),
        ("retention_seconds", -1.0, ValueError, r"retention_seconds must be in \(0, 604800\]"),
        ("retention_seconds", 604801, ValueError, r"retention_seconds must be in \(0, 604800\]"),
        ("retention_seconds", float("nan"), ValueError, r"retention_seconds must be in \(0, 604800\]"),
        ("retention_seconds", "1d", TypeError, r"retention_seconds must be a number"),
        (
            "byte_budget",
            MIN_BUDGET - 1,
            ValueError,
            rf"byte_budget must be in {MIN_BUDGET}\.\.{2**48}, got {MIN_BUDGET - 1}",
        ),
        ("byte_budget", 2**48 + 1, ValueError, r"byte_budget must be in"),
        ("byte_budget", None, TypeError, r"byte_budget must be an integer"),
    ],
)
def test_config_validation_names_the_field_and_range(
    field: str, value: object, error: type[Exception], message: str
) -> None:
    values: dict[str, object] = {"sample_rate": 1, "snap_length": 128, "byte_budget": 1 << 20}
    values[field] = value
    with pytest.raises(error, match=message):
        SamplerConfig(**values)  # type: ignore[arg-type]


def test_smallest_budget_holds_one_full_record() -> None:
    sampler = ring(snap_length=128, byte_budget=MIN_BUDGET)
    sampler.offer(b"a" * 500, timestamp_ns=T0 * NS)
    sampler.offer(b"b" * 500, timestamp_ns=T0 * NS + 1)
    stats = sampler.stats()
    assert (stats.held_records, stats.held_bytes, stats.evicted_for_budget) == (1, MIN_BUDGET, 1)


def test_configs_are_frozen() -> None:
    config = SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20)
    with pytest.raises(AttributeError):
        config.sample_rate = 2  # type: ignore[misc]


def test_record_overhead_covers_what_cpython_spends_per_record() -> None:
    """The accounting is a bound on the real memory: allocations per record <= its charged cost."""
    snap = 200
    sampler = ring(snap_length=snap, byte_budget=1 << 30)
    count = 20_000
    frame = b"f" * 1500  # longer than snap: every record holds its own truncated copy
    base = T0 * NS + 10**12  # timestamps of the real size (two-digit CPython ints)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            sampler.offer(frame, timestamp_ns=base + i)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = sampler.stats()
    assert stats.held_records == count
    assert used <= stats.held_bytes


def test_query_results_write_to_a_pcap_with_their_original_lengths(tmp_path: Path) -> None:
    sampler = ring(snap_length=64)
    frames = [udp_frame(payload=n) for n in (5, 100, 300)]
    for i, frame in enumerate(frames):
        sampler.offer(frame, timestamp_ns=(T0 + i) * NS + 123)
    held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=10)
    path = tmp_path / "sample.pcap"
    with PcapWriter(path=path, snaplen=64) as writer:
        for packet in held:
            seconds, nanoseconds = divmod(packet.timestamp_ns, NS)
            writer.write(seconds, nanoseconds, packet.data, packet.original_length)
    records = list(iter_pcap_records(path))
    assert [r.timestamp_ns for r in records] == [(T0 + i) * NS + 123 for i in range(3)]
    assert [r.original_length for r in records] == [len(f) for f in frames]
    assert [r.data for r in records] == [f[:64] for f in frames]


# --- original lengths and batches (what the live source hands over) ------------------------------


def test_original_length_is_the_wire_length_of_a_frame_the_kernel_truncated() -> None:
    sampler = ring(snap_length=64)
    sampler.offer(b"k" * 64, timestamp_ns=T0 * NS, original_length=1514)  # truncated by the kernel
    sampler.offer(b"s" * 40, timestamp_ns=T0 * NS + 1, original_length=40)
    sampler.offer(b"l" * 100, timestamp_ns=T0 * NS + 2, original_length=9000)  # and by the ring
    held = sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=10)
    assert [(p.data, p.original_length) for p in held] == [
        (b"k" * 64, 1514),
        (b"s" * 40, 40),
        (b"l" * 64, 9000),
    ]


@pytest.mark.parametrize("original_length", [63, -1, MAX_ORIGINAL_LENGTH + 1])
def test_original_length_shorter_than_the_data_or_beyond_32_bits_is_refused(original_length: int) -> None:
    sampler = ring()
    with pytest.raises(ValueError, match=r"original_length must be in 64\.\.4294967295"):
        sampler.offer(b"x" * 64, timestamp_ns=T0 * NS, original_length=original_length)
    assert sampler.stats().offered == 0


def record(index: int, *, length: int = 70, original_length: int | None = None) -> RecordTuple:
    """A frame as the live source builds it: a plain tuple, timestamps split as in the kernel."""
    seconds, nanoseconds = divmod(T0 * NS + index * 1000, NS)
    data = index.to_bytes(4, "big") * (length // 4 + 1)
    data = data[:length]
    return (seconds, nanoseconds, data, original_length or length + index, 3)


def held_and_stats(sampler: SampleRing) -> tuple[list[SampledPacket], SamplerStats]:
    return sampler.query(since_ns=0, until_ns=2**63, accept=accept_all, limit=10**6), sampler.stats()


@settings(max_examples=200, deadline=None)
@given(
    sample_rate=st.integers(1, 7),
    batch_sizes=st.lists(st.integers(0, 40), max_size=12),
    single_every=st.integers(0, 4),
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=10),
    extra_budget=st.integers(0, 3000),
)
def test_offer_batch_is_the_same_as_offering_one_by_one(
    sample_rate: int, batch_sizes: list[int], single_every: int, lengths: list[int], extra_budget: int
) -> None:
    """Same records (data, original length, timestamp), same counters, budget and all; batches
    mixed with single offers keep one numbering."""
    budget = 100 + RECORD_OVERHEAD_BYTES + extra_budget
    batched = ring(sample_rate=sample_rate, snap_length=100, byte_budget=budget)
    single = ring(sample_rate=sample_rate, snap_length=100, byte_budget=budget)
    index = 0
    for batch_number, size in enumerate(batch_sizes):
        frames = [record(index + i, length=lengths[(index + i) % len(lengths)]) for i in range(size)]
        index += size
        stored = batched.offer_batch(frames)
        assert stored == sum(
            single.offer(data, timestamp_ns=seconds * NS + nanoseconds, original_length=original_length)
            for seconds, nanoseconds, data, original_length, _ in frames
        )
        if single_every and batch_number % single_every == 0:  # a single offer between batches
            seconds, nanoseconds, data, original_length, _ = record(index)
            index += 1
            for sampler in (batched, single):
                sampler.offer(data, timestamp_ns=seconds * NS + nanoseconds, original_length=original_length)
        assert held_and_stats(batched) == held_and_stats(single)
    _, stats = held_and_stats(batched)
    assert stats.offered == index
    assert stats.sampled == len(range(0, index, sample_rate))
    assert stats.held_bytes <= budget


def test_offer_batch_picks_every_nth_across_batch_boundaries() -> None:
    sampler = ring(sample_rate=4)
    assert sampler.offer_batch([record(i) for i in range(6)]) == 2  # 0, 4
    assert sampler.offer_batch([record(i) for i in range(6, 7)]) == 0
    assert sampler.offer_batch([]) == 0
    assert sampler.offer_batch([record(i) for i in range(7, 17)]) == 3  # 8, 12, 16
    held, stats = held_and_stats(sampler)
    assert [int.from_bytes(p.data[:4], "big") for p in held] == [0, 4, 8, 12, 16]
    assert [p.original_length for p in held] == [70 + i for i in (0, 4, 8, 12, 16)]
    assert (stats.offered, stats.sampled, stats.held_records) == (17, 5, 5)


def test_offer_batch_takes_frames_and_keeps_original_lengths_and_truncates() -> None:
    sampler = ring(snap_length=64)
    frames = [
        Record.at(timestamp_ns=T0 * NS + 5, data=b"a" * 64, original_length=1500),
        Record.at(timestamp_ns=T0 * NS + 6, data=b"b" * 200),
    ]
    assert sampler.offer_batch(frames) == 2
    held, _ = held_and_stats(sampler)
    assert [(p.timestamp_ns, p.data, p.original_length) for p in held] == [
        (T0 * NS + 5, b"a" * 64, 1500),
        (T0 * NS + 6, b"b" * 64, 200),
    ]


def test_offer_batch_does_not_look_at_unsampled_frames() -> None:
    """Unsampled frames are skipped by slicing: even objects that are not frames pass untouched."""

    class Untouchable:
        def __iter__(self) -> None:
            raise AssertionError("an unsampled frame was unpacked")

    sampler = ring(sample_rate=3)
    frames: list[object] = [Untouchable() for _ in range(10)]
    for position in (0, 3, 6, 9):
        frames[position] = record(position)
    assert sampler.offer_batch(frames) == 4  # type: ignore[arg-type]
    assert sampler.stats().offered == 10


def test_offer_batch_refuses_a_bad_sampled_frame_before_changing_anything() -> None:
    sampler = ring(sample_rate=2)
    sampler.offer_batch([record(0)])
    before = held_and_stats(sampler)
    seconds, nanoseconds, data, _, interface = record(2)
    bad = (seconds, nanoseconds, data, len(data) - 1, interface)
    with pytest.raises(ValueError, match="original_length must be in"):
        sampler.offer_batch([record(1), bad, record(3)])
    with pytest.raises(ValueError, match="timestamp_ns must be >= 0"):
        sampler.offer_batch([record(1), (-1, 0, data, len(data), 0)])
    assert held_and_stats(sampler) == before


def test_offer_batch_expires_by_retention_like_offer() -> None:
    clock = FakeClock(T0 + 100)
    config = SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20, retention_seconds=60)
    sampler = SampleRing(config, clock=clock)
    frames = [Record.at(timestamp_ns=(T0 + second) * NS, data=b"r" * 64) for second in (10, 30, 90)]
    assert sampler.offer_batch(frames) == 1  # T0+10 and T0+30 are older than 60 s at T0+100
    stats = sampler.stats()
    assert (stats.sampled, stats.held_records, stats.evicted_for_retention) == (3, 1, 2)
