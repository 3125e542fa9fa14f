"""What the benchmarks that flood a link share: two network namespaces joined by a veth pair, UDP
frames from the sender's end to the receiver's, and trafgen (netsniff-ng) to send them.

A script run as ``python benchmarks/NAME.py`` imports it as ``benchmarks.flood`` once it has put the
repository's root on ``sys.path`` (as mypy, with ``explicit_package_bases``, names it too). Each
benchmark names its own namespaces, links and addresses, so that two can run side by side.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


def run(*argv: str) -> str:
    """Runs a command to its end; its stdout. Raises when it fails."""
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True, kw_only=True)
class FloodNet:
    """A sender's and a receiver's network namespace, joined by a veth pair (addresses in a /24)."""

    sender_netns: str
    receiver_netns: str
    sender_link: str
    receiver_link: str
    sender_address: str
    receiver_address: str

    def delete(self) -> None:
        """Deletes both namespaces (and so the veth pair), if they exist."""
        for netns in (self.sender_netns, self.receiver_netns):  # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)

    def create(self) -> tuple[str, str]:
        """Creates the namespaces and the veth pair, addressed and up; returns the MAC addresses of the
        sender's and the receiver's veth ends."""
        for netns in (self.sender_netns, self.receiver_netns):
            run("ip", "netns", "add", netns)
            run("ip", "-n", netns, "link", "set", "lo", "up")
        run(
            "ip", "-n", self.sender_netns, "link", "add", self.sender_link, "type", "veth",
            "peer", "name", self.receiver_link, "netns", self.receiver_netns,
        )  # fmt: skip
        macs = []
        for netns, link, address in (
            (self.sender_netns, self.sender_link, self.sender_address),
            (self.receiver_netns, self.receiver_link, self.receiver_address),
        ):
            run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", link)
            run("ip", "-n", netns, "link", "set", link, "up")
            macs.append(json.loads(run("ip", "-n", netns, "-j", "link", "show", "dev", link))[0]["address"])
        return macs[0], macs[1]

    def in_receiver(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` in the receiver's namespace."""
        return ["ip", "netns", "exec", self.receiver_netns, *argv]

    def udp_frame(
        self, *, source_mac: str, destination_mac: str, payload_length: int, destination_port: int = 9
    ) -> bytes:
        """An Ethernet frame of one UDP datagram (zeros as payload) from the sender to the receiver."""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw

        return bytes(
            Ether(src=source_mac, dst=destination_mac)
            / IP(src=self.sender_address, dst=self.receiver_address)
            / UDP(sport=40000, dport=destination_port)
            / Raw(bytes(payload_length))
        )

    def receiver_rx(self) -> tuple[int, int]:
        """(packets, dropped) received by the receiver's veth end so far."""
        link = json.loads(
            run("ip", "-n", self.receiver_netns, "-s", "-j", "link", "show", "dev", self.receiver_link)
        )
        rx = link[0]["stats64"]["rx"]
        return int(rx["packets"]), int(rx["dropped"])

    def trafgen_argv(self, *, config: Path, count: int, rate: int | None = None) -> list[str]:
        """trafgen in the sender's namespace, on its veth end, one CPU: ``count`` frames of ``config``
        (0: until interrupted), at ``rate`` pps (None: full speed)."""
        argv = [
            "ip", "netns", "exec", self.sender_netns, "trafgen", "--dev", self.sender_link,
            "--conf", str(config), "--num", str(count), "--cpus", "1", "--no-sock-mem",
        ]  # fmt: skip
        if rate is not None:
            argv += ["--rate", f"{rate}pps"]
        return argv


def write_trafgen_config(path: Path, *frames: bytes) -> Path:
    """A trafgen configuration that sends ``frames`` in turn."""
    path.write_text("".join("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n" for frame in frames))
    return path


def trafgen_sent(output: str) -> int | None:
    """The packets trafgen says it sent, from its output; None when it does not say."""
    sent = re.search(r"(\d+) packets outgoing", output)
    return int(sent.group(1)) if sent else None
