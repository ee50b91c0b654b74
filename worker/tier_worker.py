"""The tier worker: an arq Worker on one tier's queue that calls that tier's model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq import Worker
from arq.connections import ArqRedis

from ladder.keys import Keys
from ladder.messages import TierTask
from ladder.queueing import TIER_FUNCTION
from policies.answer_checks import AnswerChecker
from policies.config import Policies
from policies.prices import PriceBook
from worker.arq_worker import queue_worker
from worker.provider import Completion, CompletionRequest, ProviderError
from worker.providers import ProviderPool
from worker.settle import Settler
from worker.steps import AnswerChecks, Call, Priced, Step, compose, logged, timed


class TierRuntime:
    """Everything a tier worker process needs, built once at start-up and shared by its Workers."""

    def __init__(
        self,
        policies: Policies,
        redis: ArqRedis,
        keys: Keys,
        providers: ProviderPool,
        extra_steps: Sequence[Step] = (),
    ) -> None:
        self.policies = policies
        self.redis = redis
        self.keys = keys
        self.providers = providers
        self.prices = PriceBook(policies)
        self.settler = Settler(redis, keys, policies)
        checks = AnswerChecks(AnswerChecker(policies.escalation))
        steps: list[Step] = [timed, logged, *extra_steps, checks, Priced(self.prices)]
        self._handler = compose(steps, self._call_provider)

    async def _call_provider(self, call: Call) -> Completion:
        return await self.providers.get(call.candidate.provider).complete(call.request)

    async def run(self, task: TierTask, task_id: str, job_try: int = 1) -> str:
        # Only a re-run (arq's try > 1: a worker died mid-job) can find its attempt already settled.
        if job_try > 1 and await self.settler.already_settled(task_id):
            return "already settled"
        tier = self.policies.tier(task.route.tier)
        candidate = tier.candidates[0]
        job = task.job
        request = CompletionRequest(
            model=candidate.model,
            messages=job.conversation(),
            max_output_tokens=job.max_output_tokens,
            json_mode=job.json_schema is not None,
        )
        call = Call(task, tier.name, candidate, request, number=len(task.attempts) + 1)
        completion: Completion | None = None
        error: ProviderError | None = None
        try:
            completion = await self._handler(call)
        except ProviderError as e:
            error = e
        simulated = self.providers.is_simulated(candidate.provider)
        settled = await self.settler.settle(task_id, call, completion, error, simulated)
        return settled.status.value


def tier_worker(runtime: TierRuntime, tier: str, **options: Any) -> Worker:
    """The Worker on one tier's queue; options as for worker.arq_worker.queue_worker."""
    return queue_worker(runtime, runtime.keys.queue(tier), TIER_FUNCTION, **options)
