"""The agent's capture engine against ``tcpdump -w`` on the same traffic, and its peak RSS.

    sudo .venv/bin/python benchmarks/capture.py [--quick] [--rates 50k,100k,max] [--packets N]

Two network namespaces (``kpbench-a``, ``kpbench-b``) joined by a veth pair (``kpbv0``/``kpbv1``,
198.18.250.0/24). trafgen sends one UDP frame (to port 9) over and over from ``kpbench-a``; in
``kpbench-b``, side by side on the same traffic (:mod:`benchmarks.capture_processes`):

- the agent's engine, in a subprocess: what ``kpcap_agent.agent.capture`` does minus the Kubernetes
  reporting (``open_live_source`` with the filter's BPF expression, ``PcapWriter``, ``run_capture``),
  on every interface but ``lo`` as the agent by default; it prints its packets, kernel drops and
  peak RSS;
- ``tcpdump -i kpbv1 -w FILE -B <the agent's ring size>`` with the same expression: the same kernel
  buffer as the agent; its packets are counted in the file, its kernel drops read from its exit
  statistics.

Sustained table (the default run starts with it): the sender's maximum rate for ``--seconds`` (12)
with large (1442-byte) frames and with small (60-byte) ones, three runs each; per run the ratio
agent captured / tcpdump captured. Target: >= 1.00 in every run.
Burst tables, per rate: N frames (trafgen's ``--rate``); verdict OK when the agent has every packet
sent wherever tcpdump has every packet sent.
Memory table: the engine alone with byteLimit 1 GB on ~500 MB of 1442-byte frames, with a packet
limit that is never reached (1,000,000, beyond the spec's maximum) and with the spec's 10000.
Target: peak RSS < 150 MB.

Root needed (namespaces, AF_PACKET). The namespaces are deleted at the end, also on failure, and
stale ones of an interrupted run are deleted at start. 2 CPUs: trafgen, the engine and tcpdump
compete for them, as they would on a busy node.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from benchmarks.capture_processes import (
    DESTINATION_PORT,
    NET,
    Engine,
    Sent,
    Tcpdump,
    capture_filter,
    trafgen,
    trafgen_for,
)
from benchmarks.flood import write_trafgen_config

RSS_TARGET_MB = 150.0
BYTE_LIMIT = 1_000_000_000
SPEC_MAX_PACKETS = 10_000
STRESS_PACKETS = 1_000_000
DEFAULT_RATES = "50k,100k,200k,300k,400k,max"
DEFAULT_LARGE_RATES = "20k,50k,100k,max"
SUSTAINED_RUNS = 3
SUSTAINED_SECONDS = 12.0


def agent_ring_kib() -> int:
    """The agent's kernel buffer: its TPACKET_V3 ring (the default geometry), in KiB."""
    from kpcap_agent.afpacket import RingGeometry

    geometry = RingGeometry()
    return geometry.block_bytes * geometry.block_count // 1024


@dataclass(frozen=True, kw_only=True)
class RateRow:
    label: str
    sent: Sent
    received: int
    veth_dropped: int
    agent: dict[str, Any]
    tcpdump_packets: int
    tcpdump_drops: int | None
    arrival_rate: float  # pps, from the first and last timestamps of tcpdump's file
    peak_rate: float  # pps over the busiest 10 ms window of tcpdump's file
    tcpdump_cpu_seconds: float

    @property
    def verdict(self) -> str:
        agent_complete = self.agent["packets"] == self.sent.packets
        if self.tcpdump_packets == self.sent.packets:
            return "OK" if agent_complete else "**LOSS**"
        if agent_complete:
            return "OK (tcpdump lost some)"
        return "n/a (tcpdump lost too)"

    @property
    def ratio(self) -> float:
        """Agent captured / tcpdump captured (the sustained target: >= 1.00)."""
        return self.agent["packets"] / self.tcpdump_packets if self.tcpdump_packets else float("inf")


def _side_by_side(*, label: str, send: Callable[[], Sent], work: Path) -> RateRow:
    """The engine and tcpdump (same kernel buffer) on the traffic ``send`` makes."""
    from kpcap.filters import bpf_expression

    agent_pcap, tcpdump_pcap = work / f"agent-{label}.pcap", work / f"tcpdump-{label}.pcap"
    engine = tcpdump = None
    try:
        engine = Engine(pcap=agent_pcap, packet_limit=STRESS_PACKETS * 100, byte_limit=None)
        tcpdump = Tcpdump(
            pcap=tcpdump_pcap, expression=bpf_expression(capture_filter()), buffer_kib=agent_ring_kib()
        )
        received_before, dropped_before = NET.receiver_rx()
        sent = send()
        agent = engine.finish()
        time.sleep(0.5)  # tcpdump (C) is not behind the engine; give it a moment all the same
        tcpdump_packets, tcpdump_drops, arrival_rate, peak_rate = tcpdump.finish()
        tcpdump_cpu_seconds = tcpdump.cpu_seconds
        received_after, dropped_after = NET.receiver_rx()
    finally:
        for process in (engine, tcpdump):
            if process is not None:
                process.kill()
        agent_pcap.unlink(missing_ok=True)
        tcpdump_pcap.unlink(missing_ok=True)
    return RateRow(
        label=label,
        sent=sent,
        received=received_after - received_before,
        veth_dropped=dropped_after - dropped_before,
        agent=agent,
        tcpdump_packets=tcpdump_packets,
        tcpdump_drops=tcpdump_drops,
        arrival_rate=arrival_rate,
        peak_rate=peak_rate,
        tcpdump_cpu_seconds=tcpdump_cpu_seconds,
    )


@dataclass(frozen=True, kw_only=True)
class MemoryRow:
    packet_limit: int
    sent: Sent
    agent: dict[str, Any]

    @property
    def peak_mb(self) -> float:
        return float(self.agent["peak_rss_kib"]) / 1024


def _memory_run(*, packet_limit: int, count: int, rate: int | None, config: Path, work: Path) -> MemoryRow:
    agent_pcap = work / f"agent-memory-{packet_limit}.pcap"
    engine = None
    try:
        engine = Engine(pcap=agent_pcap, packet_limit=packet_limit, byte_limit=BYTE_LIMIT)
        sent = trafgen(config=config, count=count, rate=rate)
        agent = engine.finish(timeout=300)
    finally:
        if engine is not None:
            engine.kill()
        agent_pcap.unlink(missing_ok=True)
    return MemoryRow(packet_limit=packet_limit, sent=sent, agent=agent)


def _parse_rates(text: str) -> list[tuple[str, int | None]]:
    rates: list[tuple[str, int | None]] = []
    for item in filter(None, text.split(",")):
        label = item.strip().lower()
        if label == "max":
            rates.append(("max", None))
        elif label.endswith("k"):
            rates.append((label, int(float(label[:-1]) * 1000)))
        else:
            rates.append((label, int(label)))
    return rates


def _drops(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def print_rate_table(rows: Sequence[RateRow]) -> None:
    print(
        "| rate asked | pps on the wire: mean / 10 ms peak | sent | received by veth | agent captured "
        "| agent kernel drops | tcpdump captured | tcpdump kernel drops | verdict |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for row in rows:
        received = f"{row.received:,}" + (f" ({row.veth_dropped:,} dropped)" if row.veth_dropped else "")
        print(
            f"| {row.label} | {row.arrival_rate:,.0f} / {row.peak_rate:,.0f} "
            f"| {row.sent.packets:,} | {received} "
            f"| {row.agent['packets']:,} | {row.agent['kernel_drops']:,} "
            f"| {row.tcpdump_packets:,} | {_drops(row.tcpdump_drops)} | {row.verdict} |"
        )


def print_memory_table(rows: Sequence[MemoryRow], *, frame_length: int) -> None:
    print(
        f"| packetLimit | byteLimit | sent ({frame_length}-byte frames) | captured | packet data written "
        "| kernel drops | stopped by | RSS when open | peak RSS | < 150 MB |"
    )
    print("|--:|--:|--:|--:|--:|--:|---|--:|--:|---|")
    for row in rows:
        agent = row.agent
        print(
            f"| {row.packet_limit:,} | {BYTE_LIMIT:,} | {row.sent.packets:,} | {agent['packets']:,} "
            f"| {agent['bytes'] / 1e6:,.1f} MB | {agent['kernel_drops']:,} | {agent['reason']} "
            f"| {agent['ready_rss_kib'] / 1024:.1f} MB | {row.peak_mb:.1f} MB "
            f"| {'OK' if row.peak_mb < RSS_TARGET_MB else '**OVER**'} |"
        )


def print_sustained_table(rows: Sequence[tuple[int, RateRow]], *, seconds: float) -> None:
    buffer = f"{agent_ring_kib() // 1024} MiB"
    print(
        "| frame | run | pps on the wire (mean) | sent | received by veth | agent captured "
        "| agent kernel drops | tcpdump captured | tcpdump kernel drops | agent / tcpdump "
        "| CPU s: agent / tcpdump |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for frame_length, row in rows:
        print(
            f"| {frame_length} B | {row.label} | {row.arrival_rate:,.0f} | {row.sent.packets:,} "
            f"| {row.received:,} | {row.agent['packets']:,} | {row.agent['kernel_drops']:,} "
            f"| {row.tcpdump_packets:,} | {_drops(row.tcpdump_drops)} "
            f"| {row.ratio:.3f}{'' if row.ratio >= 1 else ' **BELOW**'} "
            f"| {row.agent['cpu_seconds']:.2f} / {row.tcpdump_cpu_seconds:.2f} |"
        )
    print(f"\nKernel buffers: the agent's ring {buffer}, tcpdump -B {agent_ring_kib()} ({buffer}).")
    print(f"Each run: {seconds:g} s at the sender's maximum.")


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer packets, one short sustained run each")
    parser.add_argument(
        "--sustained-runs", type=int, default=None, help=f"runs per frame (default {SUSTAINED_RUNS}, quick 1)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help=f"one run (default {SUSTAINED_SECONDS:g}, quick 4)"
    )
    parser.add_argument(
        "--rates", default=DEFAULT_RATES, help=f"small frames, comma-separated pps (default {DEFAULT_RATES})"
    )
    parser.add_argument(
        "--packets", type=int, default=None, help="small frames per rate (default 300000, quick 30000)"
    )
    parser.add_argument(
        "--large-rates",
        default=DEFAULT_LARGE_RATES,
        help=f"1442-byte frames, comma-separated pps, '' for none (default {DEFAULT_LARGE_RATES})",
    )
    parser.add_argument(
        "--large-packets", type=int, default=None, help="large frames per rate (default 100000, quick 15000)"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=None, help="traffic of the memory run in MB (default 500, quick 60)"
    )
    parser.add_argument(
        "--memory-rate", default="25k", help="rate of the memory runs' large frames (default 25k)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="no memory table")
    parser.add_argument("--skip-sustained", action="store_true", help="no sustained table")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = _arguments(argv)
    count = args.packets or (30_000 if args.quick else 300_000)
    large_count = args.large_packets or (15_000 if args.quick else 100_000)
    memory_mb = args.memory_mb or (60 if args.quick else 500)
    runs = args.sustained_runs or (1 if args.quick else SUSTAINED_RUNS)
    sustained_runs = 0 if args.skip_sustained else runs
    seconds = args.seconds or (4.0 if args.quick else SUSTAINED_SECONDS)
    [(memory_rate_label, memory_rate)] = _parse_rates(args.memory_rate)
    load = os.getloadavg()

    NET.delete()  # stale ones of an interrupted run
    try:
        sender_mac, receiver_mac = NET.create()
        with tempfile.TemporaryDirectory(prefix="kpcap-bench-") as directory:
            work = Path(directory)
            small, large = (
                NET.udp_frame(
                    source_mac=sender_mac,
                    destination_mac=receiver_mac,
                    payload_length=payload_length,
                    destination_port=DESTINATION_PORT,
                )
                for payload_length in (18, 1400)
            )
            small_config = write_trafgen_config(work / "small.cfg", small)
            large_config = write_trafgen_config(work / "large.cfg", large)
            sustained: list[tuple[int, RateRow]] = []
            for frame, config in ((large, large_config), (small, small_config)):
                for run_number in range(1, sustained_runs + 1):
                    row = _side_by_side(
                        label=str(run_number),
                        send=partial(trafgen_for, config=config, seconds=seconds),
                        work=work,
                    )
                    print(
                        f"  sustained {len(frame)} B run {run_number}: agent {row.agent['packets']}, "
                        f"tcpdump {row.tcpdump_packets}, ratio {row.ratio:.3f}",
                        file=sys.stderr,
                    )
                    sustained.append((len(frame), row))
            tables: list[tuple[str, list[RateRow]]] = []
            for frame, config, rates, packets in (
                (small, small_config, args.rates, count),
                (large, large_config, args.large_rates, large_count),
            ):
                rows = []
                for label, rate in _parse_rates(rates):
                    row = _side_by_side(
                        label=label,
                        send=partial(trafgen, config=config, count=packets, rate=rate),
                        work=work,
                    )
                    progress = f"{len(frame)} B at {label}: sent {row.sent.packets}"
                    print(
                        f"  {progress}, agent {row.agent['packets']}, tcpdump {row.tcpdump_packets}",
                        file=sys.stderr,
                    )
                    rows.append(row)
                if rows:
                    tables.append((f"{len(frame)}-byte UDP frames, {packets:,} per rate", rows))
            memory_rows = []
            if not args.skip_memory:
                memory_count = memory_mb * 1_000_000 // len(large)
                for packet_limit, sent_count in (
                    (STRESS_PACKETS, memory_count),
                    (SPEC_MAX_PACKETS, min(memory_count, 3 * SPEC_MAX_PACKETS)),
                ):
                    memory_rows.append(
                        _memory_run(
                            packet_limit=packet_limit,
                            count=sent_count,
                            rate=memory_rate,
                            config=large_config,
                            work=work,
                        )
                    )
    finally:
        NET.delete()

    print(f"\nLoad average before the runs: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min)")
    if sustained:
        print("\n### Sustained: the sender's maximum, agent engine vs tcpdump -w, same kernel buffer\n")
        print_sustained_table(sustained, seconds=seconds)
    for title, rows in tables:
        print(f"\n### Bursts: agent engine vs tcpdump -w (same kernel buffer), {title}\n")
        print_rate_table(rows)
    if memory_rows:
        print(f"\n### Memory: agent engine alone, byteLimit {BYTE_LIMIT:,}, {memory_rate_label} pps\n")
        print_memory_table(memory_rows, frame_length=len(large))
    failed = (
        any(row.verdict == "**LOSS**" for _, rows in tables for row in rows)
        or any(row.peak_mb >= RSS_TARGET_MB for row in memory_rows)
        or any(row.ratio < 1 for _, row in sustained)
    )
    print(
        f"\nTarget {'met' if not failed else 'NOT met'}: sustained agent/tcpdump >= 1.00 in every run; "
        "no burst loss where tcpdump loses none; RSS < 150 MB."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
