"""ClickHouse (or Redis) away for a while: the sink waits without acking, outcomes wait in the stream up
to its bound, the workers then stop claiming (jobs wait in their queues), and once ClickHouse is back
every outcome lands exactly once and the workers go on.

No ClickHouse server runs here: "down" is a sink pointed at a closed port over HTTP (a real
connection refused through clickhouse-connect), and "back" is a new sink on a chdb folder.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis
from clickhouse_connect.driver.exceptions import OperationalError
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from ladder.app import open_app
from ladder.keys import Keys
from ladder.messages import ENCODER, Job
from ladder.settings import Settings
from policies.config import PolicyError, parse_policies
from tests.helpers import THREE_TIERS
from tests.processes import free_port, http_get, wait_for
from tests.slow_provider import SLOW_POLICIES, SlowServer
from tests.test_shutdown import counts
from tests.test_sink import outcome
from tests.test_sink_crash import stop_line, stored
from worker.backlog import OutcomeBacklog
from worker.clickhouse import ClickHouse
from worker.metrics import Metrics
from worker.sink import Sink

KEYS = Keys("ladder")
BOUND = 30
SECRET = "pw-LADDERCANARY-0005"  # under the canary (tests/canary.py)
CALL_COST = Decimal("0.00002")  # the slow server's usage (10 in, 5 out) at slow-model's prices (1 and 2 per Mtok)


# --- the claim gate ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_gate_closes_at_the_bound_opens_below_it_and_reads_the_length_once_a_second(
    arq_redis: ArqRedis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    xlen = arq_redis.xlen

    async def counted(name: str) -> int:
        nonlocal reads
        reads += 1
        return await xlen(name)

    monkeypatch.setattr(arq_redis, "xlen", counted)
    clock, metrics = Clock(), Metrics()
    gate = OutcomeBacklog(arq_redis, keys, 5, 0.6, metrics=metrics, cache_s=1.0, clock=clock)

    def paused() -> float | None:
        return metrics.registry.get_sample_value("ladder_worker_claims_paused")

    with capture_logs() as logs:
        assert await gate.closed() is None and paused() == 0
        ids = [await arq_redis.xadd(keys.outcomes, {"e": b"x"}) for _ in range(5)]
        # Four workers of one process poll within the second: one XLEN, the cached answer for all.
        assert await asyncio.gather(*(gate.closed() for _ in range(4))) == [None] * 4
        assert reads == 1
        clock.now += 1.0
        reasons = await asyncio.gather(*(gate.closed() for _ in range(4)))
        assert reads == 2 and paused() == 1
        assert reasons[0] is not None and "limits.outcome_stream_max = 5 events" in reasons[0]
        assert reasons == [reasons[0]] * 4
        await arq_redis.xdel(keys.outcomes, ids[0])  # 4 left: below the bound, above the warning (3)
        assert await gate.closed() is not None  # still the cached length
        clock.now += 1.0
        assert await gate.closed() is None and paused() == 0
        assert reads == 3
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "nearing its bound" in warnings[0]["event"]  # once per crossing
    assert (warnings[0]["length"], warnings[0]["warn_at"], warnings[0]["bound"]) == (5, 3, 5)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ("outcome_stream_max = 0", "limits.outcome_stream_max: 0 must be at least 1"),
        ("outcome_stream_warn_share = 1.5", "limits.outcome_stream_warn_share: 1.5 must be above 0 and at most 1"),
        ("outcome_stream_warn_share = 0", "limits.outcome_stream_warn_share: 0.0 must be above 0 and at most 1"),
    ],
)
def test_a_bad_stream_bound_is_an_error_naming_the_field(limits: str, field: str) -> None:
    with pytest.raises(PolicyError, match=field.replace(".", r"\.")):
        parse_policies(THREE_TIERS + f"\n[limits]\n{limits}\n")


def test_the_default_bound_is_a_million_entries_warned_at_80_percent() -> None:
    limits = parse_policies(THREE_TIERS).limits
    assert (limits.outcome_stream_max, limits.outcome_stream_warn_share) == (1_000_000, 0.8)


# --- the sink, in process: errors it waits out --------------------------------------------------------


class Outage:
    """ClickHouse calls fail while `down` is set, as a refused connection fails in clickhouse-connect
    (the message names the server's URL, here with a password that must not reach a log)."""

    def __init__(self, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = threading.Event()
        self.down.set()
        self.failures = 0
        for name in ("migrate", "insert_outcomes", "stored_event_ids", "month_spend"):
            monkeypatch.setattr(clickhouse, name, self._failing(getattr(clickhouse, name)))

    def _failing(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.failures += 1
                raise OperationalError(
                    f"Error HTTPConnectionPool(host='ch', port=8123): Connection refused "
                    f"executing HTTP request attempt 1 (http://ladder:{SECRET}@ch:8123)"
                )
            return method(*args, **kwargs)

        return call


async def _until(condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await _value(condition()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _value(result: Awaitable[bool] | bool) -> bool:
    return await result if inspect.isawaitable(result) else result


def _totals(clickhouse: ClickHouse) -> tuple[Any, ...]:
    [table] = clickhouse.query("SELECT count(), uniqExact(event_id), sum(cost) FROM {db}.outcomes")
    [rollup] = clickhouse.query("SELECT sum(calls), sum(cost) FROM {db}.outcomes_daily")
    return (*table, *rollup)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.sink.RETRY_FIRST_S", 0.01)
    monkeypatch.setattr("worker.sink.RETRY_MAX_S", 0.05)


async def test_the_sink_waits_out_clickhouse_down_without_acking_then_stores_each_event_once(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    costs = [Decimal("0.000000000123") * (n + 1) for n in range(10)]
    for n, cost in enumerate(costs):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n, str(cost)))})
    outage = Outage(clickhouse, monkeypatch)
    sink = Sink(arq_redis, keys, clickhouse, flush_interval=0.05, where="http://ladder:***@ch:8123")
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(sink.run(stop=stop))
        await _until(lambda: outage.failures >= 5, "five failed tries")
        assert not running.done()
        assert await arq_redis.xlen(keys.outcomes) == 10  # nothing acked, nothing deleted
        outage.down.clear()  # ClickHouse is back
        await _until(lambda: _pending_and_length(arq_redis, keys, (0, 0)), "the stream to drain")
        stop.set()
        stats = await asyncio.wait_for(running, 30)
    assert _totals(clickhouse) == (10, 10, sum(costs), 10, sum(costs))
    assert stats.retries >= 5 and stats.inserted == 10
    down = [e for e in logs if e["event"].startswith("clickhouse unavailable")]
    assert len(down) == stats.retries and all(e["log_level"] == "warning" for e in down)
    assert down[0]["clickhouse"] == "http://ladder:***@ch:8123" and "Connection refused" in down[0]["error"]
    assert [e["retry_in_s"] for e in down[:3]] == [0.01, 0.02, 0.04] and down[4]["retry_in_s"] == 0.05  # capped
    assert any(e["event"].startswith("clickhouse and redis answer again") for e in logs)
    assert SECRET not in repr(logs)


async def _pending_and_length(redis_: ArqRedis, keys: Keys, expected: tuple[int, int]) -> bool:
    groups = await redis_.xinfo_groups(keys.outcomes) if await redis_.exists(keys.outcomes) else []
    pending = groups[0]["pending"] if groups else 0  # no group yet: the sink has not started reading
    return (pending, await redis_.xlen(keys.outcomes)) == expected


async def test_a_batch_read_before_clickhouse_went_down_stays_pending_until_its_insert_returns(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    sink = Sink(arq_redis, keys, clickhouse, flush_interval=0.05)
    await sink.setup()  # ClickHouse answered at start ...
    outage = Outage(clickhouse, monkeypatch)  # ... and goes down before the events come
    for n in range(7):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    stop = asyncio.Event()
    running = asyncio.create_task(sink.run(stop=stop))
    await _until(lambda: outage.failures >= 3, "three failed inserts")
    assert await _pending_and_length(arq_redis, keys, (7, 7))  # read by the sink, not acked
    outage.down.clear()
    await _until(lambda: _pending_and_length(arq_redis, keys, (0, 0)), "the stream to drain")
    stop.set()
    await asyncio.wait_for(running, 30)
    assert _totals(clickhouse)[:2] == (7, 7)


class Killed(BaseException):
    """The process dies here: nothing after it runs, no handler catches it."""


def _table_only_once(
    clickhouse: ClickHouse, error: BaseException | None = None
) -> tuple[Callable[[Any], None], list[int]]:
    """insert_outcomes whose first call stores the batch in the table but not in the rollup, then
    raises `error` (default: a server error, as from a view that failed midway); later calls are whole."""
    insert = clickhouse.insert_outcomes
    failed: list[int] = []

    def table_only_then_fail(rows: Any) -> None:
        if failed:
            return insert(rows)
        db = clickhouse.database
        clickhouse.client.command(f"DETACH TABLE {db}.outcomes_daily_mv")
        try:
            insert(rows)
        finally:
            clickhouse.client.command(f"ATTACH TABLE {db}.outcomes_daily_mv")
        failed.append(len(rows))
        raise error or OperationalError("Code: 241. DB::Exception: Memory limit exceeded (in the view)")

    return table_only_then_fail, failed


async def test_an_insert_that_failed_after_the_table_stored_it_is_sent_again_whole_so_the_rollup_counts_once(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    """A replay filtered by the event ids found stored would drop the whole batch, and the rollup
    would never count it: the batch goes again as it was, and the token sorts out what is missing."""
    insert, failed = _table_only_once(clickhouse)
    monkeypatch.setattr(clickhouse, "insert_outcomes", insert)
    for n in range(12):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n, "0.000000001"))})
    stats = await Sink(arq_redis, keys, clickhouse, flush_interval=0.05).run(burst=True)
    assert failed == [12] and stats.retries == 1
    assert _totals(clickhouse) == (12, 12, Decimal("0.000000012"), 12, Decimal("0.000000012"))
    assert await arq_redis.hlen(f"{keys.outcomes}:batches") == 0  # the batch's note went with its ack


async def test_a_sink_that_claims_a_dead_sinks_half_stored_batch_sends_it_again_whole(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    for n in range(9):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n, "0.000000001"))})
    real_insert = clickhouse.insert_outcomes
    insert, _ = _table_only_once(clickhouse, Killed())  # a sink killed mid-insert, on chdb
    monkeypatch.setattr(clickhouse, "insert_outcomes", insert)
    with pytest.raises(Killed):
        await Sink(arq_redis, keys, clickhouse, consumer="dead", flush_interval=0.05).run(stop=asyncio.Event())
    # Its batch is pending and noted, in the table and not in the rollup.
    assert await _pending_and_length(arq_redis, keys, (9, 9)) and await arq_redis.hlen(f"{keys.outcomes}:batches") == 1
    monkeypatch.setattr(clickhouse, "insert_outcomes", real_insert)
    stats = await Sink(arq_redis, keys, clickhouse, consumer="new", claim_idle_ms=0).run(burst=True)
    assert stats.claimed == 9
    assert _totals(clickhouse) == (9, 9, Decimal("0.000000009"), 9, Decimal("0.000000009"))
    assert await _pending_and_length(arq_redis, keys, (0, 0))


async def test_the_sink_waits_out_redis_errors(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    for n in range(5):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    read = arq_redis.xreadgroup
    refused = [2]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if refused[0]:
            refused[0] -= 1
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await read(*args, **kwargs)

    monkeypatch.setattr(arq_redis, "xreadgroup", flaky)
    with capture_logs() as logs:
        stats = await Sink(arq_redis, keys, clickhouse, flush_interval=0.05).run(burst=True)
    assert stats.retries == 2 and stats.inserted == 5
    assert sum(e["event"].startswith("redis unavailable") for e in logs) == 2
    assert _totals(clickhouse)[:2] == (5, 5)


async def test_an_error_that_waiting_cannot_cure_ends_the_sink_with_nothing_acked(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rows: Any) -> None:
        raise TypeError("a bug, not an outage")

    monkeypatch.setattr(clickhouse, "insert_outcomes", broken)
    for n in range(3):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    with pytest.raises(TypeError):
        await Sink(arq_redis, keys, clickhouse, flush_interval=0.05).run(burst=True)
    assert await _pending_and_length(arq_redis, keys, (3, 3))


# --- real processes: ClickHouse down, the bound reached, ClickHouse back --------------------------------


def _gauge(port: int, name: str) -> float | None:
    status, page = http_get(port, "/metrics")
    assert status == 200
    values = [s.value for f in text_string_to_metric_families(page) for s in f.samples if s.name == name]
    return values[0] if values else None


async def _enqueue(env: dict[str, str], total: int) -> None:
    """In this process (one `ladder` start-up less): the jobs of batch "b", ids b-0, b-1, ..."""
    async with open_app(Settings.from_env(env=env)) as app:
        jobs = [Job(id=f"b-{n}", customer="acme", prompt=f"question b-{n}?") for n in range(total)]
        report = await app.producer().submit(jobs, "b")
    assert report.accepted == total


@pytest.fixture
def env(cli_env: dict[str, str], slow: SlowServer, tmp_path: Path) -> dict[str, str]:
    policies = tmp_path / "bounded.toml"
    policies.write_text(SLOW_POLICIES.format(url=slow.url) + f"\n[limits]\noutcome_stream_max = {BOUND}\n")
    return dict(cli_env, LADDER_POLICIES=str(policies))


def test_workers_stop_claiming_at_the_bound_while_clickhouse_is_down_and_every_outcome_lands_once_when_back(
    env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis, processes: Any
) -> None:
    slow.delay = 0.1  # two calls in flight, about 20 jobs a second: the bound is reached within seconds
    total = 100
    asyncio.run(_enqueue(env, total))
    queue = KEYS.queue("cheap")
    down_env = dict(env, CLICKHOUSE_URL=f"http://ladder:{SECRET}@127.0.0.1:{free_port()}")
    sink_port, worker_port = free_port(), free_port()
    down = processes(down_env, tmp_path / "sink-down.log", "sink", "--metrics-port", str(sink_port))
    worker = processes(
        env, tmp_path / "worker.log", "worker", "--tier", "cheap", "--concurrency", "2",
        "--metrics-port", str(worker_port),
    )  # fmt: skip

    wait_for(lambda: "claiming no new jobs" in worker.output(), 90, "the worker to stop claiming")
    wait_for(lambda: len(slow.prompts()) == counts(db)["final"], 10, "the calls in flight to settle")
    calls = len(slow.prompts())
    time.sleep(2.0)  # two more seconds of the gate's cached reads: nothing new is claimed
    assert len(slow.prompts()) == calls

    settled = counts(db)["final"]
    length = db.xlen(KEYS.outcomes)
    assert length == settled >= BOUND  # every outcome still on the stream: the sink acked nothing
    assert length < total and db.zcard(queue) == total - settled  # the rest wait queued, none lost
    assert down.proc.poll() is None  # the sink waits for ClickHouse, it has not exited
    assert _gauge(worker_port, "ladder_worker_claims_paused") == 1
    assert _gauge(sink_port, "ladder_outcome_stream_limit") == BOUND
    assert _gauge(sink_port, "ladder_outcome_stream_warn_length") == int(BOUND * 0.8)
    assert _gauge(sink_port, "ladder_sink_stream_length") == length
    status, body = http_get(sink_port, "/readyz")
    assert status == 503 and body.startswith("clickhouse: ") and SECRET not in body
    [claiming] = [json.loads(x) for x in worker.output().splitlines() if '"claiming no new jobs"' in x]  # said once
    assert "limits.outcome_stream_max = 30 events" in claiming["reason"] and claiming["level"] == "warning"
    assert "nearing its bound" in worker.output()
    waiting = [json.loads(x) for x in down.output().splitlines() if "clickhouse unavailable" in x]
    assert (
        waiting and "Connection refused" in waiting[0]["error"] and "ladder:***@127.0.0.1" in waiting[0]["clickhouse"]
    )

    code, _ = down.stop(signal.SIGTERM, timeout=30)  # a stop during the outage ends it cleanly
    assert code == 0, down.output()[-3000:]
    assert stop_line(down.output())["inserted"] == 0
    assert SECRET not in down.output() and "Traceback" not in down.output()

    back = processes(env, tmp_path / "sink-back.log", "sink")  # ClickHouse back: a sink on chdb
    wait_for(lambda: counts(db)["final"] == total, 120, "the worker to finish every job")
    wait_for(lambda: db.xlen(KEYS.outcomes) == 0, 60, "the stream to drain")
    assert "claiming jobs again" in worker.output()
    for process in (back, worker):
        code, _ = process.stop(signal.SIGTERM, timeout=60)
        assert code == 0, process.output()[-3000:]
    assert db.zcard(queue) == 0 and sorted(set(slow.prompts())) == sorted(slow.prompts())  # each job called once
    found = stored(env)
    cost = CALL_COST * total
    assert found == {
        "rows": total, "event_ids": total, "job_ids": total, "cost": cost, "rollup_calls": total, "rollup_cost": cost,
    }  # fmt: skip
