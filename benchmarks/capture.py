"""The agent's capture engine against ``tcpdump -w`` on the same traffic, and its peak RSS.

    sudo .venv/bin/python benchmarks/capture.py [--quick] [--rates 50k,100k,max] [--packets N]

Two network namespaces (``kpbench-a``, ``kpbench-b``) joined by a veth pair (``kpbv0``/``kpbv1``,
198.18.250.0/24). trafgen sends bursts of one UDP frame (to port 9) from ``kpbench-a``; in
``kpbench-b``, side by side on the same traffic:

- the agent's engine, in a subprocess: what ``kpcap_agent.agent.capture`` does minus the Kubernetes
  reporting (``open_live_source`` with the filter's BPF expression, ``PcapWriter``, ``run_capture``
  with ``compile_matcher`` as the userspace check), on every interface but ``lo`` as the agent by
  default; it prints a JSON result with its packets, kernel drops and peak RSS;
- ``tcpdump -i kpbv1 -w FILE -B 32768`` with the same expression; its packets are counted in the
  file, its kernel drops read from its exit statistics.

Table 1, per rate: packets sent (trafgen), received by ``kpbv1`` (its rx counter), captured by each.
Verdict OK when the agent has every packet sent wherever tcpdump has every packet sent.
Table 2, memory: the engine alone with byteLimit 1 GB on ~500 MB of 1442-byte frames, with a packet
limit that is never reached (1,000,000, beyond the spec's maximum) and with the spec's 10000.
Target: the agent loses no packet at any rate where tcpdump loses none; peak RSS < 150 MB.

Root needed (namespaces, AF_PACKET). The namespaces are deleted at the end, also on failure, and
stale ones of an interrupted run are deleted at start. 2 CPUs: trafgen, the engine and tcpdump
compete for them, as they would on a busy node.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from benchmarks.flood import FloodNet, run, trafgen_sent, write_trafgen_config

NET = FloodNet(
    sender_netns="kpbench-a", sender_link="kpbv0", sender_address="198.18.250.1",
    receiver_netns="kpbench-b", receiver_link="kpbv1", receiver_address="198.18.250.2",
)  # fmt: skip
DESTINATION_PORT = 9  # discard
RSS_TARGET_MB = 150.0
BYTE_LIMIT = 1_000_000_000
SPEC_MAX_PACKETS = 10_000
PEAK_WINDOW_NS = 10_000_000
STRESS_PACKETS = 1_000_000
DEFAULT_RATES = "50k,100k,200k,300k,400k,max"
DEFAULT_LARGE_RATES = "20k,50k,100k,max"


def _capture_filter() -> Any:
    from kpcap.model import CaptureFilter

    return CaptureFilter(protocol=17, destination_port=DESTINATION_PORT)


# --- the engine runner (runs inside the receiving namespace) -------------------------------------


def engine_main(argv: Sequence[str]) -> None:
    """``capture.py engine``: one capture, as the agent runs it; JSON lines on stdout.

    Prints ``{"ready": ...}`` once the socket is open, then the result when the capture ends: at a
    limit, on SIGTERM, or once told ``drain`` on stdin and no packet arrived for 0.5 s.
    """
    from kpcap.filters import bpf_expression, compile_matcher
    from kpcap.pcap import PcapWriter
    from kpcap_agent.afpacket import open_live_source
    from kpcap_agent.capture import CaptureLimits, run_capture

    parser = argparse.ArgumentParser(prog="capture.py engine")
    parser.add_argument("--pcap", type=Path, required=True)
    parser.add_argument("--packet-limit", type=int, required=True)
    parser.add_argument("--byte-limit", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args(argv)

    capture_filter = _capture_filter()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signal, _frame: stop.set())
    with (
        open_live_source(filter_expression=bpf_expression(capture_filter)) as source,
        PcapWriter(path=args.pcap) as writer,
    ):
        ready_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"ready": True, "interfaces": source.interfaces}), flush=True)

        def drain_when_told() -> None:
            # Like the agent's progress reporter, a thread that reads the writer's counter.
            sys.stdin.readline()  # "drain", or EOF if the parent went away
            last = -1
            while not stop.is_set() and writer.packets != last:
                last = writer.packets
                stop.wait(0.5)
            stop.set()

        threading.Thread(target=drain_when_told, daemon=True).start()
        result = run_capture(
            source=source,
            writer=writer,
            limits=CaptureLimits(
                packet_limit=args.packet_limit, time_limit=args.time_limit, byte_limit=args.byte_limit
            ),
            accept=compile_matcher(capture_filter),
            stop_event=stop,
        )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "packets": result.packets,
                "bytes": result.bytes,
                "kernel_drops": result.kernel_drops,
                "rejected": result.rejected,
                "reason": str(result.reason),
                "duration_seconds": result.duration_seconds,
                "ready_rss_kib": ready_rss,
                "peak_rss_kib": peak_rss,
            }
        ),
        flush=True,
    )


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sent:
    packets: int
    cpu_seconds: float  # trafgen's CPU time, as it reports it


def _trafgen(*, config: Path, count: int, rate: int | None) -> Sent:
    output = run(*NET.trafgen_argv(config=config, count=count, rate=rate))
    sent = trafgen_sent(output)
    timing = re.search(r"(\d+) sec, (\d+) usec on CPU", output)
    cpu_seconds = int(timing.group(1)) + int(timing.group(2)) / 1e6 if timing else float("nan")
    return Sent(packets=sent if sent is not None else count, cpu_seconds=cpu_seconds)


class Engine:
    """The engine runner as a subprocess in the receiving namespace."""

    def __init__(self, *, pcap: Path, packet_limit: int, byte_limit: int | None) -> None:
        argv = NET.in_receiver(
            sys.executable, str(Path(__file__).resolve()),
            "engine", "--pcap", str(pcap), "--packet-limit", str(packet_limit),
        )  # fmt: skip
        if byte_limit is not None:
            argv += ["--byte-limit", str(byte_limit)]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise RuntimeError(
                f"engine did not start: {self.process.stderr.read() if self.process.stderr else ''}"
            )
        self.ready = json.loads(line)

    def finish(self, *, timeout: float = 120) -> dict[str, Any]:
        """Tell it to drain what is queued, then wait for its result."""
        try:
            stdout, stderr = self.process.communicate("drain\n", timeout=timeout)
        except BrokenPipeError:  # already ended at a limit
            stdout, stderr = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0 or not stdout.strip():
            raise RuntimeError(f"engine failed ({self.process.returncode}): {stderr}")
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Tcpdump:
    """``tcpdump -w`` in the receiving namespace, on the receiver's veth end."""

    def __init__(self, *, pcap: Path, expression: str) -> None:
        argv = NET.in_receiver(
            "tcpdump", "-i", NET.receiver_link, "-w", str(pcap), "-B", "32768", "-n", expression
        )
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        self.stderr = [self.process.stderr.readline()]
        if "listening on" not in self.stderr[0]:
            self.process.wait(timeout=10)
            raise RuntimeError(f"tcpdump did not start: {self.stderr[0]}{self.process.stderr.read()}")
        self.pcap = pcap

    def finish(self) -> tuple[int, int | None, float, float]:
        """Stop it (SIGINT, as ^C); returns the packets in its file, its kernel drops and the
        packets' average and peak (10 ms) arrival rates, from the timestamps in its file."""
        from kpcap.pcap import iter_pcap_records

        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=60)
        dropped = re.search(r"(\d+) packets? dropped by kernel", stderr)
        packets, first, last = 0, 0, 0
        per_window: Counter[int] = Counter()
        for record in iter_pcap_records(self.pcap):
            first = first or record.timestamp_ns
            last = record.timestamp_ns
            per_window[record.timestamp_ns // PEAK_WINDOW_NS] += 1
            packets += 1
        rate = (packets - 1) / ((last - first) / 1e9) if last > first else float("nan")
        peak = max(per_window.values(), default=0) * 1e9 / PEAK_WINDOW_NS
        return packets, int(dropped.group(1)) if dropped else None, rate, peak

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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

    @property
    def verdict(self) -> str:
        agent_complete = self.agent["packets"] == self.sent.packets
        if self.tcpdump_packets == self.sent.packets:
            return "OK" if agent_complete else "**LOSS**"
        if agent_complete:
            return "OK (tcpdump lost some)"
        return "n/a (tcpdump lost too)"


def _rate_run(*, label: str, rate: int | None, count: int, config: Path, work: Path) -> RateRow:
    from kpcap.filters import bpf_expression

    agent_pcap, tcpdump_pcap = work / f"agent-{label}.pcap", work / f"tcpdump-{label}.pcap"
    engine = tcpdump = None
    try:
        engine = Engine(pcap=agent_pcap, packet_limit=STRESS_PACKETS * 10, byte_limit=None)
        tcpdump = Tcpdump(pcap=tcpdump_pcap, expression=bpf_expression(_capture_filter()))
        received_before, dropped_before = NET.receiver_rx()
        sent = _trafgen(config=config, count=count, rate=rate)
        agent = engine.finish()
        time.sleep(0.5)  # tcpdump (C) is not behind the engine; give it a moment all the same
        tcpdump_packets, tcpdump_drops, arrival_rate, peak_rate = tcpdump.finish()
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
        sent = _trafgen(config=config, count=count, rate=rate)
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


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["engine"]:
        engine_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer packets: a smoke run (~30 s)")
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
    parser.add_argument("--skip-memory", action="store_true", help="only the rate tables")
    args = parser.parse_args(argv)
    count = args.packets or (30_000 if args.quick else 300_000)
    large_count = args.large_packets or (15_000 if args.quick else 100_000)
    memory_mb = args.memory_mb or (60 if args.quick else 500)
    [(memory_rate_label, memory_rate)] = _parse_rates(args.memory_rate)

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
            tables: list[tuple[str, list[RateRow]]] = []
            for frame, config, rates, packets in (
                (small, small_config, args.rates, count),
                (large, large_config, args.large_rates, large_count),
            ):
                rows = []
                for label, rate in _parse_rates(rates):
                    row = _rate_run(label=label, rate=rate, count=packets, config=config, work=work)
                    progress = f"{len(frame)} B at {label}: sent {row.sent.packets}"
                    print(
                        f"  {progress}, agent {row.agent['packets']}, tcpdump {row.tcpdump_packets}",
                        file=sys.stderr,
                    )
                    rows.append(row)
                if rows:
                    title = f"{len(frame)}-byte UDP frames, {packets:,} per rate"
                    tables.append((title, rows))
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

    for title, rows in tables:
        print(f"\n### Capture: agent engine vs tcpdump -w, {title}\n")
        print_rate_table(rows)
    if memory_rows:
        print(f"\n### Memory: agent engine alone, byteLimit {BYTE_LIMIT:,}, {memory_rate_label} pps\n")
        print_memory_table(memory_rows, frame_length=len(large))
    failed = any(row.verdict == "**LOSS**" for _, rows in tables for row in rows) or any(
        row.peak_mb >= RSS_TARGET_MB for row in memory_rows
    )
    print(f"\nTarget {'met' if not failed else 'NOT met'}: no loss where tcpdump loses none; RSS < 150 MB.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
