"""Budgets across processes: three `ladder worker` processes race one customer's jobs for a monthly
budget that fits only some of them, and the sink lands every outcome in ClickHouse.

Every answer is as long as its max_output_tokens allows, so each call's real cost equals the hold it
took: exactly FITS jobs fit, whichever process runs them. A customer already at its limit, and the
racing customer once it has reached its own, get no provider call at all.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import redis
import redis.asyncio

from ladder.keys import Keys
from ladder.messages import JOB_RECORD_DECODER, DeadLetter, Job
from policies.config import Candidate, parse_policies
from policies.customers import Customer
from policies.prices import PriceBook
from policies.tokens import estimate_tokens
from producer.submit import Producer
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS
from tests.processes import Process, wait_for
from worker.budget import BudgetBook, month_of, to_nano
from worker.clickhouse import ClickHouse
from worker.sink import Sink

KEYS = Keys("ladder")
POLICIES = parse_policies(THREE_TIERS)
CHEAP = Candidate("openai", "gpt-4o-mini")
MAX_OUT = 100
FITS = 15  # acme's budget fits this many calls
RACERS = 45  # acme's jobs in the race
LATE = 10  # acme's jobs sent once it is at its limit
BROKE = 6  # jobs of a customer at its limit from the start
WORKERS = 3


def acme_prompt(i: int) -> str:
    return f"acme question {i:03d}?"  # all of one length: one estimate


def broke_prompt(i: int) -> str:
    return f"broke customer asks a longer question, number {i:03d}?"  # another token count than acme's


def _final(db: redis.Redis, batch: str) -> int:
    return int(db.hget(KEYS.batch_counts(batch), "final") or 0)


def _records(db: redis.Redis, ids: list[str]) -> dict[str, str]:
    return {i: JOB_RECORD_DECODER.decode(db.get(KEYS.job(i))).status for i in ids}


async def _set_limits(url: str, limits: dict[str, Decimal]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    await BudgetBook(client, KEYS).set_limits(
        [Customer(c, monthly_budget=usd) for c, usd in limits.items()], None, "reject"
    )
    await client.aclose()


async def _submit(url: str, batch: str, jobs: list[Job]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    report = await Producer(client, POLICIES, KEYS).submit(jobs, batch)
    assert report.routed == {"cheap": len(jobs)}
    await client.aclose()


def test_worker_processes_racing_for_a_budget_never_overspend_it(
    cli_env: dict[str, str],
    fake: FakeProvider,
    clean_redis: str,
    clickhouse: ClickHouse,
    tmp_path: Path,
    processes: Callable[..., Process],
) -> None:
    fake.reply(CHEAP.model, "x" * (4 * MAX_OUT))  # as long as allowed: each real cost equals its hold
    prices = PriceBook(POLICIES)
    estimate = prices.cost(CHEAP, estimate_tokens(acme_prompt(0)), MAX_OUT)
    limit = estimate * FITS + estimate / 2
    broke_limit = Decimal("0.5")
    db = redis.Redis.from_url(clean_redis)
    month = month_of(datetime.now(UTC))
    asyncio.run(_set_limits(clean_redis, {"acme": limit, "broke": broke_limit}))
    db.hset(KEYS.budget_spent(month), "broke", to_nano(broke_limit))  # at its limit before the race

    workers = [
        processes(cli_env, tmp_path / f"worker{n}.log", "worker", "--tier", "cheap", "--concurrency", "10")
        for n in range(WORKERS)
    ]
    wait_for(lambda: all("worker started" in w.output() for w in workers), 90, "three workers polling")

    racers = [Job(id=f"a{i}", prompt=acme_prompt(i), customer="acme", max_output_tokens=MAX_OUT) for i in range(RACERS)]
    broke = [Job(id=f"b{i}", prompt=broke_prompt(i), customer="broke", max_output_tokens=MAX_OUT) for i in range(BROKE)]
    mixed = list(racers)
    for n, job in enumerate(broke):  # spread through the race, not after it
        mixed.insert(n * (RACERS // BROKE + 1), job)
    asyncio.run(_submit(clean_redis, "race", mixed))
    wait_for(lambda: _final(db, "race") == RACERS + BROKE, 120, "every racing job settled")
    calls_after_race = len(fake.calls())

    late = [Job(id=f"late{i}", prompt=acme_prompt(i), customer="acme", max_output_tokens=MAX_OUT) for i in range(LATE)]
    asyncio.run(_submit(clean_redis, "late", late))
    wait_for(lambda: _final(db, "late") == LATE, 60, "acme's late jobs settled")

    stopped = [w.stop(signal.SIGTERM, timeout=60) for w in workers]
    assert [code for code, _ in stopped] == [0] * WORKERS
    done = [_stopped_done(w.output()) for w in workers]
    assert sum(n > 0 for n in done) >= 2, done  # several processes really took jobs at once

    # Every job ended: acme's first FITS calls ok, the rest and every job of broke refused.
    statuses = _records(db, [j.id for j in racers + broke + late])
    ok = sorted(i for i, s in statuses.items() if s == "ok")
    assert len(ok) == FITS and all(i.startswith("a") for i in ok), ok
    assert all(s == "dead" for i, s in statuses.items() if i not in ok)
    letters = [msgspec.msgpack.decode(f[b"d"], type=DeadLetter) for _, f in db.xrange(KEYS.deadletter)]
    assert sorted(d.job_id for d in letters) == sorted(i for i in statuses if i not in ok)
    for d in letters:
        assert d.attempts[-1].error_class == "over_budget"
        assert f"customer '{d.job.customer}' is over its monthly budget" in d.reason

    # No provider call for a customer at its limit: every call is one of acme's ok jobs.
    calls = fake.calls()
    assert len(calls) == calls_after_race == FITS
    assert all(c.status == 200 and c.input_tokens == estimate_tokens(acme_prompt(0)) for c in calls)
    real = sum((prices.cost(CHEAP, c.input_tokens, c.output_tokens) for c in calls), Decimal(0))
    assert real == estimate * FITS <= limit

    # Redis: spent within the limit, nothing left held, broke's month untouched.
    spent = {k.decode(): int(v) for k, v in db.hgetall(KEYS.budget_spent(month)).items()}
    assert spent == {"acme": FITS * to_nano(estimate), "broke": to_nano(broke_limit)}
    assert spent["acme"] <= to_nano(limit)
    assert not db.hgetall(KEYS.budget_held(month))

    # ClickHouse, after the sink: the same spend, within the limit; the refusals cost nothing.
    asyncio.run(_sink(clean_redis, clickhouse))
    raw = dict(clickhouse.query("SELECT customer, sum(cost) FROM {db}.outcomes GROUP BY customer"))
    assert raw["acme"] == real <= limit and raw["broke"] == 0
    assert clickhouse.month_spend(datetime.now(UTC).date()) == {"acme": real, "broke": 0}
    finals = clickhouse.query("SELECT status, error_class, count() FROM {db}.outcomes WHERE final GROUP BY 1, 2")
    assert sorted(finals) == [("dead", "over_budget", RACERS + BROKE + LATE - FITS), ("ok", "", FITS)]
    db.close()


async def _sink(url: str, clickhouse: ClickHouse) -> None:
    """The sink of `ladder sink --burst`, in this process: its chdb folder is this process's."""
    client = redis.asyncio.Redis.from_url(url)
    stats = await Sink(client, KEYS, clickhouse, budgets=BudgetBook(client, KEYS)).run(burst=True)
    assert stats.inserted == RACERS + BROKE + LATE
    await client.aclose()


def _stopped_done(log: str) -> int:
    """The jobs a worker process finished, from its "worker stopped" log line."""
    for text in log.splitlines():
        if '"worker stopped"' in text:
            return int(json.loads(text)["done"])
    raise AssertionError(f"no 'worker stopped' line in:\n{log[-2000:]}")
