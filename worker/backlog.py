"""Backpressure from the outcome stream: workers claim no new jobs while it is at its bound.

The stream is where outcomes wait for ClickHouse. When the sink falls behind or ClickHouse is down
it grows; trimming it would lose outcomes (and their cost), so instead the workers stop taking jobs
once it holds `limits.outcome_stream_max` entries, and the jobs wait in their queues, where they
are safe. Jobs already in flight still settle: the bound is soft by what they write. Past
`limits.outcome_stream_warn_share` of the bound a warning is logged, once per crossing; the gauges
and alerts are in worker/metrics.py and deploy/base/prometheus-rules.yaml.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from ladder.keys import Keys
from policies.config import Limits
from worker.metrics import Metrics, warn_length

log = structlog.get_logger("ladder.backlog")

LENGTH_CACHE_S = 1.0  # each poll of each worker asks; one XLEN a second per process is enough


class OutcomeBacklog:
    """A ClaimGate (worker/arq_worker.py) shared by the workers of one process."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        bound: int,
        warn_share: float,
        *,
        metrics: Metrics | None = None,
        cache_s: float = LENGTH_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.bound = bound
        self.warn_at = warn_length(bound, warn_share)
        self._gauge = metrics.claims() if metrics is not None else None
        self._cache_s = cache_s
        self._clock = clock
        self._length = 0
        self._read_at: float | None = None
        self._reading = asyncio.Lock()  # workers sharing the gate wait for one XLEN, not one each
        self._warned = False

    @classmethod
    def for_limits(cls, redis: Redis, keys: Keys, limits: Limits, metrics: Metrics | None = None) -> OutcomeBacklog:
        return cls(redis, keys, limits.outcome_stream_max, limits.outcome_stream_warn_share, metrics=metrics)

    async def closed(self) -> str | None:
        """Why no job may be claimed now, or None. A Redis error propagates: the poll loop waits."""
        length = await self.length()
        self._note(length)
        closed = length >= self.bound
        if self._gauge is not None:
            self._gauge.paused(closed)
        if not closed:
            return None
        # The same words for as long as it stays closed: the worker logs a reason when it changes.
        return (
            f"the outcome stream is at its bound (limits.outcome_stream_max = {self.bound:,} events): "
            "the sink or ClickHouse is behind; jobs wait in their queues"
        )

    async def length(self) -> int:
        """XLEN of the outcome stream, read at most once per `cache_s`."""
        async with self._reading:
            if self._read_at is None or self._clock() - self._read_at >= self._cache_s:
                self._length = int(await self._redis.xlen(self._keys.outcomes))
                self._read_at = self._clock()
            return self._length

    def _note(self, length: int) -> None:
        if length >= self.warn_at and not self._warned:
            log.warning(
                "the outcome stream is nearing its bound: is the sink or ClickHouse behind?",
                length=length, warn_at=self.warn_at, bound=self.bound,
            )  # fmt: skip
        elif length < self.warn_at and self._warned:
            log.info("the outcome stream is below its warning level again", length=length, warn_at=self.warn_at)
        self._warned = length >= self.warn_at
