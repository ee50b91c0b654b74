"""The sink loses nothing and inserts nothing twice across crashes."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from arq.connections import ArqRedis

from ladder.keys import Keys
from ladder.messages import ENCODER, Outcome, RouteSource, Status
from worker.clickhouse import ClickHouse
from worker.sink import Sink


def outcome(n: int, cost: str = "0.001") -> Outcome:
    now = time.time()
    return Outcome(
        event_id=f"job-{n}#1", job_id=f"job-{n}", batch="b", customer="acme", feature="f", task="generation",
        route_source=RouteSource.RULE, intended_tier="cheap", tier="cheap", provider="openai", model="gpt-4o-mini",
        attempt=1, status=Status.OK, error_class="", error_message="", input_tokens=10, output_tokens=5,
        cost=Decimal(cost), counterfactual_cost=Decimal("0.01"), latency_ms=1.5, started_at=now, finished_at=now,
        strategy="s", simulated=False, final=True,
    )  # fmt: skip


async def test_events_read_but_not_acked_by_a_dead_sink_are_inserted_once(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse
) -> None:
    for n in range(10):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    dead = Sink(arq_redis, keys, clickhouse, consumer="dead-sink")
    await dead.setup()
    # The dead sink read 4 entries and died before inserting them: they sit in its pending list.
    await arq_redis.xreadgroup(keys.sink_group, "dead-sink", {keys.outcomes: ">"}, count=4)
    # A restart under the same name re-reads its own pending entries first.
    stats = await Sink(arq_redis, keys, clickhouse, consumer="dead-sink").run(burst=True)
    assert stats.inserted == 10
    assert clickhouse.query("SELECT count(), sum(cost) FROM {db}.outcomes FINAL") == [(10, Decimal("0.01"))]
    assert await arq_redis.xlen(keys.outcomes) == 0


async def test_another_sink_claims_entries_a_dead_consumer_left_idle(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch
) -> None:
    for n in range(5):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    await Sink(arq_redis, keys, clickhouse, consumer="gone").setup()
    await arq_redis.xreadgroup(keys.sink_group, "gone", {keys.outcomes: ">"}, count=5)
    monkeypatch.setattr("worker.sink.CLAIM_IDLE_MS", 0)
    stats = await Sink(arq_redis, keys, clickhouse, consumer="other").run(burst=True)
    assert stats.inserted == 5
    assert clickhouse.query("SELECT count() FROM {db}.outcomes FINAL") == [(5,)]


async def test_a_running_sink_claims_what_a_sink_killed_after_it_started_left_behind(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch
) -> None:
    """A replacement pod starts before the dead sink's entries are idle long enough to claim: the
    running sink must pick them up later, not leave them pending for ever."""
    monkeypatch.setattr("worker.sink.CLAIM_IDLE_MS", 500)
    monkeypatch.setattr("worker.sink.CLAIM_EVERY_S", 0.2)
    for n in range(5):
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(n))})
    await Sink(arq_redis, keys, clickhouse, consumer="killed").setup()
    await arq_redis.xreadgroup(keys.sink_group, "killed", {keys.outcomes: ">"}, count=5)
    stop = asyncio.Event()
    running = asyncio.create_task(Sink(arq_redis, keys, clickhouse, consumer="new", flush_interval=0.1).run(stop=stop))
    for _ in range(100):
        await asyncio.sleep(0.1)
        if clickhouse.query("SELECT count() FROM {db}.outcomes FINAL") == [(5,)]:
            break
    stop.set()
    stats = await running
    assert stats.inserted == 5
    assert (await arq_redis.xpending(keys.outcomes, keys.sink_group))["pending"] == 0


async def test_an_insert_retried_after_a_crash_before_ack_leaves_one_row_each(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse
) -> None:
    events = [outcome(n) for n in range(3)]
    clickhouse.insert_outcomes(events)  # inserted, then the sink died before XACK ...
    for e in events:  # ... so the same events are delivered again
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(e)})
    await Sink(arq_redis, keys, clickhouse).run(burst=True)
    assert clickhouse.query("SELECT count() FROM {db}.outcomes FINAL") == [(3,)]
    # the same batch re-sent is dropped at insert by its deduplication token, not only by FINAL
    assert clickhouse.query("SELECT count() FROM {db}.outcomes") == [(3,)]


async def test_a_malformed_event_is_set_aside_not_lost(arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse) -> None:
    await arq_redis.xadd(keys.outcomes, {"e": b"\x93garbage"})
    await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(outcome(1))})
    stats = await Sink(arq_redis, keys, clickhouse).run(burst=True)
    assert (stats.inserted, stats.malformed) == (1, 1)
    ((_, fields),) = await arq_redis.xrange(keys.malformed_outcomes)
    assert fields[b"e"] == b"\x93garbage" and b"reason" in fields
