"""Ladder's arq Worker: arq's own, with a job claimed in one Redis round trip instead of four, and a
graceful stop that hands unfinished jobs back at once.

arq 0.28 claims each job with WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC. At batch rates those
round trips were a third of a tier worker's CPU per job. The Lua script below makes the same three
checks and the same write atomically, so the semantics are arq's: a job runs in one worker at a
time, and a job no longer in the queue (or deferred) is skipped.

On SIGTERM or SIGINT arq cancels every job at once and its main task with it, so the process exits
with a CancelledError while jobs are half-settled, and a job whose in-progress key was not deleted
waits for that key's expiry (job_timeout + 10 s) before any worker may run it again. Here a signal
stops new claims at once, lets the jobs in flight finish for up to `grace_period` seconds (a second
signal ends the wait), then cancels the job functions that are still running. arq's own cancellation
path then deletes each one's in-progress key and leaves its queue entry, score unchanged, so another
worker claims it at the next poll; the re-run sees job_try > 1 and checks its settled mark first, so
an attempt already settled is not called again. A hand-back does not count as one of arq's
max_tries (a job handed back at every scale-down would otherwise be dropped unsettled), but job_try
never falls back to 1. `start_jobs`, `finish_job`, `_poll_iteration`, `handle_sig` and `async_run`
are replaced; arq is pinned to 0.28.* in pyproject.toml because this relies on its attributes.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from signal import Signals
from typing import Any, Protocol, TypeVar

import msgspec
import structlog
from arq import Retry, Worker
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, retry_key_prefix
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from arq.worker import func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ladder.keys import Keys
from ladder.messages import TIER_TASK_DECODER
from ladder.queueing import deserialize_arq, serialize_arq
from policies.config import Policies

log = structlog.get_logger("ladder.worker")

RUNTIME_KEY = "ladder"  # where a job function finds its process's runtime in arq's ctx
DEFAULT_GRACE_PERIOD_S = 25.0  # Kubernetes' default terminationGracePeriodSeconds is 30

# KEYS: in-progress key, queue. ARGV: job id, now ms, in-progress ttl ms. Returns the score or nil.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""

# A cancelled job goes back. KEYS: in-progress key, retry key, queue. ARGV: job id.
# Returns the queue score (nil: the entry is gone, so nobody will run the job again).
_HAND_BACK = """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 1 then redis.call('DECR', KEYS[2]) end
return redis.call('ZSCORE', KEYS[3], ARGV[1])
"""


# Redis gone (restarted, failed over, a network blip), full (noeviction refuses writes) or a replica
# just demoted: the poll loop waits and tries again instead of ending the process; redis-py
# reconnects on the next command.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OutOfMemoryError, ReadOnlyError)
REDIS_RETRY_MAX_S = 5.0


class ClaimGate(Protocol):
    """Asked before each poll: a reason to claim no new jobs for now (None: claim)."""

    async def closed(self) -> str | None: ...


class _Stopped(Exception):
    """Ends arq's poll loop between two polls once a graceful stop has handed every job back."""


class LadderWorker(Worker):
    def __init__(
        self, *args: Any, grace_period: float = DEFAULT_GRACE_PERIOD_S, gate: ClaimGate | None = None, **kwargs: Any
    ) -> None:
        # Before arq's __init__, which registers handle_sig for SIGTERM and SIGINT.
        self.grace_period = grace_period
        self.gate = gate
        self._gate_reason: str | None = None
        self._redis_retry_s = 0.0
        self.polled_at = time.time()  # the poll loop's own beat: arq's needs Redis (worker/health.py)
        self.jobs_handed_back = 0
        self._shutdown: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # a second signal: hand back now
        self._handing_back: set[str] = set()
        self._polling = False
        self._stopped = False
        super().__init__(*args, **kwargs)
        self._claim: Any = None
        self._hand_back: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM)
        if job_ids and await self._gate_closed():
            return
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        for job_id_b in job_ids:
            await self.sem.acquire()
            # A signal may arrive while this loop waits for a free slot: no claim after it.
            if self.job_counter >= self.max_jobs or not self.allow_pick_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._claim(
                    keys=[in_progress_key_prefix + job_id, self.queue_name], args=[job_id, timestamp_ms(), ttl_ms]
                )
            except BaseException:  # Redis went away: the slot must not leak with it
                self.job_counter -= 1
                self.sem.release()
                raise
            if score is not None and not self.allow_pick_jobs:  # claimed as the signal came: give it back
                await self.pool.delete(in_progress_key_prefix + job_id)
                score = None
            if score is None:  # running elsewhere, finished, or deferred
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _gate_closed(self) -> bool:
        if self.gate is None:
            return False
        reason = await self.gate.closed()
        if reason != self._gate_reason:
            if reason:
                log.warning("claiming no new jobs", queue=self.queue_name, reason=reason)
            else:
                log.info("claiming jobs again", queue=self.queue_name)
            self._gate_reason = reason
        return reason is not None

    def handle_sig(self, signum: Signals) -> None:
        """SIGTERM or SIGINT (arq's handler, replaced): no new claims, then the graceful stop."""
        sig = Signals(signum)
        if self._shutdown is not None:
            log.info("second signal: handing the jobs in flight back now", signal=sig.name)
            self._hurry.set()
            return
        self.allow_pick_jobs = False
        log.info(
            "stopping: no new jobs", signal=sig.name, queue=self.queue_name,
            in_flight=self._in_flight(), grace_period_s=self.grace_period,
        )  # fmt: skip
        self._shutdown = self.loop.create_task(self._shut_down(sig))

    def _in_flight(self) -> int:
        return sum(not t.done() for t in self.tasks.values())

    async def _shut_down(self, sig: Signals) -> None:
        deadline = self.loop.time() + self.grace_period
        while self._in_flight() and not self._hurry.is_set() and (left := deadline - self.loop.time()) > 0:
            await asyncio.wait([t for t in self.tasks.values() if not t.done()], timeout=min(left, 0.1))
        # Only the job functions are cancelled, never arq's run_job around them: its claim and
        # bookkeeping always complete. A run_job still starting its function is caught next round.
        while running := [t for t in self.tasks.values() if not t.done()]:
            for job_id, job_task in self.job_tasks.items():
                self._handing_back.add(job_id)
                job_task.cancel()
            await asyncio.wait(running, timeout=0.05)
        log.info(
            "stopped", signal=sig.name, queue=self.queue_name, done=self.jobs_complete,
            failed=self.jobs_failed, handed_back=self.jobs_handed_back,
        )  # fmt: skip
        if self.on_stop:
            self.on_stop(sig)
        self._stopped = True
        if self.main_task and not self._polling:  # asleep between polls: safe to cancel
            self.main_task.cancel()

    async def _poll_iteration(self) -> None:
        self._polling = True
        try:
            await super()._poll_iteration()
            self._redis_retry_s = 0.0
        except REDIS_DOWN as e:
            # A job whose bookkeeping failed keeps its in-progress key (if Redis kept it) and runs
            # again after it expires; its settled mark keeps the re-run from billing twice.
            self._redis_retry_s = min(max(self._redis_retry_s * 2, self.poll_delay_s), REDIS_RETRY_MAX_S)
            log.warning("redis unavailable", queue=self.queue_name, error=str(e), retry_in_s=self._redis_retry_s)
            await asyncio.sleep(self._redis_retry_s)
        finally:
            self._polling = False
            self.polled_at = time.time()
        if self._stopped:
            raise _Stopped

    async def finish_job(
        self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
        keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None,
    ) -> None:  # fmt: skip
        if finish or incr_score or job_id not in self._handing_back:
            await super().finish_job(
                job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
            )
            return
        # arq's CancelledError path (retry_jobs) with the try not counted, in one round trip.
        if self._hand_back is None:
            self._hand_back = self.pool.register_script(_HAND_BACK)
        score = await self._hand_back(
            keys=[in_progress_key_prefix + job_id, retry_key_prefix + job_id, self.queue_name], args=[job_id]
        )
        self.jobs_handed_back += 1
        if score is None:
            log.warning("a handed-back job is no longer queued", job_id=job_id, queue=self.queue_name)

    async def async_run(self) -> None:
        """arq's, ending quietly after a graceful stop (arq's own ends in a CancelledError)."""
        self.main_task = self.loop.create_task(self.main())
        try:
            await self.main_task
        except (asyncio.CancelledError, _Stopped):
            if not self._stopped:
                raise
        if self._shutdown is not None:  # a burst run may end before the hand-back did
            await self._shutdown


TaskT = TypeVar("TaskT")
TaskT_contra = TypeVar("TaskT_contra", contravariant=True)


class TaskRuntime(Protocol[TaskT_contra]):
    """What a queue's job function needs from its process: built once at start-up, shared by Workers."""

    keys: Keys
    redis: ArqRedis
    policies: Policies

    async def run(self, task: TaskT_contra, task_id: str, job_try: int) -> str: ...

    async def give_up(self, task: TaskT_contra, task_id: str, reason: str) -> str:
        """Settle a task that crashed on every try, with the reason: a job is dead-lettered."""
        ...


def job_function(decoder: msgspec.msgpack.Decoder[TaskT]) -> WorkerCoroutine:
    """An arq job function for one message type: decode the task, hand it to this process's runtime.

    arq drops a job whose function raises anything but Retry, with nothing recorded, and drops a job
    past its max_tries (a worker killed mid-job uses a try) the same way. Here a crash is retried
    after a delay, and the try after `faults.max_job_tries` settles the task as given up instead
    of running it: a poison job ends in the dead letters with its reason, and holds up nothing.
    """

    async def run_task(ctx: dict[str, Any], raw: bytes) -> str:
        runtime: TaskRuntime[TaskT] = ctx[RUNTIME_KEY]
        task_id, job_try = ctx["job_id"], ctx.get("job_try", 1)
        faults = runtime.policies.faults
        task = decoder.decode(raw)
        if job_try > faults.max_job_tries:
            reason = f"given up: each try crashed or lost its worker (faults.max_job_tries = {faults.max_job_tries})"
            return await runtime.give_up(task, task_id, reason)
        try:
            return await runtime.run(task, task_id, job_try)
        except Exception as e:
            # Redis lost mid-job is retried the same way (arq would drop the job on any other
            # exception), and counts as a try: a job that meets three outages is rare and says so.
            if isinstance(e, REDIS_DOWN):
                log.warning("redis lost during the job", task_id=task_id, job_try=job_try, error=str(e))
            else:
                # The traceback as plain text: a process that never configured structlog would render
                # it with rich and every frame's locals, blocking the event loop for minutes.
                log.error("the job crashed the worker code", task_id=task_id, job_try=job_try,
                          exception=traceback.format_exc())  # fmt: skip
            if job_try >= faults.max_job_tries:
                reason = f"crashed on each of {job_try} tries, last with {type(e).__name__}: {e}"
                return await runtime.give_up(task, task_id, reason)
            raise Retry(defer=faults.crash_retry_delay_s * job_try) from e

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
    grace_period: float = DEFAULT_GRACE_PERIOD_S,
    gate: ClaimGate | None = None,
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
        job_timeout=runtime.policies.limits.job_timeout_s + runtime.policies.limits.settle_margin_s,
        keep_result=0,
        max_tries=runtime.policies.faults.max_job_tries + 1,  # the last try only gives up (job_function)
        job_serializer=serialize_arq,
        job_deserializer=deserialize_arq,
        ctx={RUNTIME_KEY: runtime},
        handle_signals=handle_signals,
        grace_period=grace_period,
        gate=gate,
        health_check_key=f"{queue}:health-check",
        health_check_interval=30,
        log_results=False,
    )
