"""The batch lane seen from outside: `/healthz` of a lane fails once its loop is stuck in a pass (and not
while it waits out a Redis outage), and the exporter's batch lane gauges follow the state a real lane
writes. Mostly in-process: a real BatchLane against the test Redis, with the simulated batch API or one
whose submission never returns, and a fake clock for the heartbeat; then a real `ladder batches run`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from arq.connections import ArqRedis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import Job, Lane
from policies.config import Policies
from producer.submit import Producer
from tests.processes import Process, free_port, http_get, wait_for
from worker.batch_api import BatchRequest
from worker.batch_lane import BatchLane
from worker.health import Heartbeats, LoopBeat, ProbeServer
from worker.metrics import BatchLaneGauges
from worker.simulated_batches import SimulatedBatches
from worker.simulated_provider import SimulatedProvider

MAX_AGE_S = 60.0


class StuckBatches(SimulatedBatches):
    """The simulated batch API, except that a submission never returns: a provider call that hangs."""

    def __init__(self) -> None:
        super().__init__(SimulatedProvider("openai"))
        self.entered = asyncio.Event()

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("never set")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most 10 s) for something the lane's loop does on its own."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


async def _healthz(server: ProbeServer) -> tuple[int, bytes]:
    status, _, body = await server.answer(b"GET /healthz HTTP/1.1")
    return status, body


async def _batch_jobs(redis: ArqRedis, policies: Policies, keys: Keys, n: int) -> None:
    jobs = [Job(id=f"j{i}", prompt=f"summarize item {i}", tier_hint="cheap") for i in range(n)]
    report = await Producer(redis, policies, keys, Lane.BATCH).submit(jobs, "b1")
    assert report.routed == {"batch:cheap": n}


async def _gauges(gauges: BatchLaneGauges) -> dict[str, float]:
    await gauges.refresh()
    return {
        s.name + (f"{{{s.labels['tier']}}}" if s.labels else ""): s.value for m in gauges.collect() for s in m.samples
    }


async def test_healthz_fails_once_the_lane_loop_is_stuck_in_a_pass(
    arq_redis: ArqRedis, keys: Keys, policies: Policies
) -> None:
    clock = FakeClock()
    heartbeats = Heartbeats()
    beat = heartbeats.watch_loop(LoopBeat("batch lane", MAX_AGE_S, clock))
    server = ProbeServer(CollectorRegistry(), ready={}, live=[heartbeats])
    api = StuckBatches()
    lane = BatchLane(policies, arq_redis, keys, {"openai": api})
    stop = asyncio.Event()
    running = asyncio.create_task(lane.run(stop, eager=True, tick_s=0.01, beat=beat))
    try:
        clock.now += 10 * MAX_AGE_S  # idle passes go on beating, however much time goes by
        await _until(lambda: beat.silence() is None, "an idle pass beats")
        assert await _healthz(server) == (200, b"ok\n")

        await _batch_jobs(arq_redis, policies, keys, 2)
        await asyncio.wait_for(api.entered.wait(), 10)  # the next pass submits them, and hangs there
        assert await _healthz(server) == (200, b"ok\n")
        clock.now += MAX_AGE_S + 1
        assert await _healthz(server) == (503, b"batch lane: loop silent for 61s\n")
        assert not running.done()  # stuck, not dead: only the probe can tell
    finally:
        stop.set()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_lane_loop_beats_while_it_waits_out_a_redis_outage(policies: Policies, keys: Keys) -> None:
    clock = FakeClock()
    heartbeats = Heartbeats()
    beat = heartbeats.watch_loop(LoopBeat("batch lane", MAX_AGE_S, clock))
    server = ProbeServer(CollectorRegistry(), ready={}, live=[heartbeats])
    passes = 0

    def counted() -> None:
        nonlocal passes
        passes += 1
        beat()

    nowhere = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    lane = BatchLane(policies, nowhere, keys, {"openai": SimulatedBatches(SimulatedProvider("openai"))})
    stop = asyncio.Event()
    running = asyncio.create_task(lane.run(stop, tick_s=0.01, beat=counted))
    try:
        await _until(lambda: passes >= 3, "passes while Redis refuses")
        clock.now += 10 * MAX_AGE_S
        await _until(lambda: beat.silence() is None, "a pass beats during the outage")
        assert await _healthz(server) == (200, b"ok\n")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await nowhere.aclose()


async def test_the_gauges_follow_a_lane_from_waiting_jobs_to_a_done_batch(
    arq_redis: ArqRedis, keys: Keys, policies: Policies
) -> None:
    gauges = BatchLaneGauges(arq_redis, keys, policies.tier_names)
    lane = BatchLane(policies, arq_redis, keys, {"openai": SimulatedBatches(SimulatedProvider("openai"))})
    await _batch_jobs(arq_redis, policies, keys, 3)
    seen = await _gauges(gauges)
    assert seen["ladder_batch_lane_waiting_jobs{cheap}"] == 3 and seen["ladder_batch_lane_open_batches"] == 0

    assert [b.size for b in await lane.submit_due(eager=True)] == [3]
    seen = await _gauges(gauges)
    assert seen["ladder_batch_lane_waiting_jobs{cheap}"] == 0
    assert seen["ladder_batch_lane_open_batches"] == 1
    assert 0 <= seen["ladder_batch_lane_oldest_open_seconds"] < 60

    assert await lane.poll(force=True) == 3  # the simulated batch has ended: every request settles
    seen = await _gauges(gauges)
    assert seen["ladder_batch_lane_open_batches"] == 0 and seen["ladder_batch_lane_oldest_open_seconds"] == 0
    assert seen["ladder_batch_lane_lease_held"] == 0  # no `ladder batches run` holds the lease

    stop = asyncio.Event()
    running = asyncio.create_task(lane.run(stop, tick_s=0.01))
    deadline = time.monotonic() + 10
    while (await _gauges(gauges))["ladder_batch_lane_lease_held"] != 1:  # a running lane holds the lease
        assert time.monotonic() < deadline, "the running lane never held its lease"
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(running, 10)
    assert (await _gauges(gauges))["ladder_batch_lane_lease_held"] == 0  # released on the way out


def test_a_lane_process_serves_its_probes_and_stops_on_sigterm(
    cli_env: dict[str, str], processes: Callable[..., Process], tmp_path: Path
) -> None:
    port = free_port()
    lane = processes(cli_env, tmp_path / "lane.log", "batches", "run", "--metrics-port", str(port))

    def serving() -> bool:
        assert lane.proc.poll() is None, lane.output()
        with contextlib.suppress(OSError):
            return http_get(port, "/healthz")[0] > 0
        return False

    wait_for(serving, 90, "the lane process's probes")
    assert http_get(port, "/healthz") == (200, "ok\n")
    assert http_get(port, "/readyz") == (200, "ok\n")
    code, _ = lane.stop(signal.SIGTERM, timeout=60)
    assert code == 0, lane.output()
    assert "batch lane stopped" in lane.output()
