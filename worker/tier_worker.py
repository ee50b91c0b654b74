"""The tier worker: an arq Worker on one tier's queue that calls that tier's model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from arq import Worker
from arq.connections import ArqRedis

from ladder.keys import Keys
from ladder.messages import Attempt, Status, TierTask
from ladder.queueing import TIER_FUNCTION
from policies.answer_checks import AnswerChecker
from policies.config import Candidate, Policies
from policies.prices import PriceBook
from worker.arq_worker import queue_worker
from worker.budget import BudgetBook, budget_steps
from worker.metrics import Metrics
from worker.provider import (
    BadAnswer,
    BadRequest,
    Completion,
    Overloaded,
    ProviderError,
    RateLimited,
    TimedOut,
    Transient,
)
from worker.providers import ProviderPool
from worker.rate_limiter import RateLimiter, RateLimitStep
from worker.settle import Settler
from worker.steps import AnswerChecks, Call, Priced, Step, call_before, compose, logged, request_for, timed


class TierRuntime:
    """Everything a tier worker process needs, built once at start-up and shared by its Workers."""

    def __init__(
        self,
        policies: Policies,
        redis: ArqRedis,
        keys: Keys,
        providers: ProviderPool,
        extra_steps: Sequence[Step] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.policies = policies
        self.redis = redis
        self.keys = keys
        self.providers = providers
        self.prices = PriceBook(policies)
        self.metrics = metrics or Metrics()
        self.settler = Settler(redis, keys, policies, self.metrics)
        checks = AnswerChecks(AnswerChecker(policies.escalation))
        limits = RateLimitStep(RateLimiter(redis, keys.prefix), policies, providers.accounts, self.metrics)
        budget = budget_steps(BudgetBook.for_policies(redis, keys, policies), policies, self.prices)
        # Outermost first: the budget settles the final, priced cost; checks judge a priced answer;
        # the limiter's wait is not the call's latency.
        steps: list[Step] = [logged, *extra_steps, *budget, checks, Priced(self.prices), limits, timed]
        self._handler = compose(steps, self._call_provider)

    async def _call_provider(self, call: Call) -> Completion:
        return await self.providers.complete(call.candidate.provider, call.request)

    async def run(self, task: TierTask, task_id: str, job_try: int = 1) -> str:
        """Ask the tier's candidates in order until one answers, then settle. The one place that
        retries: a 429 waits out the lane and asks the same model again; an overloaded or failing
        model cools down and the next candidate is asked; the tier's last failure escalates."""
        # Only a re-run (arq's try > 1: a worker died mid-job) can find its attempt already settled.
        if job_try > 1 and await self.settler.already_settled(task_id):
            return "already settled"
        tier = self.policies.tier(task.route.tier)
        earlier: list[Attempt] = []
        number = len(task.attempts) + 1
        # The tier's time budget ends before arq's job timeout (which would cancel the job with
        # nothing recorded): past it, the last failure settles the attempt and the job moves on.
        deadline = time.monotonic() + self.policies.limits.job_timeout_s
        candidates = await self._healthy(tier.candidates)
        for i, candidate in enumerate(candidates):
            for retry in range(self.policies.faults.rate_limit_retries + 1):
                call = self._call(task, tier.name, candidate, number)
                number += 1
                completion, error = await self._attempt(call, deadline)
                if error is None or isinstance(error, (BadAnswer, BadRequest, TimedOut)):
                    # ContextTooLong is not among these: the next candidate, or tier, may have a larger window.
                    if isinstance(error, TimedOut) and call.started_at:  # out of time in the call, not in a lane wait
                        await self._cool_down(call.candidate)
                    return await self._settle(task_id, call, completion, error, earlier)
                if isinstance(error, RateLimited) and retry < self.policies.faults.rate_limit_retries:
                    earlier.append(await self._record(call, Status.RETRIED, error))
                    continue
                if isinstance(error, (Overloaded, Transient)):  # the model called (a budget downgrade may change it)
                    await self._cool_down(call.candidate)
                if i == len(candidates) - 1:
                    return await self._settle(task_id, call, None, error, earlier)
                earlier.append(await self._record(call, Status.FAILOVER, error))
                break
        raise AssertionError("unreachable: _healthy returns at least one candidate")

    async def give_up(self, task: TierTask, task_id: str, reason: str) -> str:
        return "dead" if await self.settler.give_up(task_id, task, reason) else "already settled"

    async def _cool_down(self, candidate: Candidate) -> None:
        """Every worker skips the model for faults.cooldown_s (while another candidate is healthy); 0: never."""
        if self.policies.faults.cooldown_s > 0:  # Redis refuses a 0 s expiry: the job would crash
            await self.redis.set(self.keys.cooldown(_model(candidate)), b"1", ex=self.policies.faults.cooldown_s)

    async def _healthy(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates not cooling down, in order; all of them when every one is (someone must try)."""
        cooling = await self.redis.mget([self.keys.cooldown(_model(c)) for c in candidates])
        healthy = [c for c, cold in zip(candidates, cooling, strict=True) if cold is None]
        return healthy or list(candidates)

    def _call(self, task: TierTask, tier: str, candidate: Candidate, number: int) -> Call:
        return Call(task, tier, candidate, request_for(task.job, candidate.model), number=number)

    async def _attempt(self, call: Call, deadline: float) -> tuple[Completion | None, ProviderError | None]:
        budget = self.policies.limits.job_timeout_s
        return await call_before(self._handler, call, deadline, f"the tier's time budget of {budget}s ran out")

    async def _record(self, call: Call, status: Status, error: ProviderError) -> Attempt:
        return await self.settler.record(call, status, error, self.providers.is_simulated(call.candidate.provider))

    async def _settle(
        self,
        task_id: str,
        call: Call,
        completion: Completion | None,
        error: ProviderError | None,
        earlier: list[Attempt],
    ) -> str:
        simulated = self.providers.is_simulated(call.candidate.provider)
        status = await self.settler.settle(task_id, call, completion, error, simulated, earlier)
        return status.value


def _model(candidate: Candidate) -> str:
    return f"{candidate.provider}/{candidate.model}"


def tier_worker(runtime: TierRuntime, tier: str, **options: Any) -> Worker:
    """The Worker on one tier's queue; options as for worker.arq_worker.queue_worker."""
    return queue_worker(runtime, runtime.keys.queue(tier), TIER_FUNCTION, **options)
