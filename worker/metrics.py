"""Prometheus metrics of one process, on a registry of its own.

Counters and the rate-limit histogram count what this process did: every outcome row it streamed
(tier, classifier and shadow calls alike) and the sink's inserts. They are incremented where the
row is written, after the write succeeded, so over a run they equal the outcome rows in ClickHouse.

Gauges of shared state (queue depths, sink lag, dead letters, the batch lane) are read from Redis
when scraped (`refresh`) and served from that snapshot (`collect`, which prometheus_client calls synchronously).
`ladder exporter` serves the queue gauges: a worker scaled to zero cannot report its own queue.
Label values are tier, queue, provider, model, status and error class names: never a key or a URL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from arq.constants import in_progress_key_prefix
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ladder.keys import Keys
from ladder.messages import Outcome

CALL_LABELS = ("tier", "provider", "model", "status", "error_class", "route")
COST_LABELS = ("tier", "provider", "model", "route")
# From a Redis round trip (an open lane) to a lane blocked up to faults.max_lane_wait_s.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# How many of a queue's due jobs (lowest scores first) are checked for an in-progress key per scrape.
# arq workers read and claim from that end of the queue, so the jobs in flight sit among the first
# few hundred due ones (arq reads max(5 x max_jobs, 100) ids per poll): the count is exact while a
# queue's in-flight jobs are all within this many of its head, and costs one EXISTS per checked id.
IN_PROGRESS_SCAN = 10_000


class Metrics:
    """Counters and the histogram of one process; `registry` is what its /metrics serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._calls = Counter(
            "ladder_calls", "Provider calls (outcome rows) by how they ended", CALL_LABELS, registry=r
        )
        self._cost = Counter(
            "ladder_cost_usd", "Cost of provider calls in USD (exact money: ClickHouse)", COST_LABELS, registry=r
        )
        self._lane_wait = Histogram(
            "ladder_rate_limit_wait_seconds",
            "Time a call waited for its rate-limit lane",
            ("provider", "model"),
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._sink: SinkCounters | None = None
        self._claims: ClaimGauge | None = None

    def record_outcome(self, row: Outcome) -> None:
        """One outcome row written to the stream: a call and its cost."""
        route = str(row.route_source)
        self._calls.labels(row.tier, row.provider, row.model, str(row.status), row.error_class, route).inc()
        self._cost.labels(row.tier, row.provider, row.model, route).inc(float(row.cost))

    def record_lane_wait(self, provider: str, model: str, seconds: float) -> None:
        self._lane_wait.labels(provider, model).observe(seconds)

    def sink(self) -> SinkCounters:
        """The sink's counters, registered by the first Sink of the process: other processes do not
        export a sink's zeros."""
        if self._sink is None:
            self._sink = SinkCounters(self.registry)
        return self._sink

    def claims(self) -> ClaimGauge:
        """The workers' claim gate gauge, registered by the first gate of the process."""
        if self._claims is None:
            self._claims = ClaimGauge(self.registry)
        return self._claims


class SinkCounters:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._inserted = Counter("ladder_sink_inserted", "Outcome rows the sink inserted into ClickHouse", registry=r)
        self._batches = Counter("ladder_sink_batches", "Batches the sink inserted and acked", registry=r)
        self._malformed = Counter("ladder_sink_malformed", "Stream entries the sink could not decode", registry=r)
        self._retries = Counter(
            "ladder_sink_retries", "Waits for ClickHouse or Redis to come back", ["cause"], registry=r
        )

    def batch(self, inserted: int) -> None:
        self._inserted.inc(inserted)
        self._batches.inc()

    def malformed(self) -> None:
        self._malformed.inc()

    def retry(self, cause: str) -> None:
        self._retries.labels(cause).inc()


class ClaimGauge:
    """ladder_worker_claims_paused: 1 while this process's workers claim no new jobs because the
    outcome stream is at its bound (worker/backlog.py), else 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._paused = Gauge(
            "ladder_worker_claims_paused",
            "1 while this worker claims no new jobs: the outcome stream is at limits.outcome_stream_max",
            registry=registry,
        )

    def paused(self, closed: bool) -> None:
        self._paused.set(1 if closed else 0)


class RedisGauges:
    """Gauges read from Redis on each scrape. A failed read leaves no samples rather than stale
    ones: an autoscaler had better see a missing metric than an old queue depth."""

    def __init__(self) -> None:
        self._families: list[Metric] = []

    async def refresh(self) -> None:
        try:
            self._families = await self.read()
        except BaseException:
            self._families = []
            raise

    async def read(self) -> list[Metric]:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        return list(self._families)


# KEYS: an arq queue. ARGV: how many due jobs to check, arq's in-progress key prefix.
# Returns {ready, deferred, in progress}, all from one atomic look at the queue by Redis's clock.
_QUEUE_COUNTS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local due = redis.call('ZCOUNT', KEYS[1], '-inf', now)
local deferred = redis.call('ZCARD', KEYS[1]) - due
local running = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  running = running + redis.call('EXISTS', ARGV[2] .. id)
end
return {due - running, deferred, running}
"""


class QueueDepth(RedisGauges):
    """ladder_queue_{ready,deferred,in_progress}_jobs{queue}. arq's queue is one sorted set scored by
    run time that also holds deferred jobs and jobs in flight: ready is due (score <= now) and not
    in progress. Cost per queue and scrape: one script, O(log N) plus an EXISTS for each of up to
    IN_PROGRESS_SCAN due jobs (a few milliseconds of Redis time at the cap, nothing on short queues)."""

    def __init__(self, redis: Redis, keys: Keys, queues: Sequence[str], scan: int = IN_PROGRESS_SCAN) -> None:
        super().__init__()
        self._script = redis.register_script(_QUEUE_COUNTS)
        self._keys = keys
        self._queues = list(queues)
        self._scan = scan

    async def read(self) -> list[Metric]:
        ready = GaugeMetricFamily("ladder_queue_ready_jobs", "Jobs due and not in progress", labels=["queue"])
        deferred = GaugeMetricFamily("ladder_queue_deferred_jobs", "Jobs scheduled for later", labels=["queue"])
        running = GaugeMetricFamily("ladder_queue_in_progress_jobs", "Jobs a worker is running", labels=["queue"])
        for queue in self._queues:
            counts = await self._script(keys=[self._keys.queue(queue)], args=[self._scan, in_progress_key_prefix])
            for family, value in zip((ready, deferred, running), counts, strict=True):
                family.add_metric([queue], int(value))
        return [ready, deferred, running]


class SinkLag(RedisGauges):
    """ladder_sink_stream_length (XLEN: events not yet in ClickHouse, since the sink deletes what it
    acked) and ladder_sink_oldest_pending_seconds (the oldest entry delivered to the sink's group
    and not acked, by its stream id's timestamp; 0 when none). O(1) per scrape. Given the stream's
    bound (limits.outcome_stream_max and its warn share), also ladder_outcome_stream_limit and
    ladder_outcome_stream_warn_length, for alerts to compare the length with."""

    def __init__(self, redis: Redis, keys: Keys, bound: int = 0, warn_share: float = 0.0) -> None:
        super().__init__()
        self._redis = redis
        self._keys = keys
        self._bound = bound
        self._warn_share = warn_share

    async def read(self) -> list[Metric]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.xlen(self._keys.outcomes)
        pipe.xpending(self._keys.outcomes, self._keys.sink_group)
        clock, length, pending = await pipe.execute(raise_on_error=False)
        for result in (clock, length):
            if isinstance(result, Exception):
                raise result
        oldest = 0.0
        if isinstance(pending, ResponseError):
            if "NOGROUP" not in str(pending):  # no sink has started yet: nothing can be pending
                raise pending
        elif pending["pending"]:
            now_ms = clock[0] * 1000 + clock[1] // 1000
            first_ms = int(_text(pending["min"]).split("-", 1)[0])
            oldest = max(0.0, (now_ms - first_ms) / 1000)
        families: list[Metric] = [
            GaugeMetricFamily("ladder_sink_stream_length", "Outcome events not yet in ClickHouse", value=int(length)),
            GaugeMetricFamily(
                "ladder_sink_oldest_pending_seconds", "Age of the oldest event delivered to the sink, unacked", oldest
            ),
        ]
        if self._bound:
            families += [
                GaugeMetricFamily(
                    "ladder_outcome_stream_limit", "Stream length at which workers stop claiming jobs", self._bound
                ),
                GaugeMetricFamily(
                    "ladder_outcome_stream_warn_length", "Stream length past which workers warn",
                    warn_length(self._bound, self._warn_share),
                ),
            ]  # fmt: skip
        return families


def warn_length(bound: int, warn_share: float) -> int:
    """The stream length at which the warning starts: the warn share of the bound, at least 1."""
    return max(1, int(bound * warn_share))


class DeadLetters(RedisGauges):
    """ladder_dead_letters: entries in the dead-letter stream (jobs that failed on the top tier)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        super().__init__()
        self._redis = redis
        self._keys = keys

    async def read(self) -> list[Metric]:
        length = await self._redis.xlen(self._keys.deadletter)
        return [GaugeMetricFamily("ladder_dead_letters", "Entries in the dead-letter stream", value=int(length))]


class BatchLaneGauges(RedisGauges):
    """The batch lane's state (worker/batch_store.py): ladder_batch_lane_waiting_jobs{tier} (LLEN of
    each tier's pending list), ladder_batch_lane_open_batches (ZCARD of the open set: drafted or
    submitted, not done), ladder_batch_lane_oldest_open_seconds (Redis's clock minus the oldest open
    batch's draft time; 0 when none is open) and ladder_batch_lane_lease_held (1 while a `ladder
    batches run` process holds the lease it renews at the start of each pass). One pipeline a scrape,
    O(1) per key."""

    def __init__(self, redis: Redis, keys: Keys, tiers: Sequence[str]) -> None:
        super().__init__()
        self._redis = redis
        self._keys = keys
        self._tiers = list(tiers)

    async def read(self) -> list[Metric]:
        k = self._keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.zcard(k.lane_open)
        pipe.zrange(k.lane_open, 0, 0, withscores=True)
        pipe.exists(k.lane_leader)
        for tier in self._tiers:
            pipe.llen(k.lane_pending(tier))
        clock, open_count, oldest, leased, *waiting = await pipe.execute()
        age = max(0.0, clock[0] + clock[1] / 1e6 - float(oldest[0][1])) if oldest else 0.0
        jobs = GaugeMetricFamily(
            "ladder_batch_lane_waiting_jobs", "Batch-lane jobs waiting for a batch", labels=["tier"]
        )
        for tier, length in zip(self._tiers, waiting, strict=True):
            jobs.add_metric([tier], int(length))
        batches = GaugeMetricFamily(
            "ladder_batch_lane_open_batches", "Batches drafted or submitted, not done", value=int(open_count)
        )
        oldest_open = GaugeMetricFamily(
            "ladder_batch_lane_oldest_open_seconds", "Age of the oldest open batch, from its draft", value=age
        )
        lease = GaugeMetricFamily(
            "ladder_batch_lane_lease_held", "1 while a batch lane process holds the lane's lease", value=int(leased)
        )
        return [jobs, batches, oldest_open, lease]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
