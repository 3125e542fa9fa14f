"""The agent's and the sampler's metrics: values follow the capture and the ring, served over HTTP,
and every scrape passes ``promtool check metrics``."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from kpcap.pcap import Record
from kpcap_agent.metrics import AgentMetrics, CaptureCounts, request_result, serve
from kpcap_agent.sampler import SamplerConfig, SampleRing
from kpcap_agent.sampler_service import SamplerService
from kpcap_agent.sources import MemorySource
from tests.agent.sampler_calls import SIMPLE_SPEC, StaticAuthoriser, query, service_config, udp
from tests.support.metrics import promtool_check, samples, scrape, value
from tests.support.waiting import wait_for


def test_agent_counts_follow_the_capture_then_settle_and_uploads_are_timed() -> None:
    metrics = AgentMetrics()
    server = serve(registry=metrics.registry, host="127.0.0.1", port=0)
    assert server is not None
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        live = {"packets": 3, "bytes": 300}
        metrics.follow(lambda: CaptureCounts(packets=live["packets"], bytes=live["bytes"], kernel_drops=1))
        first = scrape(url)
        live.update(packets=7, bytes=900)
        second = scrape(url)
        for text in (first, second):
            promtool_check(text)
        assert value(samples(first), "kpcap_agent_packets_total") == 3
        assert value(samples(second), "kpcap_agent_packets_total") == 7
        assert value(samples(second), "kpcap_agent_bytes_total") == 900
        assert value(samples(second), "kpcap_agent_kernel_drops_total") == 1

        metrics.settle(CaptureCounts(packets=8, bytes=1000, kernel_drops=2))
        metrics.uploaded(seconds=0.3, size=1024)
        metrics.uploaded(seconds=2.0, size=None)
        final = scrape(url)
        promtool_check(final)
        found = samples(final)
        assert value(found, "kpcap_agent_packets_total") == 8
        assert value(found, "kpcap_agent_upload_bytes_total") == 1024
        assert value(found, "kpcap_agent_upload_duration_seconds_count", {"result": "done"}) == 1
        assert value(found, "kpcap_agent_upload_duration_seconds_count", {"result": "failed"}) == 1
        assert (
            value(found, "kpcap_agent_upload_duration_seconds_bucket", {"result": "done", "le": "0.5"}) == 1
        )
    finally:
        server.close()


def test_a_port_in_use_costs_the_metrics_only() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve(registry=AgentMetrics().registry, host="127.0.0.1", port=taken.getsockname()[1]) is None


@pytest.mark.parametrize(
    ("status", "result"),
    [(200, "ok"), (401, "unauthorized"), (403, "unauthorized"), (400, "invalid"), (503, "error")],
)
def test_request_results_are_bounded(status: int, result: str) -> None:
    assert request_result(status) == result


def test_sampler_ring_and_requests_by_result_on_its_metrics_port() -> None:
    config = dataclasses.replace(service_config(sample_rate=1), metrics_port=0)
    now = int(time.time())
    frames = [Record(now, i, data := udp(dport=53, marker=i), len(data)) for i in range(40)]
    ring = SampleRing(SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20))
    with SamplerService(
        config=config,
        source=MemorySource(frames=frames, batch_size=8),
        authoriser=StaticAuthoriser(),
        ring=ring,
    ) as service:
        assert service.metrics_server is not None
        url = f"http://127.0.0.1:{service.metrics_server.port}/metrics"
        wait_for(lambda: ring.stats().offered == 40, timeout=10, what="the frames in the ring")
        now_ns = time.time_ns()
        assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=now_ns).status == 200
        first = scrape(url)
        assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=now_ns).status == 200
        assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=now_ns, token="bad").status == 401
        second = scrape(url)
    for text in (first, second):
        promtool_check(text)
    before, after = samples(first), samples(second)
    assert value(after, "kpcap_sampler_frames_total") == 40
    assert value(after, "kpcap_sampler_held_frames") == 40
    assert value(after, "kpcap_sampler_held_bytes") > 0
    assert value(before, "kpcap_sampler_requests_total", {"result": "ok"}) == 1
    assert value(after, "kpcap_sampler_requests_total", {"result": "ok"}) == 2
    assert value(after, "kpcap_sampler_requests_total", {"result": "unauthorized"}) == 1
    assert value(after, "kpcap_sampler_kernel_drops_total") == 0
