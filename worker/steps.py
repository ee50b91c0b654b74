"""What happens around a provider call, as small composed steps.

A step is `async (call, proceed) -> Completion`; the first step in the list is the outermost.
Rate limits, budgets and answer checks join this list as steps of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import structlog

from ladder.messages import Job, TierTask
from policies.answer_checks import AnswerChecker
from policies.config import Candidate
from policies.prices import PriceBook
from worker.provider import BadAnswer, Completion, CompletionRequest, ProviderError, TimedOut

log = structlog.get_logger("ladder.call")


@dataclass
class Call:
    task: TierTask
    tier: str
    candidate: Candidate
    request: CompletionRequest
    number: int  # the job's attempt number, from 1, across tiers
    started_at: float = 0.0
    latency_ms: float = 0.0
    cost: Decimal = Decimal(0)
    counterfactual_cost: Decimal = Decimal(0)
    middle_tier_cost: Decimal = Decimal(0)
    sync_cost: Decimal = Decimal(0)  # the same tokens at the model's synchronous price (cost, but on the batch lane)


def request_for(job: Job, model: str) -> CompletionRequest:
    """The request that asks `model` for the job's answer, on either lane."""
    return CompletionRequest(
        model=model,
        messages=job.conversation(),
        max_output_tokens=job.max_output_tokens,
        json_mode=job.json_schema is not None,
    )


Handler = Callable[[Call], Awaitable[Completion]]
Step = Callable[[Call, Handler], Awaitable[Completion]]


def compose(steps: Sequence[Step], innermost: Handler) -> Handler:
    handler = innermost
    for step in reversed(steps):
        handler = partial(step, proceed=handler)  # type: ignore[call-arg]
    return handler


async def call_before(
    handler: Handler, call: Call, deadline: float, out_of_time: str
) -> tuple[Completion | None, ProviderError | None]:
    """The call's answer or its error; running past `deadline` (time.monotonic()) is a TimedOut
    saying `out_of_time`, so a runtime settles its own failure before arq's job timeout cancels it."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await handler(call), None
    except ProviderError as e:
        return None, e
    except TimeoutError:
        return None, TimedOut(out_of_time)


async def timed(call: Call, proceed: Handler) -> Completion:
    call.started_at = time.time()
    t0 = time.perf_counter()
    try:
        return await proceed(call)
    finally:
        call.latency_ms = (time.perf_counter() - t0) * 1000


class Priced:
    """Prices the real usage the provider reported, and the same tokens on the top tier."""

    def __init__(self, prices: PriceBook) -> None:
        self._prices = prices

    async def __call__(self, call: Call, proceed: Handler) -> Completion:
        completion = await proceed(call)
        call.cost = self._prices.cost(call.candidate, completion.input_tokens, completion.output_tokens)
        call.sync_cost = call.cost
        call.counterfactual_cost = self._prices.counterfactual_cost(completion.input_tokens, completion.output_tokens)
        call.middle_tier_cost = self._prices.middle_tier_cost(completion.input_tokens, completion.output_tokens)
        return completion


class AnswerChecks:
    """Turns an answer that came back 200 but must not be kept into BadAnswer (placed outside
    Priced, so the answer's tokens are priced before it is judged)."""

    def __init__(self, checker: AnswerChecker) -> None:
        self._checker = checker

    async def __call__(self, call: Call, proceed: Handler) -> Completion:
        completion = await proceed(call)
        found = self._checker.problem(completion.text, completion.finish_reason, call.task.job.json_schema)
        if found is not None:
            raise BadAnswer(found[0], found[1], completion)
        return completion


async def logged(call: Call, proceed: Handler) -> Completion:
    fields = {
        "job_id": call.task.job.id,
        "tier": call.tier,
        "model": call.candidate.model,
        "attempt": call.number,
    }
    try:
        completion = await proceed(call)
    except ProviderError as e:
        log.warning("call failed", **fields, error_class=e.error_class, error=str(e)[:300])
        raise
    log.debug("call ok", **fields, input_tokens=completion.input_tokens, output_tokens=completion.output_tokens)
    return completion
