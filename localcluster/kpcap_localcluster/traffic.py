"""Traffic between simulated nodes: a UDP sender and a raw-socket listener, run inside a node's namespace.

    python -m kpcap_localcluster.traffic send --dst 198.18.1.12 --port 9999 --count 10 --payload X
    python -m kpcap_localcluster.traffic listen --seconds 5 --marker X

``listen`` opens an AF_PACKET socket (what a capture agent sees, before any IP processing) and
prints one JSON line per frame whose bytes contain the marker, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time

ETH_P_ALL = 0x0003


def send_udp(
    *, dst: str, port: int, count: int, payload: bytes, src_port: int = 0, interval: float = 0.0
) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if src_port:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))  # noqa: S104
        for _ in range(count):
            sock.sendto(payload, (dst, port))
            if interval:
                time.sleep(interval)
    return count


def listen(*, seconds: float, marker: bytes, ready_file: str | None = None) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        if ready_file:
            with open(ready_file, "w") as ready:  # noqa: PTH123
                ready.write("ready\n")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                break
            frame, address = sock.recvfrom(65535)
            if marker in frame:
                seen.append({"interface": address[0], "packet_type": address[2], "length": len(frame)})
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(prog="kpcap-traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send")
    send.add_argument("--dst", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--src-port", type=int, default=0)
    send.add_argument("--count", type=int, default=1)
    send.add_argument("--payload", default="kpcap")
    send.add_argument("--interval", type=float, default=0.0)
    lis = sub.add_parser("listen")
    lis.add_argument("--seconds", type=float, default=5.0)
    lis.add_argument("--marker", required=True)
    lis.add_argument("--ready-file")
    args = parser.parse_args()
    if args.command == "send":
        sent = send_udp(
            dst=args.dst,
            port=args.port,
            count=args.count,
            payload=args.payload.encode(),
            src_port=args.src_port,
            interval=args.interval,
        )
        print(json.dumps({"sent": sent}))
    else:
        seen = listen(seconds=args.seconds, marker=args.marker.encode(), ready_file=args.ready_file)
        for frame in seen:
            print(json.dumps(frame))
        print(json.dumps({"matched": len(seen)}))


if __name__ == "__main__":
    main()
