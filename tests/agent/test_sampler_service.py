"""The sampler service as a whole: real packets from a network namespace, and the ``sample``
command."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kpcap_agent.sampler_service import SamplerService, open_sampler_source
from tests.agent.netns import VethPair, in_netns, run, send_frames
from tests.agent.sampler_calls import (
    BASE_ENV,
    SIMPLE_SPEC,
    StaticAuthoriser,
    pcap_records,
    query,
    service_config,
)
from tests.support.waiting import wait_for

# --- real packets from a network namespace -------------------------------------------------------


def quiet_link(pair: VethPair) -> None:
    """No IPv6 chatter (router solicitations, MLD) on the link: only the test's frames are offered."""
    for endpoint in (pair.left, pair.right):
        for setting in ("all", "default", endpoint.interface):
            run(
                "ip",
                "netns",
                "exec",
                endpoint.netns,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{setting}.disable_ipv6=1",
            )


def live_frame(pair: VethPair, index: int) -> bytes:
    # To an address the receiver does not own: not forwarded (ip_forward is off) and no ICMP error
    # comes back, so the frames sent are exactly the frames the sampler sees.
    return bytes(
        Ether(src=pair.left.mac, dst=pair.right.mac)
        / IP(src=pair.left.address, dst="198.18.201.77")
        / UDP(sport=40000, dport=5555 if index % 2 == 0 else 53)
        / Raw(index.to_bytes(4, "big") + bytes(index % 150))
    )


def frame_index(data: bytes) -> int:
    return int.from_bytes(data[42:46], "big")  # the marker after the Ethernet, IPv4 and UDP headers


def test_live_packets_at_rate_1_all_kept_and_queried_over_https(veth_pair: VethPair, tmp_path: Path) -> None:
    """Rate 1: the kernel program has no sampling check, and every frame sent is held exactly."""
    quiet_link(veth_pair)
    time.sleep(0.3)
    snap = 96
    config = service_config(sample_rate=1, snap_length=snap)
    source = in_netns(veth_pair.right.netns, lambda: open_sampler_source(config))

    def frame(index: int) -> bytes:
        return live_frame(veth_pair, index)

    try:
        with SamplerService(config=config, source=source, authoriser=StaticAuthoriser()) as service:
            before = [frame(i) for i in range(30)]
            inside = [frame(i) for i in range(30, 150)]
            after = [frame(i) for i in range(150, 180)]
            send = veth_pair.left.netns, veth_pair.left.interface
            send_frames(netns=send[0], interface=send[1], frames=before)
            time.sleep(0.2)
            since = time.time_ns()
            send_frames(netns=send[0], interface=send[1], frames=inside)
            time.sleep(0.2)
            until = time.time_ns()
            send_frames(netns=send[0], interface=send[1], frames=after)
            wait_for(lambda: service.ring.stats().offered >= 180, timeout=10, what="180 frames offered")
            time.sleep(0.3)
            stats = service.ring.stats()
            assert (stats.offered, stats.sampled, stats.held_records) == (180, 180, 180)

            spec = SIMPLE_SPEC | {"filter": {"destinationPort": 5555, "protocol": 17}, "packetLimit": 1000}
            answer = query(service, spec=spec, since_ns=since, until_ns=until)
            assert answer.status == 200, answer.body
            assert answer.headers["x-kpcap-sample-rate"] == "1"
            assert answer.headers["x-kpcap-held-records"] == "180"
            records = pcap_records(answer.body, tmp_path)
            expected = [frame(i) for i in range(30, 150) if i % 2 == 0]  # port 5555 when i is even
            assert len(expected) == 60
            assert [r.data for r in records] == [f[:snap] for f in expected]
            assert [r.original_length for r in records] == [len(f) for f in expected]
            assert any(len(f) > snap for f in expected)  # truncation was exercised
            assert all(since <= r.timestamp_ns <= until for r in records)
            assert [r.timestamp_ns for r in records] == sorted(r.timestamp_ns for r in records)

            # packetLimit keeps the newest; the whole history with no filter has all 180 frames.
            newest = pcap_records(
                query(service, spec=spec | {"packetLimit": 5}, since_ns=since, until_ns=until).body, tmp_path
            )
            assert [r.data for r in newest] == [f[:snap] for f in expected[-5:]]
            everything = pcap_records(
                query(service, spec=SIMPLE_SPEC | {"packetLimit": 1000}, since_ns=0, until_ns=2**62).body,
                tmp_path,
            )
            assert [r.data for r in everything] == [frame(i)[:snap] for i in range(180)]
            assert service.source.kernel_drops() == 0
    finally:
        source.close()


def test_live_packets_sampled_in_the_kernel(veth_pair: VethPair, tmp_path: Path) -> None:
    """Rate N: each frame is kept with probability 1/N in the kernel, so the count sampled out of M
    is binomial(M, 1/N): within 6 sigma of M/N (a false failure about once in 5e8 runs)."""
    quiet_link(veth_pair)
    time.sleep(0.3)
    rate, snap, count = 10, 64, 20000
    config = service_config(sample_rate=rate, snap_length=snap, byte_budget=16 << 20)
    source = in_netns(veth_pair.right.netns, lambda: open_sampler_source(config))
    frames = [live_frame(veth_pair, i) for i in range(count)]
    try:
        with SamplerService(config=config, source=source, authoriser=StaticAuthoriser()) as service:
            assert service.ring.config.sample_rate == 1  # the ring keeps what the kernel sampled
            send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
            time.sleep(1.0)  # a partly filled ring block is handed over after 50 ms
            stats = service.ring.stats()
            mean = count / rate
            bound = 6 * (count * (1 / rate) * (1 - 1 / rate)) ** 0.5  # 6 sigma = 255 frames
            assert stats.sampled > 0
            assert abs(stats.sampled - mean) <= bound, (stats.sampled, mean, bound)
            assert stats.offered == stats.sampled == stats.held_records
            assert service.source.kernel_drops() == 0

            answer = query(service, spec=SIMPLE_SPEC | {"packetLimit": 10000}, since_ns=0, until_ns=2**62)
            assert answer.status == 200, answer.body
            assert answer.headers["x-kpcap-sample-rate"] == str(rate)  # the configured N
            assert answer.headers["x-kpcap-held-records"] == str(stats.held_records)
            records = pcap_records(answer.body, tmp_path)
            assert len(records) == stats.held_records
            # Every sampled frame is one that was sent, whole up to the snap length, each at most
            # once and in the order sent.
            indexes = [frame_index(r.data) for r in records]
            assert indexes == sorted(set(indexes))
            assert all(0 <= i < count for i in indexes)
            assert [r.data for r in records] == [frames[i][:snap] for i in indexes]
            assert [r.original_length for r in records] == [len(frames[i]) for i in indexes]
            # Not every N-th frame (the ring's old counter): the gaps between sampled frames vary.
            gaps = {b - a for a, b in itertools.pairwise(indexes)}
            assert len(gaps) > 5
    finally:
        source.close()


def test_the_sample_command_serves_and_ends_on_sigterm(veth_pair: VethPair, tmp_path: Path) -> None:
    """``python -m kpcap_agent sample`` in a namespace: healthz, a 503 when the apiserver it was
    given is unreachable, exit 0 promptly on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = (
        os.environ
        | BASE_ENV
        | {
            "KUBECONFIG": str(kubeconfig),
            "KPCAP_SAMPLER_HOST": veth_pair.right.address,
            "KPCAP_SAMPLER_PORT": "9444",
            "KPCAP_SAMPLER_BYTE_BUDGET": "1Mi",
        }
    )
    process = subprocess.Popen(
        ["ip", "netns", "exec", veth_pair.right.netns, sys.executable, "-m", "kpcap_agent", "sample"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
            def inside() -> tuple[int, bytes]:
                connection = http.client.HTTPSConnection(
                    veth_pair.right.address, 9444, context=context, timeout=10
                )
                try:
                    connection.request(method, path, body=body, headers={"Authorization": "Bearer x"})
                    response = connection.getresponse()
                    return response.status, response.read()
                finally:
                    connection.close()

            return in_netns(veth_pair.left.netns, inside)

        def healthy() -> bool:
            try:
                return call("GET", "/healthz") == (200, b"ok")
            except OSError:
                return process.poll() is None and False

        wait_for(healthy, timeout=30, what="the sampler's /healthz")
        status, body = call(
            "POST", "/v1/samples", json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode()
        )
        assert status == 503
        assert "apiserver is unreachable" in json.loads(body)["error"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        output = process.stdout.read() if process.stdout else ""
        assert "sampler on node node-1: keep 1 packet in 100" in output
        assert "stats: held" in output  # the last stats line, written on the way out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
