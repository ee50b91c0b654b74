"""The producer: rules pass, then pipelined enqueue. A Python API and the engine of `ladder enqueue`."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import Job, Rejection, TierTask
from ladder.queueing import Enqueuer
from policies.config import Policies
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


class Producer:
    def __init__(self, redis: Redis, policies: Policies, keys: Keys) -> None:
        self._policies = policies
        self._router = RuleRouter(policies)
        self._validator = JobValidator(policies)
        self._enqueuer = Enqueuer(redis, keys, policies.limits.result_ttl_s * 1000)

    def task_for(self, job: Job, batch: str) -> TierTask:
        route = self._router.route(job)
        return TierTask(job=job, batch=batch, route=route, first_tier=route.tier, strategy=self._policies.strategy)

    async def submit(self, jobs: Iterable[Job] | AsyncIterable[Job], batch: str) -> SubmitReport:
        """Route and enqueue many jobs. Jobs are checked like file lines; a bad one raises ValueError."""
        report = SubmitReport(batch=batch)
        routed: Counter[str] = Counter()
        chunk: list[TierTask] = []
        async for job in _aiter(jobs):
            problem = self._validator.problem(job)
            if problem is not None:
                raise ValueError(f"job {job.id!r}: {problem}")
            report.lines += 1
            chunk.append(self.task_for(job, batch))
            if len(chunk) >= CHUNK:
                await self._flush(chunk, report, routed)
        await self._flush(chunk, report, routed)
        report.routed = dict(routed)
        return report

    async def submit_file(
        self,
        path: Path,
        batch: str,
        on_reject: Callable[[Rejection], None],
        on_progress: Callable[[int], None] | None = None,
    ) -> SubmitReport:
        """Stream a JSONL file into the queues; bad lines go to `on_reject` and the rest go through."""
        report = SubmitReport(batch=batch)
        routed: Counter[str] = Counter()
        chunk: list[TierTask] = []
        for number, raw, done in read_lines(path):
            report.lines += 1
            parsed = self._validator.parse_line(number, raw)
            if isinstance(parsed, Rejection):
                report.rejected += 1
                on_reject(parsed)
                continue
            chunk.append(self.task_for(parsed, batch))
            if len(chunk) >= CHUNK:
                await self._flush(chunk, report, routed)
                if on_progress is not None:
                    on_progress(done)
        await self._flush(chunk, report, routed)
        report.routed = dict(routed)
        return report

    async def _flush(self, chunk: list[TierTask], report: SubmitReport, routed: Counter[str]) -> None:
        if not chunk:
            return
        flags = await self._enqueuer.enqueue_new(chunk[0].batch, chunk)
        routed.update(t.route.tier for t, new in zip(chunk, flags, strict=True) if new)
        accepted = sum(flags)
        report.accepted += accepted
        report.duplicates += len(chunk) - accepted
        chunk.clear()


async def _aiter(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterable[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
