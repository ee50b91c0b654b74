"""The producer: rules pass, then pipelined enqueue. A Python API and the engine of `ladder enqueue`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import Job, Lane, Rejection, TierTask
from ladder.queueing import Enqueuer, to_batch_lane
from policies.config import Policies
from policies.experiments import assign
from policies.lanes import Lanes
from policies.rules import RuleRouter
from producer.intake import JobValidator, read_lines

CHUNK = 500


class SubmitReport(msgspec.Struct):
    batch: str
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    routed: dict[str, int] = {}


@dataclass
class _Tally:
    """What a submit counts as its chunks settle."""

    report: SubmitReport
    on_duplicate: Callable[[int, str], None] | None = None
    routed: Counter[str] = field(default_factory=Counter)

    def settle(self, sent: list[tuple[int, TierTask]], flags: list[bool]) -> None:
        for (number, task), new in zip(sent, flags, strict=True):
            if new:
                self.routed[f"batch:{task.route.tier}" if to_batch_lane(task) else task.route.tier] += 1
                self.report.accepted += 1
            else:
                self.report.duplicates += 1
                if self.on_duplicate is not None:
                    self.on_duplicate(number, task.job.id)

    def done(self) -> SubmitReport:
        self.report.routed = dict(self.routed)
        return self.report


class Producer:
    """Duplicate ids: the first occurrence of an id is queued, and a later one, in the same file or
    in any later submit while the first one's record lives (limits.result_ttl_s), is skipped and
    counted as a duplicate, not rejected, so that submitting a file again after a crash is safe.

    `lane`: every job on that lane (`--lane`); None: the batch lane for jobs whose deadline is far
    enough away (policies/lanes.py), the sync lane for the rest."""

    def __init__(self, redis: Redis, policies: Policies, keys: Keys, lane: Lane | None = None) -> None:
        self._policies = policies
        self._lane = lane
        self._lanes = Lanes(policies)
        self._routers = {name: RuleRouter(policies.for_strategy(name)) for name in policies.strategy_names}
        self._validator = JobValidator(policies)
        self._enqueuer = Enqueuer(redis, keys, policies.limits.result_ttl_s * 1000)
        # One chunk in flight while the next is parsed: Redis and Python work at the same time,
        # and chunks still land in file order.
        self._inflight: tuple[asyncio.Task[list[bool]], list[tuple[int, TierTask]]] | None = None
        # Until a call has come back, the Lua script may not be in Redis yet (NOSCRIPT, load, call
        # again): a chunk sent meanwhile could land first, and a later duplicate win over the first.
        self._overlap = False

    def task_for(self, job: Job, batch: str) -> TierTask:
        """The job routed by the rules of its strategy: the default one, or its experiment arm's."""
        chosen = assign(self._policies.experiments, self._policies.routing_strategy, job)
        route = self._routers[chosen.strategy].route(job)
        lane = self._lanes.chosen(job, self._lane)
        return TierTask(
            job=job,
            batch=batch,
            route=route,
            first_tier=route.tier,
            strategy=chosen.strategy,
            experiment=chosen.experiment,
            arm=chosen.arm,
            lane=self._lanes.on_tier(lane, route.tier),
        )

    async def submit(self, jobs: Iterable[Job] | AsyncIterable[Job], batch: str) -> SubmitReport:
        """Route and enqueue many jobs, checked like file lines.

        A bad job raises ValueError naming it; the jobs before it are enqueued, none after it.
        """
        tally = _Tally(SubmitReport(batch=batch))
        chunk: list[tuple[int, TierTask]] = []
        try:
            async for job in _aiter(jobs):
                problem = self._validator.problem(job)
                if problem is not None:
                    raise ValueError(f"job {job.id[:80]!r}: {problem}")
                tally.report.lines += 1
                chunk.append((tally.report.lines, self.task_for(job, batch)))
                if len(chunk) >= CHUNK:
                    await self._flush(chunk, tally)
        finally:
            await self._flush(chunk, tally, last=True)
        return tally.done()

    async def submit_file(
        self,
        path: Path,
        batch: str,
        on_reject: Callable[[Rejection], None],
        on_progress: Callable[[int], None] | None = None,
        on_duplicate: Callable[[int, str], None] | None = None,
    ) -> SubmitReport:
        """Stream a JSONL file into the queues; bad lines go to `on_reject` and the rest go through.

        `on_duplicate` hears (line number, job id) of each line skipped because its id was queued before.
        """
        tally = _Tally(SubmitReport(batch=batch), on_duplicate)
        chunk: list[tuple[int, TierTask]] = []
        for number, raw, done in read_lines(path, self._validator.max_line_bytes):
            tally.report.lines += 1
            parsed = self._validator.parse_line(number, raw)
            if isinstance(parsed, Rejection):
                tally.report.rejected += 1
                on_reject(parsed)
                continue
            chunk.append((number, self.task_for(parsed, batch)))
            if len(chunk) >= CHUNK:
                await self._flush(chunk, tally)
                if on_progress is not None:
                    on_progress(done)
        await self._flush(chunk, tally, last=True)
        return tally.done()

    async def _flush(self, chunk: list[tuple[int, TierTask]], tally: _Tally, last: bool = False) -> None:
        """Send `chunk` and settle the chunk sent before it; with `last`, settle this one too."""
        last = last or not self._overlap
        previous, self._inflight = self._inflight, None
        if chunk:
            sent = list(chunk)
            tasks = [task for _, task in sent]
            self._inflight = (asyncio.create_task(self._enqueuer.enqueue_new(tasks[0].batch, tasks)), sent)
            chunk.clear()
        for inflight in (previous, self._inflight if last else None):
            if inflight is not None:
                tally.settle(inflight[1], await inflight[0])
                self._overlap = True
        if last:
            self._inflight = None


async def _aiter(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterable[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
