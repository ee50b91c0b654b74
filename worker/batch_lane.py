"""The batch lane: collect each tier's waiting jobs into provider batches, follow them, settle each request.

One process at a time does this (`ladder batches run`, holding a lease in Redis), in passes:

1. Submit: a tier's pending jobs are drafted into a batch for the tier's batch model once
   batch.max_requests wait or the first has waited batch.max_wait_s, as many as fit the policies'
   and the provider's limits on requests and bytes. Each job's budget hold is taken for the
   provider's whole window; a job its customer's budget cannot take goes to the sync lane, where the
   budget's at_limit decides (reject or downgrade). Then the provider is asked.
2. Poll: each submitted batch is asked every batch.poll_interval_s whether it has ended; one open past
   batch.cancel_after_s is canceled. An ended batch's results are read and each request settled once,
   by its own guarded transaction: an answer is priced at the batch price, checked like a sync answer,
   and settles the job (ok, escalated, dead); an expired, canceled or provider-errored request goes to
   its tier's sync queue with a no-cost failover row. A request with no result is taken as expired.
3. Recover: a batch left "drafted" by a crash is looked up at the provider before it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

import msgspec
import structlog
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import Lane, LaneBatch, TierTask
from policies.answer_checks import AnswerChecker
from policies.config import Candidate, Policies
from policies.lanes import Lanes
from policies.prices import PriceBook
from policies.tokens import estimate_tokens
from worker.arq_worker import REDIS_DOWN
from worker.batch_api import BatchAPI, BatchCanceled, BatchExpired, BatchItem, BatchRequest
from worker.batch_store import LaneStore, custom_id, new_draft_id, request_index
from worker.budget import BudgetBook
from worker.metrics import Metrics
from worker.provider import BadAnswer, Completion, Overloaded, ProviderError, RateLimited, Transient
from worker.settle import Settler
from worker.steps import Call, request_for

log = structlog.get_logger("ladder.batches")

SETTLE_CONCURRENCY = 64  # requests of an ended batch settled at once
LEASE_EVERY = 64 * 16  # settled requests between lease renewals while a batch's results are read
MAX_SUBMIT_FAILURES = 3  # a draft the provider refuses this often goes to the sync lane
# A hold must outlive the batch: the provider's window, Ladder's cancel, and the reading of results.
HOLD_MARGIN_S = 2 * 3600


def hold_id(task: TierTask, draft: str) -> str:
    return f"{task.job.id}#batch@{draft}"


def settle_id(task: TierTask, draft: str) -> str:
    """The settled mark of a job's request in a batch: one per job and batch, however often read."""
    return f"{task.job.id}~batch:{draft}"


class BatchLane:
    def __init__(
        self,
        policies: Policies,
        redis: Redis,
        keys: Keys,
        apis: Mapping[str, BatchAPI],
        simulated: set[str] | frozenset[str] = frozenset(),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policies = policies
        self.store = LaneStore(redis, keys)
        self._redis = redis
        self._keys = keys
        self._apis = apis
        self._simulated = simulated
        self._clock = clock
        self._prices = PriceBook(policies)
        self._lanes = Lanes(policies, self._prices)
        for tier, why in self._lanes.unpriced.items():
            log.warning("batch lane: this tier's batch-lane jobs take the sync lane", tier=tier, reason=why)
        self._checker = AnswerChecker(policies.escalation)
        self._settler = Settler(redis, keys, policies, metrics)
        self._budgets = None
        if policies.budgets.enabled:
            hold_s = policies.batch.cancel_after_s + HOLD_MARGIN_S
            self._budgets = BudgetBook(redis, keys, policies.budgets, hold_ttl_s=hold_s)
        self._first_seen: dict[str, float] = {}  # tier -> when this process first saw jobs waiting
        self._polled: dict[str, float] = {}  # draft -> when this process last asked the provider
        self._refusals: dict[str, int] = {}  # draft -> submissions the provider refused
        self._holder = ""  # the lease this process holds while it runs (run); "" when driven directly

    # ---- submit ---------------------------------------------------------------------------------

    async def submit_due(self, eager: bool = False) -> list[LaneBatch]:
        """Submit every tier's batches that are due (all that wait, with `eager`)."""
        submitted = []
        for tier in self.policies.tier_names:
            while (batch := await self._submit_tier(tier, eager)) is not None:
                submitted.append(batch)
                if batch.state == "drafted":  # the provider refused it: the tier's other jobs wait
                    break
        return submitted

    async def _submit_tier(self, tier: str, eager: bool) -> LaneBatch | None:
        cfg, now = self.policies.batch, self._clock()
        waiting = await self.store.pending(tier)
        if not waiting:
            self._first_seen.pop(tier, None)
            return None
        first = self._first_seen.setdefault(tier, now)
        if not eager and waiting < cfg.max_requests and now - first < cfg.max_wait_s:
            return None
        candidate = self._lanes.batch_models.get(tier)
        api = self._apis.get(candidate.provider) if candidate is not None else None
        if candidate is None or api is None:  # the policies changed since these jobs were queued
            await self._drain_to_sync(tier)
            return None
        count = await self._fitting(tier, candidate, api)
        draft = new_draft_id()
        batch = LaneBatch(draft, tier, candidate.provider, candidate.model, "drafted", now)
        if not await self.store.draft(batch, count):
            return None
        self._first_seen[tier] = now  # the rest (if any) have waited since now, as far as this process knows
        return await self._send(batch)

    async def _fitting(self, tier: str, candidate: Candidate, api: BatchAPI) -> int:
        """How many of the tier's first waiting jobs fit one batch (at least one)."""
        cfg = self.policies.batch
        limit, room = min(cfg.max_requests, api.max_requests), min(cfg.max_bytes, api.max_bytes)
        count, used = 0, 0
        for i, task in enumerate(await self.store.peek(tier, limit)):
            size = api.request_bytes(BatchRequest(custom_id("x" * 20, i), request_for(task.job, candidate.model)))
            if count and used + size > room:
                break
            count, used = count + 1, used + size
        return max(1, count)

    async def _drain_to_sync(self, tier: str) -> None:
        tasks = await self.store.peek(tier, 10_000)
        draft = new_draft_id()
        batch = LaneBatch(draft, tier, "", "", "drafted", self._clock())
        if await self.store.draft(batch, len(tasks)):
            held = await self.store.tasks(draft, await self.store.indices(draft))
            await self.store.to_sync_lane(draft, {i: _on_sync_lane(t) for i, t in held.items()})
            await self.store.finish(batch)
            log.warning("batch lane: tier has no batch model; jobs sent to the sync lane", tier=tier, jobs=len(held))

    async def _send(self, batch: LaneBatch) -> LaneBatch:
        """Take the budget holds of a drafted batch, send the jobs that fit no budget to the sync lane,
        and submit the rest. A provider error leaves the draft for the next pass's recovery."""
        draft = batch.draft
        tasks = await self.store.tasks(draft, await self.store.indices(draft))
        refused = await self._hold(batch, tasks)
        await self.store.to_sync_lane(draft, {i: _on_sync_lane(tasks[i]) for i in refused})
        kept = {i: t for i, t in tasks.items() if i not in refused}
        if not kept:
            await self.store.finish(batch)
            return batch
        batch = msgspec.structs.replace(batch, size=len(kept))
        await self.store.save(batch)
        requests = [BatchRequest(custom_id(draft, i), request_for(t.job, batch.model)) for i, t in sorted(kept.items())]
        await self._still_leading()
        try:
            provider_id = await self._apis[batch.provider].submit(requests, draft)
        except ProviderError as e:
            await self._refused(batch, kept, e)
            return batch
        batch = msgspec.structs.replace(
            batch, state="submitted", provider_batch_id=provider_id, submitted_at=self._clock()
        )
        await self.store.save(batch)
        log.info("batch submitted", draft=draft, tier=batch.tier, model=batch.model, requests=batch.size,
                 provider_batch=provider_id)  # fmt: skip
        return batch

    async def _refused(self, batch: LaneBatch, kept: dict[int, TierTask], error: ProviderError) -> None:
        failures = self._refusals.get(batch.draft, 0) + 1
        self._refusals[batch.draft] = failures
        self._polled[batch.draft] = self._clock()  # tried again a poll interval from now
        log.warning("batch submission failed", draft=batch.draft, provider=batch.provider, model=batch.model,
                    error_class=error.error_class, error=str(error)[:300], failures=failures)  # fmt: skip
        if isinstance(error, PASSING) or failures < MAX_SUBMIT_FAILURES:
            return  # the next pass recovers the draft and tries again
        await self._release_holds(batch, kept)
        await self.store.to_sync_lane(batch.draft, {i: _on_sync_lane(t) for i, t in kept.items()})
        await self.store.finish(batch)
        log.error("batch refused; its jobs go to the sync lane", draft=batch.draft, jobs=len(kept))

    async def _hold(self, batch: LaneBatch, tasks: dict[int, TierTask]) -> set[int]:
        """Hold each job's batch-priced estimate for the batch's life; the indices whose customer's
        budget cannot take it. A hold taken before a crash is not taken again."""
        if self._budgets is None:
            return set()
        candidate = Candidate(batch.provider, batch.model)
        refused = set()
        for i, task in tasks.items():
            hold = hold_id(task, batch.draft)
            if await self._redis.hexists(self._keys.budget_holds, hold):  # type: ignore[misc]
                continue
            job = task.job
            estimate = self._prices.batch_cost(candidate, estimate_tokens(job.text()), job.max_output_tokens)
            if await self._budgets.reserve(job.customer, hold, estimate) != "ok":
                refused.add(i)
        return refused

    async def _release_holds(self, batch: LaneBatch, tasks: Mapping[int, TierTask]) -> None:
        if self._budgets is not None:
            for task in tasks.values():
                await self._budgets.settle(hold_id(task, batch.draft), _ZERO)

    # ---- poll -----------------------------------------------------------------------------------

    async def poll(self, force: bool = False) -> int:
        """One pass over the open batches; returns how many requests it settled."""
        settled = 0
        for draft in await self.store.open_drafts():
            # A draft left by a failed submission is tried again at the same pace as batches are polled.
            # Checked before the record is read: the loop passes every second, a batch is due every minute.
            if not force and self._clock() - self._polled.get(draft, 0.0) < self.policies.batch.poll_interval_s:
                continue
            batch = await self.store.record(draft)
            if batch is None:
                continue
            self._polled[draft] = self._clock()
            try:
                if batch.state == "drafted":
                    await self._recover(batch)
                else:
                    settled += await self._follow(batch)
            except ProviderError as e:
                log.warning("batch provider call failed; tried again next pass", draft=draft, provider=batch.provider,
                            error_class=e.error_class, error=str(e)[:300])  # fmt: skip
        return settled

    async def _recover(self, batch: LaneBatch) -> None:
        """A draft whose submission did not finish (a crash, a refusal): adopt the provider's batch if
        it was created after all, else send it again."""
        api = self._apis.get(batch.provider)
        if api is None:
            log.error(
                "batch lane: no batch API for a drafted batch's provider", draft=batch.draft, provider=batch.provider
            )
            return
        await self._still_leading()
        if batch.size:
            found = await api.find(batch.draft, batch.size, batch.drafted_at, await self.store.known_provider_ids())
            if found is not None:
                adopted = msgspec.structs.replace(
                    batch, state="submitted", provider_batch_id=found, submitted_at=self._clock()
                )
                await self.store.save(adopted)
                log.info("batch recovered", draft=batch.draft, provider_batch=found)
                return
        await self._send(batch)

    async def _follow(self, batch: LaneBatch) -> int:
        api = self._apis.get(batch.provider)
        if api is None:
            log.error(
                "batch lane: no batch API for an open batch's provider", draft=batch.draft, provider=batch.provider
            )
            return 0
        if not await api.ended(batch.provider_batch_id):
            if not batch.canceled_at and self._clock() - batch.submitted_at >= self.policies.batch.cancel_after_s:
                await api.cancel(batch.provider_batch_id)
                await self.store.save(msgspec.structs.replace(batch, canceled_at=self._clock()))
                log.warning("batch canceled: open past batch.cancel_after_s", draft=batch.draft,
                            provider_batch=batch.provider_batch_id)  # fmt: skip
            return 0
        return await self._collect(batch, api)

    async def _collect(self, batch: LaneBatch, api: BatchAPI) -> int:
        """Settle every request of an ended batch (each once, whatever was settled before a restart)."""
        ended = self._clock()
        indices = set(await self.store.indices(batch.draft))
        seen: set[int] = set()
        answered = not_answered = settled = 0
        renew_at = LEASE_EVERY
        chunk: list[tuple[int, BatchItem]] = []
        await self._still_leading()
        async for item in api.results(batch.provider_batch_id):
            index = request_index(batch.draft, item.custom_id)
            if index is None or index not in indices or index in seen:
                continue
            seen.add(index)
            answered += item.completion is not None
            not_answered += isinstance(item.error, NOT_ANSWERED)
            chunk.append((index, item))
            if len(chunk) >= SETTLE_CONCURRENCY:
                settled += await self._settle_chunk(batch, chunk, ended)
                chunk = []
                if len(seen) >= renew_at:
                    await self._still_leading()
                    renew_at += LEASE_EVERY
        missing = BatchExpired("the batch ended without a result for this request")
        chunk += [(i, BatchItem(custom_id(batch.draft, i), None, missing)) for i in sorted(indices - seen)]
        for start in range(0, len(chunk), SETTLE_CONCURRENCY):
            settled += await self._settle_chunk(batch, chunk[start : start + SETTLE_CONCURRENCY], ended)
        absent = len(indices - seen)
        done = msgspec.structs.replace(
            batch, ended_at=ended, answered=answered, fell_back=not_answered + absent,
            failed=len(seen) - answered - not_answered,
        )  # fmt: skip
        await self.store.finish(done)
        self._polled.pop(batch.draft, None)
        log.info("batch done", draft=batch.draft, tier=batch.tier, model=batch.model, answered=answered,
                 fell_back=done.fell_back, failed=done.failed, settled_now=settled)  # fmt: skip
        return settled

    async def _settle_chunk(self, batch: LaneBatch, chunk: Sequence[tuple[int, BatchItem]], ended: float) -> int:
        tasks = await self.store.tasks(batch.draft, [i for i, _ in chunk])
        done = await asyncio.gather(*(self._settle(batch, tasks[i], item, ended) for i, item in chunk if i in tasks))
        return sum(done)

    async def _settle(self, batch: LaneBatch, task: TierTask, item: BatchItem, ended: float) -> bool:
        candidate = Candidate(batch.provider, batch.model)
        call = Call(task, batch.tier, candidate, request_for(task.job, batch.model), number=len(task.attempts) + 1,
                    started_at=batch.submitted_at, latency_ms=max(0.0, ended - batch.submitted_at) * 1000)  # fmt: skip
        simulated = batch.provider in self._simulated
        task_id, hold = settle_id(task, batch.draft), hold_id(task, batch.draft)
        if item.completion is not None:
            bad = self._priced(call, item.completion)
            if self._budgets is not None:
                await self._budgets.settle(hold, call.cost)
            return await self._settler.settle_once(task_id, call, item.completion, bad, simulated) is not None
        if self._budgets is not None:
            await self._budgets.settle(hold, _ZERO)
        error = item.error or BatchExpired("no result")
        if isinstance(error, NOT_ANSWERED):
            return await self._settler.fall_back(task_id, call, error, simulated) is not None
        return await self._settler.settle_once(task_id, call, None, error, simulated) is not None

    def _priced(self, call: Call, completion: Completion) -> BadAnswer | None:
        """Price the answer at the batch price (and what the same tokens cost synchronously, and on the
        counterfactual tiers); the answer checks' verdict, as a sync answer gets it."""
        tokens = completion.input_tokens, completion.output_tokens
        call.cost = self._prices.batch_cost(call.candidate, *tokens)
        call.sync_cost = self._prices.cost(call.candidate, *tokens)
        call.counterfactual_cost = self._prices.counterfactual_cost(*tokens)
        call.middle_tier_cost = self._prices.middle_tier_cost(*tokens)
        found = self._checker.problem(completion.text, completion.finish_reason, call.task.job.json_schema)
        return BadAnswer(found[0], found[1], completion) if found is not None else None

    # ---- the loop -------------------------------------------------------------------------------

    async def _still_leading(self) -> None:
        """Renew the lease before a provider action; another process holding it (this one stalled past
        batch.lease_s) stops this pass, so no draft is sent or adopted by two processes at once."""
        if self._holder and not await self.store.take_lease(self._holder, self.policies.batch.lease_s):
            raise LeaseLost("another batch lane process holds the lease")

    async def idle(self) -> bool:
        """Nothing waits and no batch is open."""
        pending = [await self.store.pending(t) for t in self.policies.tier_names]
        return not any(pending) and not await self.store.open_drafts()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        burst: bool = False,
        eager: bool = False,
        tick_s: float = 1.0,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """Submit and poll until `stop` is set (with `burst`: until idle). Only the lease holder works;
        another process waits its turn, so a second replica or a rolling update is safe. `beat` is called
        at the start of every pass, working or waiting (for the lease, for Redis): /healthz watches it."""
        holder, backoff = uuid.uuid4().hex, tick_s
        self._holder = holder
        try:
            while not stop.is_set():
                if beat is not None:
                    beat()
                try:
                    if await self.store.take_lease(holder, self.policies.batch.lease_s):
                        await self.submit_due(eager)
                        await self.poll()
                        if burst and await self.idle():
                            return
                    backoff = tick_s
                except REDIS_DOWN as e:
                    backoff = min(backoff * 2, 5.0)
                    log.warning("batch lane: Redis unavailable; waiting", error=str(e)[:200], retry_in_s=backoff)
                except LeaseLost:
                    log.warning("batch lane: lease lost to another process mid-pass; waiting for it")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await self.store.release_lease(holder)


class LeaseLost(Exception):
    pass


# A submission that failed this way is tried again however often: the provider is busy or away.
PASSING = (Transient, Overloaded, RateLimited)
# Requests the provider did not answer, through no fault of the job: answered on the sync lane.
NOT_ANSWERED = (BatchExpired, BatchCanceled, Transient, Overloaded, RateLimited)
_ZERO = Decimal(0)


def _on_sync_lane(task: TierTask) -> TierTask:
    return msgspec.structs.replace(task, lane=Lane.SYNC)
