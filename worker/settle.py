"""Settling an attempt: one Redis transaction writes the outcome event and moves the job on.

ok: the job record becomes final. failed: the job is queued one tier up with its attempt history,
or, on the top tier, goes to the dead-letter stream. Everything in one MULTI/EXEC, so an outcome
is streamed exactly when the job moved, and a task marked settled is never billed again.

A batch-lane request's result may be read more than once (a restarted lane process): `settle_once`
and `fall_back` (an unanswered request, back to its tier's sync queue) check the task's settled mark
inside the transaction (WATCH), so a second reading settles nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import WatchError

from ladder.keys import Keys
from ladder.messages import (
    ENCODER,
    Attempt,
    DeadLetter,
    JobRecord,
    Lane,
    Outcome,
    RouteDecision,
    RouteSource,
    Routing,
    Score,
    ScoreSource,
    ShadowTask,
    Status,
    TierTask,
    about_job,
    job_record,
    task_score,
)
from ladder.queueing import add_shadow, add_to_queue
from ladder.redact import redact
from policies.config import Policies
from policies.experiments import bucket
from policies.lanes import Lanes
from worker.metrics import Metrics
from worker.provider import BadAnswer, BadRequest, Completion, ProviderError
from worker.steps import Call

SETTLED_TTL_S = 7 * 24 * 3600
SHADOW_SALT = "shadow"
ERROR_MESSAGE_CHARS = 300
CRASHED = "crashed"  # the error class of a job given up after crashing Ladder's code or its worker


def _path_entry(attempt: Attempt) -> str:
    suffix = f"({attempt.error_class})" if attempt.error_class else ""
    return f"{attempt.tier}:{attempt.provider}/{attempt.model}:{attempt.status.value}{suffix}"


def _attempt(call: Call, status: Status, error: ProviderError | None, completion: Completion | None) -> Attempt:
    return Attempt(
        number=call.number,
        tier=call.tier,
        provider=call.candidate.provider,
        model=call.candidate.model,
        status=status,
        error_class=error.error_class if error else "",
        input_tokens=completion.input_tokens if completion else 0,
        output_tokens=completion.output_tokens if completion else 0,
        cost=call.cost,
    )


def outcome_event(
    call: Call, status: Status, error: ProviderError | None, completion: Completion | None, simulated: bool
) -> Outcome:
    task, job = call.task, call.task.job
    return Outcome(
        event_id=f"{job.id}#{call.number}",
        job_id=job.id,
        **about_job(task),
        route_source=task.route.source,
        intended_tier=task.first_tier,
        tier=call.tier,
        provider=call.candidate.provider,
        model=call.candidate.model,
        attempt=call.number,
        status=status,
        error_class=error.error_class if error else "",
        error_message=str(error)[:ERROR_MESSAGE_CHARS] if error else "",
        input_tokens=completion.input_tokens if completion else 0,
        output_tokens=completion.output_tokens if completion else 0,
        cost=call.cost,
        counterfactual_cost=call.counterfactual_cost,
        middle_tier_cost=call.middle_tier_cost,
        lane=task.lane,
        sync_cost=call.sync_cost,
        latency_ms=call.latency_ms,
        started_at=call.started_at,
        finished_at=time.time(),
        simulated=simulated,
        final=status in (Status.OK, Status.DEAD),
    )


def escalation_score(call: Call, error: BadAnswer, next_tier: str, text_chars: int) -> Score:
    """An answer that failed the checks labels its job for a higher tier: a labelled example for the loop."""
    job = call.task.job
    return task_score(
        call.task,
        event_id=f"{job.id}#escalation@{call.tier}",
        tier=call.tier,
        source=ScoreSource.ESCALATION,
        score=0.0,
        routing=Routing.WRONG,
        label_tier=next_tier,
        method=error.error_class,
        detail=str(error)[:ERROR_MESSAGE_CHARS],
        text=job.text()[:text_chars],
        correction="",
        at=time.time(),
    )


class Settler:
    def __init__(self, redis: Redis, keys: Keys, policies: Policies, metrics: Metrics | None = None) -> None:
        self._redis = redis
        self._metrics = metrics or Metrics()
        self._keys = keys
        self._policies = policies
        self._record_ttl_ms = policies.limits.result_ttl_s * 1000
        self._lanes = Lanes(policies)
        shadow = policies.shadow
        self._shadowed = frozenset(policies.shadowed_tiers()) if shadow.enabled and shadow.sample > 0 else frozenset()

    def shadowed(self, tier: str, job_id: str) -> bool:
        """Whether this job's answer from `tier` is sampled for shadow evaluation: a hash of the job
        id, so the sample rate holds over any set of ids and a re-run samples the same jobs."""
        return tier in self._shadowed and bucket(SHADOW_SALT, job_id) < self._policies.shadow.sample

    def _status(self, tier: str, error: ProviderError | None) -> Status:
        if error is None:
            return Status.OK
        if isinstance(error, BadRequest):
            return Status.DEAD  # a malformed job fails on every tier: no escalation
        if self._policies.next_tier(tier) is not None:
            return Status.ESCALATED
        keep = self._policies.escalation.keep_on_top_tier
        if isinstance(error, BadAnswer) and error.error_class in keep:
            return Status.OK  # the top tier's best answer; its error class stays on the row as a flag
        return Status.DEAD

    async def record(self, call: Call, status: Status, error: ProviderError, simulated: bool) -> Attempt:
        """An attempt that does not move the job (retried, failed over): its row, and its entry for the path."""
        outcome = outcome_event(call, status, error, None, simulated)
        await self._redis.xadd(self._keys.outcomes, {"e": ENCODER.encode(outcome)})
        self._metrics.record_outcome(outcome)
        return _attempt(call, status, error, None)

    async def already_settled(self, task_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.settled(task_id)))

    async def give_up(self, task_id: str, task: TierTask, reason: str) -> bool:
        """A job that crashed Ladder's own code, or its worker, on every try: dead-lettered with the
        reason in one transaction, like a settle, with one final outcome row of no cost (a crashed
        run wrote none). False when an earlier run had settled it after all."""
        if await self.already_settled(task_id):
            return False
        reason = redact(reason)  # an exception's message may quote a key or a URL's password
        job, tier, now = task.job, task.route.tier, time.time()
        outcome = Outcome(
            event_id=f"{job.id}#gave-up@{tier}", job_id=job.id, **about_job(task),
            route_source=task.route.source, intended_tier=task.first_tier, tier=tier, provider="", model="",
            attempt=len(task.attempts) + 1, status=Status.DEAD, error_class=CRASHED,
            error_message=reason[:ERROR_MESSAGE_CHARS], input_tokens=0, output_tokens=0, cost=Decimal(0),
            counterfactual_cost=Decimal(0), latency_ms=0.0, started_at=now, finished_at=now, simulated=False,
            final=True, lane=task.lane,
        )  # fmt: skip
        attempts = list(task.attempts)
        record = job_record(
            task, "dead", tier=tier, input_tokens=sum(a.input_tokens for a in attempts),
            output_tokens=sum(a.output_tokens for a in attempts), cost=sum((a.cost for a in attempts), Decimal(0)),
            path=[*(_path_entry(a) for a in attempts), f"{tier}:{CRASHED}"], reason=outcome.error_message,
        )  # fmt: skip
        letter = DeadLetter(job.id, task.batch, outcome.error_message, attempts, job)
        counts = self._keys.batch_counts(task.batch)
        pipe = self._redis.pipeline(transaction=True)
        self._settled(pipe, task_id, outcome, record)
        pipe.xadd(self._keys.deadletter, {"d": ENCODER.encode(letter)})
        pipe.hincrby(counts, Status.DEAD.value, 1)
        pipe.hincrby(counts, "final", 1)
        await pipe.execute()
        self._metrics.record_outcome(outcome)
        return True

    async def settle(
        self,
        task_id: str,
        call: Call,
        completion: Completion | None,
        error: ProviderError | None,
        simulated: bool,
        earlier: Sequence[Attempt] = (),
    ) -> Status:
        pipe = self._redis.pipeline(transaction=True)
        status, outcome = self._settling(pipe, task_id, call, completion, error, simulated, earlier)
        await pipe.execute()
        self._metrics.record_outcome(outcome)
        return status

    async def settle_once(
        self, task_id: str, call: Call, completion: Completion | None, error: ProviderError | None, simulated: bool
    ) -> Status | None:
        """settle, unless the task was settled before (None then): for results that may be read again,
        as a batch's are, by a poller that restarted or by two at once. The check and the settle are
        one optimistic transaction on the task's settled mark."""
        return await self._once(task_id, lambda pipe: self._settling(pipe, task_id, call, completion, error, simulated))

    async def fall_back(self, task_id: str, call: Call, error: ProviderError, simulated: bool) -> Status | None:
        """A batch request that was not answered (expired, canceled, errored by the provider): its row
        (status failover, no cost), and the job on its own tier's sync queue, in one transaction;
        None when settled before."""
        return await self._once(task_id, lambda pipe: self._falling_back(pipe, task_id, call, error, simulated))

    async def _once(self, task_id: str, queue: Callable[[Any], tuple[Status, Outcome]]) -> Status | None:
        settled = self._keys.settled(task_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(settled)
            if await pipe.exists(settled):
                return None
            pipe.multi()  # type: ignore[no-untyped-call]
            status, outcome = queue(pipe)
            try:
                await pipe.execute()
            except WatchError:
                return None
        self._metrics.record_outcome(outcome)
        return status

    def _settled(self, pipe: Any, task_id: str, outcome: Outcome, record: JobRecord) -> None:
        """What every settle writes: the outcome row, the task's settled mark, the job's record."""
        pipe.xadd(self._keys.outcomes, {"e": ENCODER.encode(outcome)})
        pipe.set(self._keys.settled(task_id), b"1", ex=SETTLED_TTL_S)
        pipe.set(self._keys.job(outcome.job_id), ENCODER.encode(record), px=self._record_ttl_ms)

    def _falling_back(
        self, pipe: Any, task_id: str, call: Call, error: ProviderError, simulated: bool
    ) -> tuple[Status, Outcome]:
        task, keys = call.task, self._keys
        attempts = [*task.attempts, _attempt(call, Status.FAILOVER, error, None)]
        moved = msgspec.structs.replace(task, attempts=attempts, lane=Lane.SYNC)
        outcome = outcome_event(call, Status.FAILOVER, error, None, simulated)
        record = job_record(moved, "queued", tier=call.tier, path=[_path_entry(a) for a in attempts])
        self._settled(pipe, task_id, outcome, record)
        add_to_queue(pipe, keys, moved)
        return Status.FAILOVER, outcome

    def _settling(
        self,
        pipe: Any,
        task_id: str,
        call: Call,
        completion: Completion | None,
        error: ProviderError | None,
        simulated: bool,
        earlier: Sequence[Attempt] = (),
    ) -> tuple[Status, Outcome]:
        """Queue the settle's commands on `pipe` (a transaction); the status and the outcome row."""
        task, keys = call.task, self._keys
        if isinstance(error, BadAnswer):
            completion = error.completion  # answered and billed, but not kept
        status = self._status(call.tier, error)
        next_tier = self._policies.next_tier(call.tier) if status is Status.ESCALATED else None
        attempts = [*task.attempts, *earlier, _attempt(call, status, error, completion)]
        outcome = outcome_event(call, status, error, completion, simulated)
        record = job_record(
            task,
            {Status.OK: "ok", Status.DEAD: "dead"}.get(status, "queued"),
            tier=next_tier or call.tier,
            provider=call.candidate.provider,
            model=call.candidate.model,
            output=completion.text if completion else "",
            input_tokens=sum(a.input_tokens for a in attempts),
            output_tokens=sum(a.output_tokens for a in attempts),
            cost=sum((a.cost for a in attempts), Decimal(0)),
            path=[_path_entry(a) for a in attempts],
            reason=str(error)[:ERROR_MESSAGE_CHARS] if error and status is Status.DEAD else "",
            simulated=simulated,
        )
        self._settled(pipe, task_id, outcome, record)
        counts = keys.batch_counts(task.batch)
        if status is Status.ESCALATED and next_tier is not None:
            reason = f"{error.error_class if error else 'failed'} on {call.tier}"
            add_to_queue(
                pipe,
                keys,
                TierTask(
                    job=task.job,
                    batch=task.batch,
                    route=RouteDecision(next_tier, RouteSource.ESCALATION, reason),
                    first_tier=task.first_tier,
                    attempts=attempts,
                    strategy=task.strategy,
                    experiment=task.experiment,
                    arm=task.arm,
                    lane=self._lanes.after_escalation(task.lane, next_tier),
                ),
            )
            pipe.hincrby(counts, "escalations", 1)
            if isinstance(error, BadAnswer) and self._policies.learning.escalation_labels:
                score = escalation_score(call, error, next_tier, self._policies.learning.text_chars)
                pipe.xadd(keys.outcomes, {"s": ENCODER.encode(score)})
        else:
            if status is Status.DEAD:
                letter = DeadLetter(task.job.id, task.batch, record.reason, attempts, task.job)
                pipe.xadd(keys.deadletter, {"d": ENCODER.encode(letter)})
            pipe.hincrby(counts, status.value, 1)
            pipe.hincrby(counts, "final", 1)
            if (
                status is Status.OK
                and error is None
                and completion is not None
                and self.shadowed(call.tier, task.job.id)
            ):
                answer = ShadowTask(task, call.tier, call.candidate.provider, call.candidate.model, completion.text)
                add_shadow(pipe, keys, answer)
        return status, outcome
