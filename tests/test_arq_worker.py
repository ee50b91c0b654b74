"""LadderWorker's one-round-trip claim keeps arq's guarantee: a job runs in one worker at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func

from ladder.queueing import deserialize_arq
from worker.arq_worker import LadderWorker

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
