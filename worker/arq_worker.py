"""Ladder's arq Worker: arq's own, with a job claimed in one Redis round trip instead of four.

arq 0.28 claims each job with WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC. At batch rates those
round trips were a third of a tier worker's CPU per job. The Lua script below makes the same three
checks and the same write atomically, so the semantics are arq's: a job runs in one worker at a
time, and a job no longer in the queue (or deferred) is skipped. Only `start_jobs` is replaced;
arq is pinned to 0.28.* in pyproject.toml because this relies on its attributes.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgspec
from arq import Worker
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from arq.worker import func

from ladder.keys import Keys
from ladder.messages import TIER_TASK_DECODER
from ladder.queueing import deserialize_arq, serialize_arq
from policies.config import Policies

RUNTIME_KEY = "ladder"  # where a job function finds its process's runtime in arq's ctx

# KEYS: in-progress key, queue. ARGV: job id, now ms, in-progress ttl ms. Returns the score or nil.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""


class LadderWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claim: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM)
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            score = await self._claim(
                keys=[in_progress_key_prefix + job_id, self.queue_name], args=[job_id, timestamp_ms(), ttl_ms]
            )
            if score is None:  # running elsewhere, finished, or deferred
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


TaskT = TypeVar("TaskT")
TaskT_contra = TypeVar("TaskT_contra", contravariant=True)


class TaskRuntime(Protocol[TaskT_contra]):
    """What a queue's job function needs from its process: built once at start-up, shared by Workers."""

    keys: Keys
    redis: ArqRedis
    policies: Policies

    async def run(self, task: TaskT_contra, task_id: str, job_try: int) -> str: ...


def job_function(decoder: msgspec.msgpack.Decoder[TaskT]) -> WorkerCoroutine:
    """An arq job function for one message type: decode the task, hand it to this process's runtime."""

    async def run_task(ctx: dict[str, Any], raw: bytes) -> str:
        runtime: TaskRuntime[TaskT] = ctx[RUNTIME_KEY]
        return await runtime.run(decoder.decode(raw), ctx["job_id"], ctx.get("job_try", 1))

    return run_task


run_task = job_function(TIER_TASK_DECODER)  # the tier and classify queues' job function


def queue_worker(
    runtime: TaskRuntime[TaskT],
    queue: str,
    function_name: str,
    *,
    decoder: msgspec.msgpack.Decoder[TaskT] | None = None,
    burst: bool = False,
    max_jobs: int = 64,
    poll_delay: float = 0.05,
    handle_signals: bool = True,
) -> Worker:
    """An arq Worker on one queue with Ladder's serializer; results live in job records, not arq.
    `decoder` reads the queue's payloads; without one they are TierTasks (tier and classify queues)."""
    function = run_task if decoder is None else job_function(decoder)
    return LadderWorker(
        functions=[func(function, name=function_name)],
        queue_name=queue,
        redis_pool=runtime.redis,
        burst=burst,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        # arq cancels a job at its timeout with nothing recorded: give Ladder's own budget
        # (limits.job_timeout_s, enforced in the runtimes) time to settle the job first.
        job_timeout=runtime.policies.limits.job_timeout_s + 60,
        keep_result=0,
        max_tries=3,
        job_serializer=serialize_arq,
        job_deserializer=deserialize_arq,
        ctx={RUNTIME_KEY: runtime},
        handle_signals=handle_signals,
        health_check_key=f"{queue}:health-check",
        health_check_interval=30,
        log_results=False,
    )
