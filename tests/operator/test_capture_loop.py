"""The per-capture loop's pacing and writes, with the pass and the write as plain functions."""

from __future__ import annotations

import asyncio
from typing import Any

from kpcap.model import CaptureStatus
from kpcap_operator.capture_loop import CaptureLoop, Freshest, LoopTiming, due_now, status_changes
from kpcap_operator.result import Result
from kpcap_operator.wakeups import Wakeups

Json = dict[str, Any]
CID = "c1"


class Flag:
    """Kopf's async ``stopped`` flag, as far as the loop uses it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)


def body(status: Json | None = None, version: str = "1") -> Json:
    return {
        "metadata": {"namespace": "ns", "name": "c", "resourceVersion": version, "generation": 1},
        "status": status or {},
    }


def test_a_pass_could_move_the_capture_when_unadmitted_first_reported_or_every_target_ended() -> None:
    running = {"status": "running", "targetNodes": ["a", "b"]}
    assert due_now(status={}, counts=None)
    assert due_now(status={"status": "pending", "targetNodes": ["a"]}, counts=(1, 0))
    assert not due_now(status={"status": "pending", "targetNodes": ["a"]}, counts=(0, 0))
    assert not due_now(status=running, counts=(2, 1))
    assert due_now(status=running, counts=(2, 2))
    assert not due_now(status={"status": "success"}, counts=(2, 2))


def test_only_changed_keys_are_written_with_the_generation() -> None:
    result = Result(status={"status": "running", "packetsCaptured": 3})
    assert status_changes(body=body({"status": "running"}), result=result) == {
        "packetsCaptured": 3,
        "observedGeneration": 1,
    }
    assert status_changes(body=body({"status": "running", "packetsCaptured": 3}), result=result) == {}


def test_the_written_object_is_used_until_the_live_body_is_newer() -> None:
    freshest = Freshest()
    freshest.wrote(body({"status": "running"}, version="5"))
    assert freshest.pick(body({}, version="4"))["status"] == {"status": "running"}
    assert freshest.pick(body({"status": "success"}, version="6"))["status"] == {"status": "success"}
    assert freshest.pick(body({}, version="4"))["status"] == {}  # forgotten once the live body caught up


class Harness:
    def __init__(self, *, counts: tuple[int, int] = (0, 0)) -> None:
        self.live = body()
        self.passes = 0
        self.writes: list[Json] = []
        self.reported: tuple[int, int] | None = counts
        self.finish_after: int | None = None

    def run_pass(self, current: Json) -> Result:
        assert current["metadata"]["name"] == "c"
        self.passes += 1
        status = {"status": "running", "targetNodes": ["a"], "packetsCaptured": self.passes}
        if self.finish_after is not None and self.passes >= self.finish_after:
            return Result(status={**status, "status": "success"}, finished=CaptureStatus.SUCCESS)
        return Result(status=status)

    def write(self, current: Json, changes: Json) -> Json:
        self.writes.append(changes)
        version = str(int(current["metadata"]["resourceVersion"]) + 1)
        return {
            **current,
            "metadata": {**current["metadata"], "resourceVersion": version},
            "status": {**current["status"], **changes},
        }

    def loop(self, interval: float) -> CaptureLoop:
        return CaptureLoop(
            capture_id=CID,
            timing=LoopTiming(interval=interval, safety=interval * 5),
            is_leader=lambda: True,
            run_pass=self.run_pass,
            write_status=self.write,
            report_counts=lambda: self.reported,
            post_events=lambda _result: None,
        )


def test_a_wake_up_that_could_finish_the_capture_runs_a_pass_at_once_a_routine_one_waits() -> None:
    async def scenario() -> tuple[int, int, int]:
        harness, wakeups, stopped = Harness(), Wakeups(), Flag()
        task = asyncio.create_task(
            harness.loop(interval=0.5).run(live=harness.live, stopped=stopped, wakeups=wakeups)
        )
        await asyncio.sleep(0.05)
        first = harness.passes  # the pass at once
        wakeups.wake(CID)  # a progress report: waits for the routine interval
        await asyncio.sleep(0.1)
        routine = harness.passes
        harness.reported = (1, 1)
        harness.finish_after = harness.passes + 1
        wakeups.wake(CID)  # the last target's final report: at once
        await asyncio.wait_for(task, timeout=0.3)
        return first, routine, harness.passes

    first, routine, last = asyncio.run(scenario())
    assert (first, routine, last) == (1, 1, 2)


def test_without_wake_ups_the_safety_pass_still_comes_and_stopping_ends_the_loop() -> None:
    async def scenario() -> tuple[int, int]:
        harness, stopped = Harness(), Flag()
        task = asyncio.create_task(
            harness.loop(interval=0.04).run(live=harness.live, stopped=stopped, wakeups=Wakeups())
        )
        await asyncio.sleep(0.5)  # safety interval 0.2 s
        passes = harness.passes
        stopped.event.set()
        await asyncio.wait_for(task, timeout=0.2)
        return passes, len(harness.writes)

    passes, writes = asyncio.run(scenario())
    assert 2 <= passes <= 4
    assert writes == passes
