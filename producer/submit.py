"""The producer: rules pass, then pipelined enqueue. A Python API and the engine of `ladder enqueue`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import Job, Rejection, TierTask
from ladder.queueing import Enqueuer
from policies.config import Policies
from policies.experiments import assign
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
        self._routers = {name: RuleRouter(policies.for_strategy(name)) for name in policies.strategy_names}
        self._validator = JobValidator(policies)
        self._enqueuer = Enqueuer(redis, keys, policies.limits.result_ttl_s * 1000)
        # One chunk in flight while the next is parsed: Redis and Python work at the same time,
        # and chunks still land in file order.
        self._inflight: tuple[asyncio.Task[list[bool]], list[TierTask]] | None = None

    def task_for(self, job: Job, batch: str) -> TierTask:
        """The job routed by the rules of its strategy: the default one, or its experiment arm's."""
        chosen = assign(self._policies.experiments, self._policies.routing_strategy, job)
        route = self._routers[chosen.strategy].route(job)
        return TierTask(
            job=job,
            batch=batch,
            route=route,
            first_tier=route.tier,
            strategy=chosen.strategy,
            experiment=chosen.experiment,
            arm=chosen.arm,
        )

    async def submit(self, jobs: Iterable[Job] | AsyncIterable[Job], batch: str) -> SubmitReport:
        """Route and enqueue many jobs, checked like file lines.

        A bad job raises ValueError naming it; the jobs before it are enqueued, none after it.
        """
        report = SubmitReport(batch=batch)
        routed: Counter[str] = Counter()
        chunk: list[TierTask] = []
        try:
            async for job in _aiter(jobs):
                problem = self._validator.problem(job)
                if problem is not None:
                    raise ValueError(f"job {job.id!r}: {problem}")
                report.lines += 1
                chunk.append(self.task_for(job, batch))
                if len(chunk) >= CHUNK:
                    await self._flush(chunk, report, routed)
        finally:
            await self._flush(chunk, report, routed, last=True)
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
        await self._flush(chunk, report, routed, last=True)
        report.routed = dict(routed)
        return report

    async def _flush(
        self, chunk: list[TierTask], report: SubmitReport, routed: Counter[str], last: bool = False
    ) -> None:
        """Send `chunk` and settle the chunk sent before it; with `last`, settle this one too."""
        previous, self._inflight = self._inflight, None
        if chunk:
            sent = list(chunk)
            self._inflight = (asyncio.create_task(self._enqueuer.enqueue_new(sent[0].batch, sent)), sent)
            chunk.clear()
        for inflight in (previous, self._inflight if last else None):
            if inflight is None:
                continue
            flags = await inflight[0]
            routed.update(t.route.tier for t, new in zip(inflight[1], flags, strict=True) if new)
            report.accepted += sum(flags)
            report.duplicates += len(flags) - sum(flags)
        if last:
            self._inflight = None


async def _aiter(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterable[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
