"""Network namespaces, veths and traffic for the capture engine's tests (root needed; CI runs as root).

Namespaces are named ``kpct-<random>-<role>``, interfaces ``kpct<random><role>``, addresses are in
198.18.200.0/24; everything is deleted in teardown, also when the test or the setup fails.

Code runs inside a namespace with :func:`in_netns`: a dedicated thread calls setns(2), which on
Linux changes the network namespace of the calling thread only; sockets opened in that thread
stay in that namespace whatever thread uses them afterwards.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kpcap.pcap import DEFAULT_SNAPLEN, PcapWriter
from kpcap_agent.afpacket import open_live_source
from kpcap_agent.capture import CaptureLimits, CaptureResult, run_capture
from kpcap_agent.copies import CopyPolicy

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def enter_netns(netns: str) -> None:
    """Move the calling thread into ``netns`` (only this thread: setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {netns}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


class NetnsThread(threading.Thread):
    """Runs ``function`` in a fresh thread inside ``netns``; ``result()`` joins and returns/raises."""

    def __init__(self, *, netns: str, function: Callable[[], Any]) -> None:
        super().__init__(daemon=True, name=f"in-{netns}")
        self._netns = netns
        self._function = function
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            enter_netns(self._netns)
            self._value = self._function()
        except BaseException as error:  # noqa: BLE001 -- handed to the joining thread
            self._error = error

    def result(self, *, timeout: float = 60) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"{self.name} still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def in_netns(netns: str, function: Callable[[], T], *, timeout: float = 60) -> T:
    thread = NetnsThread(netns=netns, function=function)
    thread.start()
    value: T = thread.result(timeout=timeout)
    return value


def send_frames(*, netns: str, interface: str, frames: Sequence[bytes]) -> None:
    """Send raw Ethernet frames out of ``interface`` in ``netns``."""

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sender:
            sender.bind((interface, 0))
            for frame in frames:
                sender.send(frame)

    in_netns(netns, send)


def trafgen_burst(*, netns: str, interface: str, frame: bytes, count: int, config_dir: Path) -> None:
    """Send ``count`` copies of ``frame`` as fast as trafgen can (one CPU)."""
    config = config_dir / "burst.cfg"
    config.write_text("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n")
    run(
        "ip", "netns", "exec", netns,
        "trafgen", "--dev", interface, "--conf", str(config), "--num", str(count), "--cpus", "1", "--no-sock-mem",
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    netns: str
    interface: str
    address: str
    mac: str


@dataclass(frozen=True, kw_only=True)
class VethPair:
    left: Endpoint
    right: Endpoint


@dataclass(frozen=True, kw_only=True)
class Routed:
    """client -- router -- server, the router forwarding between its two veths."""

    client: Endpoint
    router_client_side: Endpoint
    router_server_side: Endpoint
    server: Endpoint


def _mac(netns: str, interface: str) -> str:
    return run("ip", "-n", netns, "-br", "link", "show", interface).split()[2]


class Namespaces:
    def __init__(self) -> None:
        self.token = secrets.token_hex(2)
        self.created: list[str] = []

    def netns(self, role: str) -> str:
        name = f"kpct-{self.token}-{role}"
        run("ip", "netns", "add", name)
        self.created.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(
        self, *, left_ns: str, right_ns: str, role: str, left_ip: str, right_ip: str
    ) -> tuple[Endpoint, Endpoint]:
        left_if, right_if = f"kpct{self.token}{role}a", f"kpct{self.token}{role}b"
        run(
            "ip",
            "-n",
            left_ns,
            "link",
            "add",
            left_if,
            "type",
            "veth",
            "peer",
            "name",
            right_if,
            "netns",
            right_ns,
        )
        endpoints = []
        for netns, interface, address in ((left_ns, left_if, left_ip), (right_ns, right_if, right_ip)):
            run("ip", "-n", netns, "addr", "add", address, "dev", interface)
            run("ip", "-n", netns, "link", "set", interface, "up")
            endpoints.append(
                Endpoint(
                    netns=netns,
                    interface=interface,
                    address=address.split("/")[0],
                    mac=_mac(netns, interface),
                )
            )
        return endpoints[0], endpoints[1]

    def delete(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass(kw_only=True)
class RunningCapture:
    """A capture running in its own thread inside a namespace (see start_capture)."""

    thread: NetnsThread
    ready: threading.Event
    stop_event: threading.Event

    def result(self, *, timeout: float = 60) -> CaptureResult:
        value: CaptureResult = self.thread.result(timeout=timeout)
        return value


def start_capture(
    *,
    netns: str,
    path: Path,
    filter_expression: str,
    limits: CaptureLimits,
    interfaces: Sequence[str] | None = None,
    copy_policy: CopyPolicy = CopyPolicy.ONE_COPY,
    accept: Callable[[bytes], bool] = lambda _frame: True,
    snaplen: int = DEFAULT_SNAPLEN,
    writer_snaplen: int = DEFAULT_SNAPLEN,
    recheck: Callable[[bytes], bool] | None = None,
) -> RunningCapture:
    """Open a live source in ``netns`` and run a capture into ``path``; returns once it is open.

    ``recheck`` arranges the check as the agent does: the source checks only the frames its kernel
    filter judged without their outer VLAN tag, and the loop checks nothing (``accept`` unused).

    ``snaplen`` is the kernel's (the source's), ``writer_snaplen`` the file's: the agent sets both
    to the spec's snapLength; a test can leave the writer's at its default to see what the kernel cut.
    """
    ready = threading.Event()
    stop_event = threading.Event()

    def capture() -> CaptureResult:
        source = open_live_source(
            filter_expression=filter_expression,
            interfaces=interfaces,
            copy_policy=copy_policy,
            snaplen=snaplen,
        )
        try:
            if recheck is not None:
                source.recheck_tagged_frames(recheck)
            with PcapWriter(path=path, snaplen=writer_snaplen) as writer:
                ready.set()
                return run_capture(
                    source=source,
                    writer=writer,
                    limits=limits,
                    accept=accept if recheck is None else None,
                    stop_event=stop_event,
                )
        finally:
            source.close()

    thread = NetnsThread(netns=netns, function=capture)
    thread.start()
    if not ready.wait(timeout=30):
        thread.result(timeout=1)  # raises the error that kept it from opening
        raise TimeoutError("capture did not open")
    return RunningCapture(thread=thread, ready=ready, stop_event=stop_event)
