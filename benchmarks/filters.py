"""Per-frame cost of the agent's userspace filter check: ``matches`` (the reference) against the
predicate from ``compile_matcher``, side by side in one run.

    .venv/bin/python benchmarks/filters.py [--number N] [--repeat R]

Frames are built once with scapy. Each cell is the best of R runs of N calls, in ns per frame
(the call included, the timing loop not).
Target: the compiled check on an untagged IPv4 UDP frame with a ``dst port`` filter <= 800 ns.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import timeit
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from kpcap.filters import bpf_expression, compile_matcher, matches
from kpcap.model import CaptureFilter

TARGET_NS = 800.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    capture_filter: CaptureFilter
    frame: bytes


def _cases() -> list[Case]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether

    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    dns_query = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x07example\x03com\x00\x00\x01\x00\x01"
    ipv4_udp = bytes(
        ether / IP(src="10.0.0.1", dst="10.96.0.10", flags="DF") / UDP(sport=41000, dport=53) / dns_query
    )
    ipv4_tcp = bytes(
        ether
        / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF")
        / TCP(sport=443, dport=51000, flags="PA")
        / (b"x" * 200)
    )
    ipv6_tcp = bytes(
        ether
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / TCP(sport=51000, dport=443, flags="PA")
        / (b"x" * 200)
    )
    tagged_udp = bytes(
        ether
        / Dot1Q(vlan=100)
        / IP(src="10.0.0.1", dst="10.96.0.10")
        / UDP(sport=41000, dport=53)
        / dns_query
    )
    return [
        Case(name="empty filter, IPv4 UDP", capture_filter=CaptureFilter(), frame=ipv4_udp),
        Case(name="dst port 53, IPv4 UDP", capture_filter=CaptureFilter(destination_port=53), frame=ipv4_udp),
        Case(
            name="src addr + proto, IPv4 TCP",
            capture_filter=CaptureFilter(source_address=ipaddress.ip_address("10.0.0.1"), protocol=6),
            frame=ipv4_tcp,
        ),
        Case(
            name="IPv6 dst addr, IPv6 TCP",
            capture_filter=CaptureFilter(destination_address=ipaddress.ip_address("2001:db8::2")),
            frame=ipv6_tcp,
        ),
        Case(
            name="dst port 53, 802.1Q IPv4 UDP",
            capture_filter=CaptureFilter(destination_port=53),
            frame=tagged_udp,
        ),
        Case(
            name="dst port 53, IPv4 TCP (no match)",
            capture_filter=CaptureFilter(destination_port=53),
            frame=ipv4_tcp,
        ),
    ]


def _ns_per_call(statement: str, namespace: dict[str, object], *, number: int, repeat: int) -> float:
    """A statement string (not a lambda) so that only the call under test is timed."""
    return min(timeit.repeat(statement, globals=namespace, number=number, repeat=repeat)) / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per cell (the best is kept)")
    args = parser.parse_args()

    rows = []
    for case in _cases():
        capture_filter, frame = case.capture_filter, case.frame
        matcher = compile_matcher(capture_filter)
        verdict = matches(capture_filter, frame)
        assert matcher(frame) is verdict, case.name
        namespace: dict[str, object] = {
            "matches": matches,
            "matcher": matcher,
            "capture_filter": capture_filter,
            "frame": frame,
        }
        reference = _ns_per_call(
            "matches(capture_filter, frame)", namespace, number=args.number, repeat=args.repeat
        )
        compiled = _ns_per_call("matcher(frame)", namespace, number=args.number, repeat=args.repeat)
        rows.append((case, verdict, reference, compiled))

    print(f"Python {sys.version.split()[0]}, best of {args.repeat} x {args.number:,} calls, ns/frame")
    header = f"{'case':<34} {'frame':>5} {'match':>5} {'matches':>9} {'compiled':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for case, verdict, reference, compiled in rows:
        print(
            f"{case.name:<34} {len(case.frame):>5} {verdict!s:>5} {reference:>9.0f} {compiled:>9.0f}"
            f" {reference / compiled:>7.1f}x"
        )
    print()
    for case, _, _, _ in rows:
        print(
            f"{case.name:<34} {bpf_expression(case.capture_filter).split(' or (vlan')[0] or '(every frame)'}"
        )
    target_case = rows[1]
    within = target_case[3] <= TARGET_NS
    print(f"\ntarget: {target_case[0].name} compiled {target_case[3]:.0f} ns <= {TARGET_NS:.0f} ns: {within}")
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
