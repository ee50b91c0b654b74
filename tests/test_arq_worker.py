"""LadderWorker's one-round-trip claim keeps arq's guarantee: a job runs in one worker at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func
from redis.exceptions import ConnectionError as RedisConnectionError

from ladder.queueing import deserialize_arq
from worker.arq_worker import LadderWorker
from worker.health import Heartbeats

QUEUE = "ladder:queue:test"


async def test_two_workers_on_one_queue_run_each_job_exactly_once(arq_redis: ArqRedis) -> None:
    runs: list[str] = []

    async def record(ctx: dict[str, Any], job_id: str) -> None:
        runs.append(job_id)
        await asyncio.sleep(0.005)

    for i in range(300):
        await arq_redis.enqueue_job("record", f"j{i}", _job_id=f"j{i}", _queue_name=QUEUE)
    workers = [
        LadderWorker([func(record, name="record")], queue_name=QUEUE, redis_pool=arq_redis, burst=True,
                     max_jobs=20, poll_delay=0, handle_signals=False, keep_result=0, job_deserializer=deserialize_arq)
        for _ in range(2)
    ]  # fmt: skip
    await asyncio.gather(*(w.async_run() for w in workers))
    assert sorted(runs) == sorted(f"j{i}" for i in range(300))
    assert all(w.jobs_complete > 0 for w in workers)  # both really competed for the same jobs
    assert await arq_redis.zcard(QUEUE) == 0


async def test_a_deferred_job_is_not_claimed_early(arq_redis: ArqRedis) -> None:
    runs: list[str] = []

    async def record(ctx: dict[str, Any], job_id: str) -> None:
        runs.append(job_id)

    await arq_redis.enqueue_job("record", "later", _job_id="later", _queue_name=QUEUE, _defer_by=60)
    await arq_redis.enqueue_job("record", "now", _job_id="now", _queue_name=QUEUE)
    worker = LadderWorker([func(record, name="record")], queue_name=QUEUE, redis_pool=arq_redis, burst=True,
                          max_jobs=5, poll_delay=0, handle_signals=False, job_deserializer=deserialize_arq)  # fmt: skip
    await worker.start_jobs([b"later", b"now"])
    await asyncio.gather(*worker.tasks.values())
    assert runs == ["now"]


async def test_a_worker_waits_out_a_redis_outage_alive_and_claims_again_after_it(arq_redis: ArqRedis) -> None:
    """Every Redis call fails for a while (as while Redis restarts): the poll loop keeps turning,
    liveness stays green on its own beat, no concurrency slot leaks, and jobs run once it is back."""
    runs: list[str] = []

    async def record(ctx: dict[str, Any], job_id: str) -> None:
        runs.append(job_id)

    worker = LadderWorker([func(record, name="record")], queue_name=QUEUE, redis_pool=arq_redis, max_jobs=2,
                          poll_delay=0.01, handle_signals=False, keep_result=0, job_deserializer=deserialize_arq)  # fmt: skip
    down = "everything"
    claims_failed: list[bool] = []
    real_execute = arq_redis.execute_command

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        command = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        claiming = command.upper().startswith("EVAL")
        if down == "everything" or (down == "claims" and claiming):
            claims_failed.append(claiming)
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await real_execute(*args, **kwargs)

    for i in range(5):
        await arq_redis.enqueue_job("record", f"j{i}", _job_id=f"j{i}", _queue_name=QUEUE)
    arq_redis.execute_command = flaky  # type: ignore[method-assign]
    heartbeats = Heartbeats(max_age=0.5)
    heartbeats.watch(worker)
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(1.5)  # longer than the liveness limit given here
        assert not running.done() and runs == []
        assert heartbeats() is None  # arq's own beat is 1.5 s old, the poll loop's is fresh
        down = "claims"  # the queue reads, the claims fail: each failed claim must give its slot back
        for _ in range(500):  # the loop may be in its back-off (up to 5 s)
            if claims_failed.count(True) >= 3:
                break
            await asyncio.sleep(0.02)
        assert runs == [] and worker.job_counter == 0 and claims_failed.count(True) >= 3
        down = ""
        for _ in range(300):
            if len(runs) == 5:
                break
            await asyncio.sleep(0.02)
        assert sorted(runs) == [f"j{i}" for i in range(5)]
        assert worker.job_counter == 0 and worker.sem._value == worker.max_jobs + 1  # arq's full semaphore
    finally:
        arq_redis.execute_command = real_execute  # type: ignore[method-assign]
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
