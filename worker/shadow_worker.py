"""The shadow worker: a sample of lower-tier answers checked against the shadow tier's answer.

worker/settle.py queues a ShadowTask when a sampled job settles ok below the shadow tier. This
worker asks the shadow tier the same job, compares the two answers (policies/shadow.py; free text
goes to a judge model), and writes in one transaction an outcome row per shadow-side call, the
score (a labelled example for the loop) and the settled mark. The job's own record and rows are
never touched. Shadow calls wait for the same shared rate limits as the tier workers but take no
budget hold: they are Ladder's cost, charged to the customer only with shadow.bill_customer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import structlog
from arq import Worker
from arq.connections import ArqRedis

from ladder.keys import Keys
from ladder.messages import (
    ENCODER,
    SHADOW_TASK_DECODER,
    Message,
    Outcome,
    RouteSource,
    Routing,
    Score,
    ScoreSource,
    ShadowTask,
    Status,
    TierTask,
    task_score,
)
from ladder.queueing import SHADOW_FUNCTION
from policies.answer_checks import AnswerChecker
from policies.config import SHADOW_QUEUE, Candidate, Policies
from policies.prices import PriceBook
from policies.shadow import JUDGE, JUDGE_RUBRIC, agrees, compare_answers, judge_messages, parse_judge
from worker.arq_worker import queue_worker
from worker.budget import BudgetBook
from worker.metrics import Metrics
from worker.provider import Completion, CompletionRequest, ProviderError, RateLimited, TimedOut
from worker.providers import ProviderPool
from worker.rate_limiter import RateLimiter, RateLimitStep
from worker.settle import ERROR_MESSAGE_CHARS, SETTLED_TTL_S, outcome_event
from worker.steps import Call, Priced, call_before, compose, logged, timed

log = structlog.get_logger("ladder.shadow")

JUDGE_MAX_OUTPUT_TOKENS = 200  # {"score": n, "reason": "a few words"} with room to spare
REFERENCE_CALL, JUDGE_CALL = "shadow", "judge"  # the kinds of shadow-side call, in their rows' event ids


@dataclass(frozen=True)
class Judgement:
    """How the lower tier's answer fared against the reference, however it was found out."""

    score: float  # 0..1; 0 when routing is UNKNOWN
    routing: Routing
    method: str
    detail: str


@dataclass
class ShadowCalls:
    """The shadow-side calls of one task so far, as outcome rows, and when their time runs out."""

    task: TierTask
    deadline: float  # time.monotonic()
    rows: list[Outcome] = field(default_factory=list)


def shadow_score(shadow: ShadowTask, judged: Judgement, shadow_tier: str, text_chars: int) -> Score:
    """The score on the lower tier's answer; right labels the job with that tier, wrong with the shadow tier."""
    job = shadow.task.job
    label = {Routing.RIGHT: shadow.tier, Routing.WRONG: shadow_tier}.get(judged.routing, "")
    return task_score(
        shadow.task,
        event_id=f"{job.id}#shadow",
        tier=shadow.tier,
        source=ScoreSource.SHADOW,
        score=judged.score,
        routing=judged.routing,
        label_tier=label,
        method=judged.method,
        detail=judged.detail[:ERROR_MESSAGE_CHARS],
        text=job.text()[:text_chars],
        correction="",
        at=time.time(),
    )


def _failure_status(error: ProviderError, retries_left: bool, last_candidate: bool) -> Status:
    if isinstance(error, RateLimited) and retries_left:
        return Status.RETRIED
    if last_candidate or isinstance(error, TimedOut):  # nobody left to ask, or no time left to ask them
        return Status.DEAD
    return Status.FAILOVER


class ShadowRuntime:
    """Everything a shadow worker process needs, built once at start-up."""

    def __init__(
        self, policies: Policies, redis: ArqRedis, keys: Keys, providers: ProviderPool, metrics: Metrics | None = None
    ) -> None:
        self.policies = policies
        self.metrics = metrics or Metrics()
        self.redis = redis
        self.keys = keys
        self.providers = providers
        self.tier = policies.tier(policies.shadow_tier)
        shadow = policies.shadow
        self.judge = (
            Candidate(shadow.judge_provider, shadow.judge_model) if shadow.judge_provider else self.tier.candidates[0]
        )
        self.rubric = shadow.rubric or JUDGE_RUBRIC
        self.checker = AnswerChecker(policies.escalation)
        self.budget = BudgetBook.for_policies(redis, keys, policies) if shadow.bill_customer else None
        limits = RateLimitStep(RateLimiter(redis, keys.prefix), policies, providers.accounts, self.metrics)
        # No budget step: a shadow call is never refused for the customer's budget. It is not the
        # customer's cost unless bill_customer, and then it is counted once the calls are done.
        self._handler = compose([logged, Priced(PriceBook(policies)), limits, timed], self._call_provider)

    async def _call_provider(self, call: Call) -> Completion:
        return await self.providers.complete(call.candidate.provider, call.request)

    async def run(self, shadow: ShadowTask, task_id: str, job_try: int = 1) -> str:
        """Ask the shadow tier the job, judge the lower tier's answer against it, and record both."""
        # Only a re-run (arq's try > 1: a worker died mid-task) can find the task already settled.
        if job_try > 1 and await self.redis.exists(self.keys.settled(task_id)):
            return "already settled"
        job = shadow.task.job
        calls = ShadowCalls(shadow.task, time.monotonic() + self.policies.limits.job_timeout_s)
        reference = await self._ask(
            calls, REFERENCE_CALL, self.tier.candidates, job.conversation(), job.max_output_tokens,
            json_mode=job.json_schema is not None,
        )  # fmt: skip
        score = None
        if reference is not None:
            judged = await self._judge(shadow, reference, calls)
            score = shadow_score(shadow, judged, self.tier.name, self.policies.learning.text_chars)
        await self._settle(task_id, shadow, calls.rows, score)
        if score is None:
            log.warning("shadow reference failed on every candidate", job_id=job.id, calls=len(calls.rows))
            return "no reference"
        log.info("shadow scored", job_id=job.id, tier=shadow.tier, shadow_tier=self.tier.name, score=score.score,
                 routing=score.routing.name, method=score.method, calls=len(calls.rows))  # fmt: skip
        return score.routing.name.lower()

    async def give_up(self, shadow: ShadowTask, task_id: str, reason: str) -> str:
        """A shadow comparison is a sample, not the customer's job: one that keeps crashing is dropped."""
        await self.redis.set(self.keys.settled(task_id), b"1", ex=SETTLED_TTL_S)
        log.error("shadow comparison given up", job_id=shadow.task.job.id, reason=reason)
        return "gave up"

    async def _judge(self, shadow: ShadowTask, answered: Completion, calls: ShadowCalls) -> Judgement:
        """Compare without a model where the answers have a checkable shape; else ask the judge. A
        reference that fails the tier workers' own checks (refused, empty, invalid JSON...) judges nothing."""
        job, reference = shadow.task.job, answered.text
        problem = self.checker.problem(reference, answered.finish_reason, job.json_schema)
        if problem is not None:
            return Judgement(0.0, Routing.UNKNOWN, "reference", f"the reference answer failed the checks: {problem[0]}")
        compared = compare_answers(job.task, shadow.answer, reference)
        if compared is not None:
            return self._judgement(compared.score, compared.method, compared.detail)
        messages = judge_messages(shadow.task.job.text(), reference=reference, candidate=shadow.answer,
                                  rubric=self.rubric)  # fmt: skip
        answer = await self._ask(calls, JUDGE_CALL, [self.judge], messages, JUDGE_MAX_OUTPUT_TOKENS, json_mode=True)
        verdict = parse_judge(answer.text) if answer is not None else None
        if verdict is None:
            why = "judge call failed" if answer is None else "judge answer unusable: no single valid score in it"
            return Judgement(0.0, Routing.UNKNOWN, JUDGE, why)
        return self._judgement(verdict.score, JUDGE, verdict.reason)

    def _judgement(self, score: float, method: str, detail: str) -> Judgement:
        right = agrees(score, self.policies.shadow.agree_score)
        return Judgement(score, Routing.RIGHT if right else Routing.WRONG, method, detail)

    async def _ask(
        self,
        calls: ShadowCalls,
        kind: str,
        candidates: Sequence[Candidate],
        messages: list[Message],
        max_output_tokens: int,
        json_mode: bool,
    ) -> Completion | None:
        """Ask the candidates in order until one answers: a 429 asks the same model again (up to
        faults.rate_limit_retries times), any other failure the next candidate. Each call is a row."""
        retries = self.policies.faults.rate_limit_retries
        for i, candidate in enumerate(candidates):
            request = CompletionRequest(candidate.model, messages, max_output_tokens, json_mode)
            for retry in range(retries + 1):
                call = Call(calls.task, self.tier.name, candidate, request, number=len(calls.rows) + 1)
                completion, error = await self._attempt(call, calls.deadline)
                if error is None:
                    calls.rows.append(self._row(call, kind, Status.OK, None, completion))
                    return completion
                status = _failure_status(error, retry < retries, i == len(candidates) - 1)
                calls.rows.append(self._row(call, kind, status, error, None))
                if status is Status.DEAD:
                    return None
                if status is Status.FAILOVER:
                    break
        return None

    async def _attempt(self, call: Call, deadline: float) -> tuple[Completion | None, ProviderError | None]:
        out_of_time = f"the shadow evaluation's time budget of {self.policies.limits.job_timeout_s}s ran out"
        return await call_before(self._handler, call, deadline, out_of_time)

    def _row(
        self, call: Call, kind: str, status: Status, error: ProviderError | None, completion: Completion | None
    ) -> Outcome:
        """A shadow-side call's outcome row: never final, and with an event id of its own, so it can
        neither replace nor be counted as one of the job's own attempts."""
        row = outcome_event(call, status, error, completion, self.providers.is_simulated(call.candidate.provider))
        return msgspec.structs.replace(
            row,
            event_id=f"{call.task.job.id}#{kind}#{call.number}",
            route_source=RouteSource.SHADOW,
            intended_tier=call.tier,
            final=False,
        )

    async def _settle(self, task_id: str, shadow: ShadowTask, rows: list[Outcome], score: Score | None) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for row in rows:
            pipe.xadd(self.keys.outcomes, {"e": ENCODER.encode(row)})
        if score is not None:
            pipe.xadd(self.keys.outcomes, {"s": ENCODER.encode(score)})
        pipe.set(self.keys.settled(task_id), b"1", ex=SETTLED_TTL_S)
        await pipe.execute()
        for row in rows:
            self.metrics.record_outcome(row)
        if self.budget is not None:  # after the transaction: a crash in between under-charges, never twice
            await self.budget.charge(shadow.task.job.customer, sum((r.cost for r in rows), Decimal(0)))


def shadow_worker(runtime: ShadowRuntime, **options: Any) -> Worker:
    """The Worker on the shadow queue; options as for worker.arq_worker.queue_worker."""
    return queue_worker(
        runtime, runtime.keys.queue(SHADOW_QUEUE), SHADOW_FUNCTION, decoder=SHADOW_TASK_DECODER, **options
    )
