"""ClickHouse figures: how fast the sink moves outcomes into chdb, and how fast each report answers
over 10 million outcome rows.

  part 1  sink ingest. N outcome events (varied customers, models, tiers, statuses, days) are put on
          the Redis Stream, then one `Sink` drains them into chdb in batches (read, decode, insert
          through the materialized view, ack and delete). Baseline, same run, same events: the bare
          `ClickHouse.insert_outcomes` of already-decoded events in batches of the same size, which is
          the floor of what the insert itself costs. Target: >= 100,000 outcomes/s.
  part 2  reports over --rows generated outcome rows (INSERT ... SELECT FROM numbers(), through the
          same materialized view the sink feeds), each report timed as `ladder report` runs it (median
          of 3). Baseline, same run: spend by customer computed from the raw `outcomes FINAL` table, as
          the reports did before the daily rollup. Target: < 1 s each.

Needs Redis at 127.0.0.1:6379 (db 12, flushed). chdb data goes to a temporary folder.

    python bench/analytics.py [--events 300000] [--rows 10000000] [--parts 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from ladder.keys import Keys  # noqa: E402
from ladder.messages import ENCODER, Outcome, RouteSource, Status  # noqa: E402
from ladder.report import Filters, Reports  # noqa: E402
from policies.config import parse_policies  # noqa: E402
from tests.helpers import THREE_TIERS  # noqa: E402
from worker.clickhouse import ClickHouse  # noqa: E402
from worker.sink import Sink  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
BATCH = 20_000
MODELS = [("cheap", "openai", "gpt-4o-mini"), ("standard", "gemini", "gemini-2.0-flash"),
          ("premium", "anthropic", "claude-3-5-sonnet-20241022")]  # fmt: skip


def events(n: int, seed: int = 7, spread_s: float = 60.0) -> list[Outcome]:
    """n varied outcome events finished within the last `spread_s` seconds (a sink sees events as they happen)."""
    rng = random.Random(seed)
    start = time.time() - spread_s
    out = []
    for i in range(n):
        tier, provider, model = rng.choice(MODELS)
        ts = start + rng.uniform(0, spread_s)
        out.append(Outcome(
            event_id=f"bench-{seed}-{i}#1", job_id=f"bench-{seed}-{i}", batch=f"b{i % 40}",
            customer=f"customer-{rng.randrange(200)}", feature=f"feature-{rng.randrange(20)}", task="extraction",
            route_source=RouteSource.RULE, intended_tier=tier, tier=tier, provider=provider, model=model, attempt=1,
            status=Status.OK if rng.random() < 0.9 else Status.ESCALATED, error_class="", error_message="",
            input_tokens=rng.randrange(50, 4000), output_tokens=rng.randrange(10, 800),
            cost=Decimal(rng.randrange(1, 10**9)) / 10**12,
            counterfactual_cost=Decimal(rng.randrange(1, 10**9)) / 10**11,
            latency_ms=rng.uniform(50, 3000), started_at=ts, finished_at=ts, strategy="rules-v1", simulated=False,
            final=True, middle_tier_cost=Decimal(rng.randrange(1, 10**9)) / 10**12,
        ))  # fmt: skip
    return out


async def sink_rate(ch_url: str, n: int) -> tuple[float, float]:
    data = events(n)
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    keys = Keys("bench")
    pipe = redis.pipeline(transaction=False)
    for i, e in enumerate(data):
        pipe.xadd(keys.outcomes, {"e": ENCODER.encode(e)})
        if i % 10_000 == 9_999:
            await pipe.execute()
    await pipe.execute()

    raw_ch = ClickHouse(ch_url, "bench_raw")
    raw_ch.migrate()
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        raw_ch.insert_outcomes(data[i : i + BATCH])
    raw = n / (time.perf_counter() - t0)

    sink_ch = ClickHouse(ch_url, "bench_sink")
    sink = Sink(redis, keys, sink_ch, batch_size=BATCH, flush_interval=0.05)
    await sink.setup()
    t0 = time.perf_counter()
    stats = await sink.run(burst=True)
    through_sink = stats.inserted / (time.perf_counter() - t0)
    assert stats.inserted == n, stats
    assert sink_ch.query("SELECT sum(calls) FROM {db}.outcomes_daily") == [(n,)]
    await redis.flushdb()
    await redis.aclose()
    return raw, through_sink


# A month of a realistic workload: 300 customers of very different size (quadratic skew), two
# features each, one nightly batch per customer and day, 70/20/10 over the tiers, 90% of calls ok.
# The rollup's size follows what actually varies together; `--shape uniform` draws every
# dimension independently instead (the rollup then holds about as many rows as the table).
GENERATE = {
    "realistic": """
INSERT INTO {db}.outcomes
SELECT
    concat('gen-', toString(number), '#1') AS event_id,
    concat('gen-', toString(number)) AS job_id,
    concat(customer, '-', toString(toDate(finished_at))) AS batch,
    concat('customer-', toString(toUInt32(pow((cityHash64(number, 1) % 1000000) / 1e6, 2) * 300))) AS customer,
    concat('feature-', toString((cityHash64(customer) + cityHash64(number, 2) % 2) % 20)) AS feature,
    ['extraction', 'summarization', 'classification'][cityHash64(feature) % 3 + 1] AS task,
    multiIf(tier = 'cheap', 'rule', tier = 'premium' AND h % 3 = 0, 'hint',
            ['rule', 'classifier', 'embedding'][h % 3 + 1]) AS route_source,
    tier AS intended_tier,
    ['cheap', 'cheap', 'cheap', 'cheap', 'cheap', 'cheap', 'cheap', 'standard', 'standard', 'premium'][
        cityHash64(number, 4) % 10 + 1] AS tier,
    multiIf(tier = 'cheap', 'openai', tier = 'standard', 'gemini', 'anthropic') AS provider,
    multiIf(tier = 'cheap', 'gpt-4o-mini', tier = 'standard', 'gemini-2.0-flash', 'claude-3-5-sonnet') AS model,
    1 AS attempt,
    multiIf(s < 90, 'ok', s < 96, 'escalated', s < 98, 'failover', s < 99, 'retried', 'dead') AS status,
    multiIf(status = 'ok', '', status = 'escalated', ['uncertain', 'truncated', 'invalid_json'][h % 3 + 1],
            status = 'failover', ['overloaded', 'transient'][h % 2 + 1], status = 'retried', 'rate_limited',
            'transient') AS error_class,
    '' AS error_message,
    toUInt32(50 + cityHash64(number, 7) % 4000) AS input_tokens,
    toUInt32(10 + cityHash64(number, 8) % 800) AS output_tokens,
    toDecimal128(input_tokens * 0.00000015 + output_tokens * 0.0000006, 12) AS cost,
    toDecimal128(input_tokens * 0.000003 + output_tokens * 0.000015, 12) AS counterfactual_cost,
    50 + (cityHash64(number, 9) % 3000) AS latency_ms,
    now64(3) - toIntervalSecond(cityHash64(number, 10) % (30 * 86400)) AS started_at,
    started_at AS finished_at,
    'rules-v1' AS strategy,
    false AS simulated,
    status IN ('ok', 'dead') AS final,
    now64(3) AS inserted_at,
    toDecimal128(input_tokens * 0.0000001 + output_tokens * 0.0000004, 12) AS middle_tier_cost
FROM (SELECT number, cityHash64(number, 5) % 100 AS s, cityHash64(number, 6) AS h
      FROM numbers({start:UInt64}, {count:UInt64}))
""",
    "uniform": """
INSERT INTO {db}.outcomes
SELECT
    concat('gen-', toString(number), '#1') AS event_id,
    concat('gen-', toString(number)) AS job_id,
    concat('batch-', toString(number % 50)) AS batch,
    concat('customer-', toString(cityHash64(number, 1) % 500)) AS customer,
    concat('feature-', toString(cityHash64(number, 2) % 25)) AS feature,
    'extraction' AS task,
    ['rule', 'rule', 'rule', 'classifier', 'embedding', 'escalation'][cityHash64(number, 3) % 6 + 1] AS route_source,
    ['cheap', 'cheap', 'cheap', 'standard', 'premium'][cityHash64(number, 4) % 5 + 1] AS intended_tier,
    intended_tier AS tier,
    multiIf(tier = 'cheap', 'openai', tier = 'standard', 'gemini', 'anthropic') AS provider,
    multiIf(tier = 'cheap', 'gpt-4o-mini', tier = 'standard', 'gemini-2.0-flash', 'claude-3-5-sonnet') AS model,
    1 AS attempt,
    ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'escalated', 'failover'][cityHash64(number, 5) % 10 + 1] AS status,
    if(status = 'ok', '', ['transient', 'uncertain', 'rate_limited'][cityHash64(number, 6) % 3 + 1]) AS error_class,
    '' AS error_message,
    toUInt32(50 + cityHash64(number, 7) % 4000) AS input_tokens,
    toUInt32(10 + cityHash64(number, 8) % 800) AS output_tokens,
    toDecimal128(input_tokens * 0.00000015 + output_tokens * 0.0000006, 12) AS cost,
    toDecimal128(input_tokens * 0.000003 + output_tokens * 0.000015, 12) AS counterfactual_cost,
    50 + (cityHash64(number, 9) % 3000) AS latency_ms,
    now64(3) - toIntervalSecond(cityHash64(number, 10) % (90 * 86400)) AS started_at,
    started_at AS finished_at,
    'rules-v1' AS strategy,
    false AS simulated,
    status IN ('ok', 'dead') AS final,
    now64(3) AS inserted_at,
    toDecimal128(input_tokens * 0.0000001 + output_tokens * 0.0000004, 12) AS middle_tier_cost
FROM numbers({start:UInt64}, {count:UInt64})
""",
}


def timed(fn: Callable[[], Any], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report_times(ch_url: str, rows: int, shape: str) -> None:
    ch = ClickHouse(ch_url, "bench_reports")
    ch.migrate()
    t0 = time.perf_counter()
    step = 1_000_000
    for start in range(0, rows, step):
        ch.client.command(
            GENERATE[shape].replace("{db}", ch.database).replace("{start:UInt64}", str(start))
            .replace("{count:UInt64}", str(min(step, rows - start)))
        )  # fmt: skip
        print(f"  generated {min(start + step, rows):,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    stored = ch.query("SELECT count() FROM {db}.outcomes")[0][0]
    rollup_rows = ch.query("SELECT count() FROM {db}.outcomes_daily")[0][0]
    print(f"  {stored:,} outcome rows; the daily rollup holds {rollup_rows:,} rows")
    reports = Reports(ch, parse_policies(THREE_TIERS))
    everything = Filters()
    one_customer = Filters(customer="customer-7")
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("spend --by model", lambda: reports.spend(everything, "model")),
        ("spend --by customer", lambda: reports.spend(everything, "customer")),
        ("spend --by day", lambda: reports.spend(everything, "day")),
        ("spend --by customer --customer X", lambda: reports.spend(one_customer, "feature")),
        ("savings", lambda: reports.savings(everything)),
        ("routing", lambda: reports.routing(everything)),
        ("quality", lambda: reports.quality(everything)),
        ("margins", lambda: reports.margins(everything)),
        ("latency", lambda: reports.latency(everything)),
    ]
    baseline = timed(
        lambda: ch.query("SELECT customer, count(), sum(cost) FROM {db}.outcomes FINAL GROUP BY customer"), rounds=1
    )
    print(f"\n  baseline: spend by customer from raw `outcomes FINAL`: {baseline:.2f} s\n")
    print(f"  {'report':38} {'median s':>9} {'vs baseline':>12}  target < 1 s")
    for name, fn in cases:
        seconds = timed(fn)
        print(f"  {name:38} {seconds:9.3f} {seconds / baseline:11.3f}x  {'ok' if seconds < 1 else 'MISSED'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--parts", default="1,2")
    p.add_argument("--shape", choices=list(GENERATE), default="realistic", help="how part 2's rows vary")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="ladder-bench-ch-") as folder:
        ch_url = f"chdb://{folder}"
        if "1" in parts:
            print(f"part 1: sink ingest of {args.events:,} outcome events, batches of {BATCH:,}")
            raw, through_sink = asyncio.run(sink_rate(ch_url, args.events))
            print(f"  bare insert_outcomes (baseline): {raw:12,.0f} outcomes/s")
            print(f"  sink, Redis Stream -> chdb:      {through_sink:12,.0f} outcomes/s  ({through_sink / raw:.2f}x of "
                  f"baseline; target >= 100,000/s: {'ok' if through_sink >= 100_000 else 'MISSED'})")  # fmt: skip
        if "2" in parts:
            print(f"part 2: reports over {args.rows:,} outcome rows ({args.shape})")
            report_times(ch_url, args.rows, args.shape)


if __name__ == "__main__":
    main()
