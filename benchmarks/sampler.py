"""The sampler service under a sustained flood: does its memory stay within the byte budget?

    sudo .venv/bin/python benchmarks/sampler.py [--seconds 25] [--budget 8Mi] [--rate 10] [--snap 128]

Two network namespaces (``kpbench-sa``, ``kpbench-sb``) joined by a veth pair (``kpbsv0``/``kpbsv1``,
198.18.251.0/24). In ``kpbench-sb`` the sampler service runs as a subprocess (``sampler.py
service``): what ``python -m kpcap_agent sample`` runs (``open_sampler_source``, ``SamplerService``)
with a fixed-token authoriser instead of TokenReviews; it prints its ring's stats and kernel drops
as JSON lines every 0.1 s. From ``kpbench-sa`` trafgen floods the link for ``--seconds`` with UDP
frames of 60 and 1442 bytes alternately (at full speed, one CPU). Half-way, one HTTPS query (no
filter, packetLimit 10000, the whole window) is made from inside ``kpbench-sb``.

Measured, all of the service's own process (``ip netns exec`` execs it, so it keeps the PID):

- ``held_bytes`` (the ring's exact accounting) max over the run, against the budget;
- RSS: ``VmRSS`` once ready (interpreter, scapy, the 4 MiB kernel ring mapped), ``VmHWM`` (peak) at
  the end; growth = peak - ready, against the budget;
- bytes written to storage: ``write_bytes`` of ``/proc/PID/io`` from start to end (0 expected:
  nothing but the TLS chain, which goes through a memfd);
- frames sent (trafgen), received by ``kpbsv1``, offered to the ring (already sampled 1 in N by the
  kernel: the ring keeps them all), sampled against the expected received / N (the sampling is
  random, so the count is binomial: a 6-sigma bound is shown), evicted, kernel drops;
- CPU: utime + stime of ``/proc/PID/stat`` from ready to the end.

Exit status 1 when ``held_bytes`` ever exceeded the budget or anything was written to disk.
Root needed (namespaces, AF_PACKET); trafgen (netsniff-ng) on PATH.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from benchmarks.flood import FloodNet, run, trafgen_sent, write_trafgen_config

NET = FloodNet(
    sender_netns="kpbench-sa", sender_link="kpbsv0", sender_address="198.18.251.1",
    receiver_netns="kpbench-sb", receiver_link="kpbsv1", receiver_address="198.18.251.2",
)  # fmt: skip
PORT = 9444
TOKEN = "benchmark-token"  # noqa: S105 -- the benchmark's fixed-token authoriser


# --- the service (runs inside the receiving namespace) -------------------------------------------


def service_main(argv: Sequence[str]) -> None:
    import logging

    from kpcap.envconfig import parse_quantity
    from kpcap_agent.sampler import SamplerConfig
    from kpcap_agent.sampler_auth import Refused
    from kpcap_agent.sampler_service import SamplerService, open_sampler_source
    from kpcap_agent.sampler_settings import SamplerServiceConfig

    parser = argparse.ArgumentParser(prog="sampler.py service")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--snap", type=int, required=True)
    parser.add_argument("--budget", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    class FixedToken:
        def authorise(self, token: str) -> str:
            if token != TOKEN:
                raise Refused(401, "wrong token")
            return "benchmark"

    config = SamplerServiceConfig(
        node_name="benchmark",
        sampler=SamplerConfig(
            sample_rate=args.rate, snap_length=args.snap, byte_budget=parse_quantity(args.budget)
        ),
        client="benchmark",
        host=NET.receiver_address,
        port=PORT,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signal, _frame: stop.set())
    with (
        open_sampler_source(config) as source,
        SamplerService(config=config, source=source, authoriser=FixedToken(), stats_interval=3600) as service,
    ):
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        while not stop.wait(0.1):
            stats = service.ring.stats()
            line = {
                "held_bytes": stats.held_bytes,
                "held_records": stats.held_records,
                "offered": stats.offered,
                "sampled": stats.sampled,
                "evicted_for_budget": stats.evicted_for_budget,
                "kernel_drops": source.kernel_drops(),
            }
            print(json.dumps(line), flush=True)


def query_main(argv: Sequence[str]) -> None:
    """``sampler.py query``: one HTTPS query from inside the receiving namespace; prints JSON."""
    del argv
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the service's self-signed certificate; a benchmark
    body = json.dumps(
        {
            "spec": {"type": "simple", "timeLimit": 60, "packetLimit": 10000},
            "sinceNs": 0,
            "untilNs": time.time_ns(),
        }
    )
    started = time.monotonic()
    connection = http.client.HTTPSConnection(NET.receiver_address, PORT, context=context, timeout=60)
    connection.request("POST", "/v1/samples", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    payload = response.read()
    print(
        json.dumps(
            {
                "status": response.status,
                "bytes": len(payload),
                "held": response.getheader("X-Kpcap-Held-Records"),
                "seconds": time.monotonic() - started,
            }
        )
    )


# --- the orchestrator ---------------------------------------------------------------------------


def _proc(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB), write_bytes and CPU time (utime + stime, clock ticks) of a process."""
    values: dict[str, int] = {}
    # /proc/PID/stat: "pid (comm) state ..."; utime and stime are fields 14 and 15 (1-based).
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    values["cpu_ticks"] = int(fields[11]) + int(fields[12])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("write_bytes", "cancelled_write_bytes"):
            values[name] = int(rest)
    return values


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["service"]:
        service_main(argv[1:])
        return 0
    if argv[:1] == ["query"]:
        query_main(argv[1:])
        return 0
    from kpcap.envconfig import parse_quantity

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=25.0, help="flood duration (default 25)")
    parser.add_argument("--budget", default="8Mi", help="the ring's byte budget (default 8Mi)")
    parser.add_argument("--rate", type=int, default=10, help="keep 1 frame in N (default 10)")
    parser.add_argument("--snap", type=int, default=128, help="snap length (default 128)")
    args = parser.parse_args(argv)
    budget = parse_quantity(args.budget)

    NET.delete()
    service: subprocess.Popen[str] | None = None
    trafgen: subprocess.Popen[str] | None = None
    try:
        sender_mac, receiver_mac = NET.create()
        with tempfile.TemporaryDirectory(prefix="kpcap-bench-sampler-") as directory:
            config = write_trafgen_config(
                Path(directory) / "flood.cfg",
                *(  # 60 and 1442 bytes alternately
                    NET.udp_frame(source_mac=sender_mac, destination_mac=receiver_mac, payload_length=payload)
                    for payload in (18, 1400)
                ),
            )
            service = subprocess.Popen(
                NET.in_receiver(
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "service",
                    "--rate",
                    str(args.rate),
                    "--snap",
                    str(args.snap),
                    "--budget",
                    args.budget,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert service.stdout is not None
            ready_line = service.stdout.readline()
            if not ready_line:
                raise RuntimeError(
                    f"service did not start: {service.stderr.read() if service.stderr else ''}"
                )
            pid = int(json.loads(ready_line)["pid"])
            time.sleep(1.0)  # let start-up settle (threads, TLS) before the baseline
            ready = _proc(pid)
            lines: list[dict[str, Any]] = []

            def read_stats() -> None:
                assert service is not None
                assert service.stdout is not None
                for line in service.stdout:
                    lines.append(json.loads(line))

            reader = threading.Thread(target=read_stats, daemon=True)
            reader.start()
            rx_before, _ = NET.receiver_rx()
            trafgen = subprocess.Popen(
                NET.trafgen_argv(config=config, count=0),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # trafgen's workers are forked: signal the whole group
            )
            started = time.monotonic()
            peak_rss = ready["VmRSS"]
            queried: dict[str, Any] = {}
            timeline: list[str] = []
            while time.monotonic() - started < args.seconds:
                time.sleep(0.2)
                rss = _proc(pid)["VmRSS"]
                peak_rss = max(peak_rss, rss)
                if len(timeline) < (time.monotonic() - started) // 5:
                    timeline.append(f"{rss / 1024:.1f}")
                if not queried and time.monotonic() - started > args.seconds / 2:
                    queried = json.loads(
                        run(*NET.in_receiver(sys.executable, str(Path(__file__).resolve()), "query"))
                    )
            os.killpg(trafgen.pid, signal.SIGINT)
            trafgen_output, _ = trafgen.communicate(timeout=30)
            flood_seconds = time.monotonic() - started
            time.sleep(1.0)  # let the service drain its kernel ring
            end = _proc(pid)
            rx_after, _ = NET.receiver_rx()
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
            reader.join(timeout=5)
    finally:
        for process in (trafgen, service):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        NET.delete()

    sent = trafgen_sent(trafgen_output)
    if sent is None:
        sent = -1
    last = lines[-1]
    held_max = max(line["held_bytes"] for line in lines)
    growth_kib = end["VmHWM"] - ready["VmRSS"]
    cpu_seconds = (end["cpu_ticks"] - ready["cpu_ticks"]) / os.sysconf("SC_CLK_TCK")
    # The sampling is random (each frame kept with probability 1/N, in the kernel): the sampled
    # count is binomial around received / N (kernel drops, frames the ring missed, lower it).
    received = rx_after - rx_before
    expected = received / args.rate
    bound = 6 * math.sqrt(received * (1 / args.rate) * (1 - 1 / args.rate))
    written = end["write_bytes"] - ready["write_bytes"]
    title = f"budget {args.budget} ({budget:,} bytes), 1 in {args.rate}, snap {args.snap}"
    print(f"\n### Sampler under a flood: {title}\n")
    print("| figure | value |")
    print("|---|--:|")
    rows = [
        ("flood duration", f"{flood_seconds:.1f} s"),
        ("frames sent (trafgen, 60 and 1442 bytes alternately)", f"{sent:,}"),
        ("frames received by the veth", f"{received:,}"),
        ("frames offered to the ring", f"{last['offered']:,} ({last['offered'] / flood_seconds:,.0f}/s)"),
        (
            "frames sampled / expected (received / N, 6 sigma)",
            f"{last['sampled']:,} / {expected:,.0f} +- {bound:,.0f} "
            f"({'within' if abs(last['sampled'] - expected) <= bound else 'OUTSIDE'})",
        ),
        ("evicted for the budget", f"{last['evicted_for_budget']:,}"),
        ("kernel drops", f"{last['kernel_drops']:,}"),
        (
            "service CPU (utime + stime, ready to end)",
            f"{cpu_seconds:.1f} s ({100 * cpu_seconds / flood_seconds:.0f}% of a CPU over the flood)",
        ),
        ("held records at the end", f"{last['held_records']:,}"),
        ("held_bytes max / budget", f"{held_max:,} / {budget:,} = {held_max / budget:.4f}"),
        ("RSS when ready", f"{ready['VmRSS'] / 1024:.1f} MiB"),
        ("RSS peak (VmHWM)", f"{end['VmHWM'] / 1024:.1f} MiB (sampled max {peak_rss / 1024:.1f} MiB)"),
        ("RSS every 5 s of the flood", " / ".join(timeline) + " MiB"),
        ("RSS at the end", f"{end['VmRSS'] / 1024:.1f} MiB"),
        (
            "RSS growth / budget",
            f"{growth_kib / 1024:.1f} MiB / {budget / 2**20:.1f} MiB = {growth_kib * 1024 / budget:.2f}",
        ),
        ("bytes written to disk (write_bytes)", f"{written:,}"),
        (
            "query during the flood (no filter, limit 10000)",
            f"HTTP {queried.get('status')}, {queried.get('bytes', 0):,} bytes, "
            f"{queried.get('seconds', float('nan')) * 1000:.0f} ms",
        ),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    failed = held_max > budget or written > 0
    print(f"\nBudget {'EXCEEDED' if held_max > budget else 'respected'}; disk writes {written:,} bytes.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
