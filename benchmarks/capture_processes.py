"""The processes the capture benchmark runs side by side: the agent's engine (this file, run as a
script in the receiving namespace), ``tcpdump -w``, and trafgen.

    ip netns exec kpbench-b python benchmarks/capture_processes.py engine --pcap FILE --packet-limit N

:func:`engine_main` is what ``kpcap_agent.agent.capture`` does minus the Kubernetes reporting, and
prints JSON lines; :class:`Engine` and :class:`Tcpdump` start one each and read their results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from benchmarks.flood import FloodNet, run, trafgen_sent

NET = FloodNet(
    sender_netns="kpbench-a", sender_link="kpbv0", sender_address="198.18.250.1",
    receiver_netns="kpbench-b", receiver_link="kpbv1", receiver_address="198.18.250.2",
)  # fmt: skip
DESTINATION_PORT = 9  # discard
PEAK_WINDOW_NS = 10_000_000


def capture_filter() -> Any:
    from kpcap.model import CaptureFilter

    return CaptureFilter(protocol=17, destination_port=DESTINATION_PORT)


# --- the engine runner (runs inside the receiving namespace) -------------------------------------


def engine_main(argv: Sequence[str]) -> None:
    """``capture_processes.py engine``: one capture, as the agent runs it; JSON lines on stdout.

    Prints ``{"ready": ...}`` once the socket is open, then the result when the capture ends: at a
    limit, on SIGTERM, or once told ``drain`` on stdin and no packet arrived for 0.5 s.
    """
    from kpcap.filters import bpf_expression, compile_matcher
    from kpcap.pcap import PcapWriter
    from kpcap_agent.afpacket import open_live_source
    from kpcap_agent.capture import CaptureLimits, run_capture

    parser = argparse.ArgumentParser(prog="capture_processes.py engine")
    parser.add_argument("--pcap", type=Path, required=True)
    parser.add_argument("--packet-limit", type=int, required=True)
    parser.add_argument("--byte-limit", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args(argv)

    capture_filter_ = capture_filter()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signal, _frame: stop.set())
    with (
        open_live_source(filter_expression=bpf_expression(capture_filter_)) as source,
        PcapWriter(path=args.pcap) as writer,
    ):
        source.recheck_tagged_frames(compile_matcher(capture_filter_))
        ready_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ready_cpu = time.process_time()
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
            accept=None,  # as the agent: the kernel filter, and the source's check of tagged frames
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
                "cpu_seconds": time.process_time() - ready_cpu,
                "cpu_user_system_seconds": _user_system(),
                "capture_thread_cpu_seconds": _thread_cpu(),
                "chunks_direct_and_cached": writer.chunks_written,
            }
        ),
        flush=True,
    )


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sent:
    packets: int
    cpu_seconds: float  # trafgen's CPU time, as it reports it


def _sent(output: str, *, asked: int) -> Sent:
    sent = trafgen_sent(output)
    timing = re.search(r"(\d+) sec, (\d+) usec on CPU", output)
    cpu_seconds = int(timing.group(1)) + int(timing.group(2)) / 1e6 if timing else float("nan")
    return Sent(packets=sent if sent is not None else asked, cpu_seconds=cpu_seconds)


def trafgen(*, config: Path, count: int, rate: int | None) -> Sent:
    """``count`` frames of ``config`` at ``rate`` pps (None: the sender's maximum)."""
    return _sent(run(*NET.trafgen_argv(config=config, count=count, rate=rate)), asked=count)


def trafgen_for(*, config: Path, seconds: float) -> Sent:
    """Frames of ``config`` at the sender's maximum for ``seconds``, then ^C (trafgen's own stop)."""
    process = subprocess.Popen(
        NET.trafgen_argv(config=config, count=0),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: trafgen forks a sender per CPU
    )
    time.sleep(seconds)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    sent = _sent(output, asked=0)
    if trafgen_sent(output) is None:
        raise RuntimeError(f"trafgen did not say what it sent: {output}")
    return sent


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


def _user_system() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _thread_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Tcpdump:
    """``tcpdump -w`` in the receiving namespace, on the receiver's veth end, with a kernel buffer
    of ``buffer_kib`` (``-B``; the benchmark gives it the agent's ring size)."""

    def __init__(self, *, pcap: Path, expression: str, buffer_kib: int) -> None:
        argv = NET.in_receiver(
            "tcpdump", "-i", NET.receiver_link, "-w", str(pcap), "-B", str(buffer_kib), "-n", expression
        )
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        self.stderr = [self.process.stderr.readline()]
        if "listening on" not in self.stderr[0]:
            self.process.wait(timeout=10)
            raise RuntimeError(f"tcpdump did not start: {self.stderr[0]}{self.process.stderr.read()}")
        self.pcap = pcap
        self.cpu_seconds = float("nan")

    def finish(self) -> tuple[int, int | None, float, float]:
        """Stop it (SIGINT, as ^C); returns the packets in its file, its kernel drops and the
        packets' average and peak (10 ms) arrival rates, from the timestamps in its file."""
        from kpcap.pcap import iter_pcap_records

        self.cpu_seconds = _cpu_seconds(self.process.pid)  # `ip netns exec` execs tcpdump: its pid
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


if __name__ == "__main__":
    if sys.argv[1:2] != ["engine"]:
        sys.exit("usage: capture_processes.py engine --pcap FILE --packet-limit N [--byte-limit N]")
    engine_main(sys.argv[2:])
