"""Monthly budgets per customer: held atomically in Redis at dispatch, settled with the real cost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import redis
from arq.connections import ArqRedis

from ladder.app import App, open_app
from ladder.keys import Keys
from ladder.messages import JOB_RECORD_DECODER, DeadLetter, JobRecord
from ladder.results import batch_counts
from ladder.settings import Settings
from policies.config import Budgets, Candidate
from policies.customers import Customer
from policies.prices import PriceBook
from policies.tokens import estimate_tokens
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, line
from tests.pipeline import drain_workers, enqueue
from tests.test_reports import outcome
from worker.budget import BudgetBook, month_of, previous_month, to_nano
from worker.classifier_worker import classifier_worker
from worker.clickhouse import ClickHouse
from worker.provider import Completion
from worker.sink import Sink
from worker.steps import Call, Handler, Step
from worker.tier_worker import TierRuntime, tier_worker

CHEAP = Candidate("openai", "gpt-4o-mini")
# Standard's model priced above cheap's, so "the nearest cheaper tier that fits" is a real choice.
PRICED = THREE_TIERS + '\n[prices."gemini-2.0-flash"]\ninput_per_mtok = "1"\noutput_per_mtok = "4"\n'


def _settings(text: str, settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, url: str) -> Settings:
    path = tmp_path / "budget_policies.toml"
    path.write_text(text)
    env = dict(settings_env, CLICKHOUSE_URL=url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(path), env)


@pytest.fixture
def priced(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    return _settings(PRICED, settings_env, tmp_path, clickhouse, chdb_url)


def _book(app: App) -> BudgetBook:
    return BudgetBook(app.redis, app.keys, app.settings.policies.budgets)


async def _record(app: App, job_id: str) -> JobRecord:
    raw = await app.redis.get(app.keys.job(job_id))
    assert raw is not None
    return JOB_RECORD_DECODER.decode(raw)


async def _dead_letters(app: App) -> list[DeadLetter]:
    decoder = msgspec.msgpack.Decoder(DeadLetter)
    return [decoder.decode(fields[b"d"]) for _, fields in await app.redis.xrange(app.keys.deadletter)]


async def _spent(app: App, customer: str) -> int:
    month = month_of(datetime.now(UTC))
    return int(await app.redis.hget(app.keys.budget_spent(month), customer) or 0)


# --- the book on its own ---------------------------------------------------------------------------


def test_costs_become_nano_dollars_rounded_up() -> None:
    assert to_nano(Decimal(0)) == 0
    assert to_nano(Decimal("0.000000001")) == 1
    assert to_nano(Decimal("0.0000000001")) == 1  # a tenth of a nano-dollar still counts as one
    assert to_nano(Decimal("0.0000000015")) == 2
    assert to_nano(Decimal("12.5")) == 12_500_000_000


async def test_racing_reservations_never_hold_more_than_the_budget(arq_redis: ArqRedis, keys: Keys) -> None:
    book = BudgetBook(arq_redis, keys)
    estimate = Decimal("0.0123")
    await book.set_limits([Customer("acme", monthly_budget=estimate * 50 + estimate / 2)], None, "reject")
    verdicts = await asyncio.gather(*(book.reserve("acme", f"h{i}", estimate) for i in range(200)))
    assert verdicts.count("ok") == 50 and verdicts.count("reject") == 150
    (row,) = await book.status()
    assert (row.spent, row.held, row.remaining) == (0, estimate * 50, estimate / 2)


async def test_settling_replaces_the_hold_with_the_real_cost_once(arq_redis: ArqRedis, keys: Keys) -> None:
    book = BudgetBook(arq_redis, keys)
    await book.set_limits([Customer("acme", monthly_budget=Decimal(1))], None, "reject")
    assert await book.reserve("acme", "h1", Decimal("0.4")) == "ok"
    assert await book.settle("h1", Decimal("0.1")) is True
    assert await book.settle("h1", Decimal("0.1")) is False  # a second settle adds nothing
    (row,) = await book.status()
    assert (row.limit, row.spent, row.held, row.remaining) == (1, Decimal("0.1"), 0, Decimal("0.9"))
    assert await book.settle("never-held", Decimal(5)) is False


async def test_a_crashed_workers_hold_expires_and_still_counts_if_it_settles_late(
    arq_redis: ArqRedis, keys: Keys
) -> None:
    book = BudgetBook(arq_redis, keys, hold_ttl_s=0.2)
    await book.set_limits([Customer("acme", monthly_budget=Decimal(1))], None, "reject")
    assert await book.reserve("acme", "crashed", Decimal("0.9")) == "ok"
    assert await book.reserve("acme", "next", Decimal("0.5")) == "reject"
    await asyncio.sleep(0.3)  # Redis's clock passes the hold's deadline
    assert await book.reserve("acme", "next", Decimal("0.5")) == "ok"  # the stale hold was released
    (row,) = await book.status()
    assert row.held == Decimal("0.5")
    # The "crashed" call did finish after all: its money was spent, so it counts, once.
    assert await book.settle("crashed", Decimal("0.3")) is True
    assert await book.settle("crashed", Decimal("0.3")) is False
    (row,) = await book.status()
    assert (row.spent, row.held) == (Decimal("0.3"), Decimal("0.5"))


async def test_reconcile_raises_redis_spend_to_clickhouse_and_never_lowers_it(arq_redis: ArqRedis, keys: Keys) -> None:
    book = BudgetBook(arq_redis, keys)
    await book.charge("acme", Decimal("2"))
    await book.charge("globex", Decimal("5"))
    month = book.month()
    raised = await book.reconcile(month, {"acme": Decimal("3.5"), "globex": Decimal("4"), "initech": Decimal("1")})
    assert raised == 2
    spent = {r.customer: r.spent for r in await book.status()}
    assert spent == {"acme": Decimal("3.5"), "globex": Decimal(5), "initech": Decimal(1)}
    assert await book.reconcile(month, {"acme": Decimal(1)}) == 0
    assert {r.customer: r.spent for r in await book.status()}["acme"] == Decimal("3.5")


async def test_the_sink_reconciles_budgets_with_clickhouse_on_start(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse
) -> None:
    """Redis lost its spend (restarted without persistence); ClickHouse holds this month's calls."""
    now = datetime.now(UTC).timestamp()
    clickhouse.insert_outcomes(
        [outcome(customer="acme", cost=Decimal("2.25"), finished_at=now),
         outcome(customer="acme", cost=Decimal("0.75"), finished_at=now),
         outcome(customer="globex", cost=Decimal("9"), finished_at=now - 40 * 86400)]  # an earlier month
    )  # fmt: skip
    book = BudgetBook(arq_redis, keys)
    await Sink(arq_redis, keys, clickhouse, budgets=book).setup()
    assert {r.customer: r.spent for r in await book.status()} == {"acme": Decimal(3)}


async def test_the_month_is_the_utc_calendar_month(arq_redis: ArqRedis, keys: Keys) -> None:
    new_york_evening = datetime(2024, 1, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))  # 01:00 UTC, Feb 1
    assert month_of(new_york_evening) == "2024-02"
    assert previous_month("2024-01") == "2023-12" and previous_month("2024-10") == "2024-09"
    now = [datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC)]
    book = BudgetBook(arq_redis, keys, clock=lambda: now[0])
    await book.set_limits([Customer("acme", monthly_budget=Decimal(1))], None, "reject")
    assert await book.reserve("acme", "h1", Decimal("0.9")) == "ok"
    now[0] = new_york_evening
    # A new month: the budget is whole again, and the January call settles into January.
    assert await book.reserve("acme", "h2", Decimal("0.9")) == "ok"
    assert await book.settle("h1", Decimal("0.7")) is True
    assert await arq_redis.hget(keys.budget_spent("2024-01"), "acme") == b"700000000"
    assert await arq_redis.hget(keys.budget_held("2024-01"), "acme") is None
    assert await arq_redis.hget(keys.budget_held("2024-02"), "acme") == b"900000000"


async def test_customers_without_a_limit_pass_and_their_spend_is_still_counted(arq_redis: ArqRedis, keys: Keys) -> None:
    book = BudgetBook(arq_redis, keys)
    assert await book.reserve("anyone", "h0", Decimal(10**6)) == "ok"  # no file loaded, no default: no limit
    await book.settle("h0", Decimal(1))
    await book.set_limits([Customer("free"), Customer("capped", monthly_budget=Decimal(1))], None, "reject")
    assert await book.reserve("free", "h1", Decimal(10**6)) == "ok"
    assert await book.reserve("stranger", "h2", Decimal(10**6)) == "ok"
    rows = {r.customer: r for r in await book.status()}
    assert rows["free"].limit is None and rows["free"].remaining is None
    assert rows["anyone"].spent == 1


async def test_loading_limits_replaces_the_previous_set_and_defaults_fill_the_gaps(
    arq_redis: ArqRedis, keys: Keys
) -> None:
    book = BudgetBook(arq_redis, keys, Budgets(default_monthly_usd=Decimal(7), at_limit="downgrade"))
    assert await book.reserve("x", "h1", Decimal(8)) == "downgrade"  # before any file: the policies' default
    await book.set_limits([Customer("old", monthly_budget=Decimal(1))], Decimal(2), "reject")
    await book.set_limits(
        [Customer("own", monthly_budget=Decimal(5), at_limit="downgrade"), Customer("plain", plan="pro")],
        Decimal(3), "reject",
    )  # fmt: skip
    rows = {r.customer: (r.limit, r.at_limit) for r in await book.status()}
    assert rows == {"own": (5, "downgrade"), "plain": (3, "reject")}
    assert await book.reserve("old", "h2", Decimal("2.5")) == "ok"  # its limit of 1 is gone: the file's default, 3
    assert await book.reserve("stranger", "h3", Decimal("3.5")) == "reject"
    assert await book.default_limit() == (Decimal(3), "reject", True)


# --- in the workers ----------------------------------------------------------------------------------


class _Gate:
    """Holds every call until at least two workers have calls in flight (at most 5 s), then a little
    longer, so several workers really race for one budget however their start-up is scheduled."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._several = asyncio.Event()

    def step(self, worker: int) -> Step:
        async def pause(call: Call, proceed: Handler) -> Completion:
            self._seen.add(worker)
            if len(self._seen) > 1:
                self._several.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._several.wait()
            await asyncio.sleep(0.02)
            return await proceed(call)

        return pause


@pytest.mark.parametrize("answers", ["as long as allowed", "half as long"])
async def test_200_jobs_racing_for_a_budget_of_50_never_overspend_it(
    settings: Settings, fake: FakeProvider, tmp_path: Path, answers: str
) -> None:
    max_out = 100
    # As long as allowed, every real cost equals its estimate: exactly 50 fit.
    fake.reply(CHEAP.model, "x" * (4 * max_out if answers == "as long as allowed" else 2 * max_out))
    prompts = [f"question number {i:04d}?" for i in range(200)]
    path = tmp_path / "race.jsonl"
    path.write_text("\n".join(line(id=f"r{i}", customer="acme", prompt=p, max_output_tokens=max_out)
                              for i, p in enumerate(prompts)) + "\n")  # fmt: skip
    prices = PriceBook(settings.policies)
    estimate = prices.cost(CHEAP, estimate_tokens(prompts[0]), max_out)
    budget = estimate * 50 + estimate / 2
    async with open_app(settings) as app:
        await _book(app).set_limits([Customer("acme", monthly_budget=budget)], None, "reject")
        await enqueue(app, path, "race")
        # Ten workers (as if ten processes, each its own runtime), 20 jobs in flight each; a gate in
        # front of every call lets the workers' jobs pile up at the budget together.
        gate = _Gate()
        runtimes = [TierRuntime(app.settings.policies, app.redis, app.keys, app.providers(), [gate.step(i)])
                    for i in range(10)]  # fmt: skip
        workers = [
            tier_worker(r, "cheap", burst=True, poll_delay=0, handle_signals=False, max_jobs=20) for r in runtimes
        ]
        await asyncio.gather(*(w.async_run() for w in workers))
        assert sum(w.jobs_complete > 0 for w in workers) > 1  # several workers really raced for one budget
        counts = await batch_counts(app.redis, app.keys, "race")
        letters = await _dead_letters(app)
        (row,) = await _book(app).status()

    served = [c for c in fake.calls() if c.status == 200]
    real = sum((prices.cost(CHEAP, c.input_tokens, c.output_tokens) for c in served), Decimal(0))
    assert real <= budget + estimate
    assert counts["ok"] == len(served) and counts["ok"] + counts["dead"] == 200 == counts["final"]
    assert len(letters) == counts["dead"]
    assert all(d.attempts[-1].error_class == "over_budget" for d in letters)
    assert all("'acme' is over its monthly budget" in d.reason for d in letters)
    assert row.held == 0 and row.spent == Decimal(sum(to_nano(prices.cost(CHEAP, c.input_tokens, c.output_tokens))
                                                      for c in served)).scaleb(-9)  # fmt: skip
    if answers == "as long as allowed":
        assert (counts["ok"], counts["dead"]) == (50, 150)
    else:  # answers shorter than their max leave money that fits more jobs, but not all of them
        assert 50 < counts["ok"] < 200


async def test_downgrade_runs_the_job_on_the_nearest_cheaper_tier_that_fits(
    priced: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    prompt = "hello there"
    prices = PriceBook(priced.policies)
    cheap = prices.cost(CHEAP, estimate_tokens(prompt), 100)
    standard = prices.cost(Candidate("gemini", "gemini-2.0-flash"), estimate_tokens(prompt), 100)
    assert standard > cheap * 2
    path = tmp_path / "down.jsonl"
    path.write_text("\n".join([
        line(id="thrifty", customer="thrifty", prompt=prompt, tier_hint="premium", max_output_tokens=100),
        line(id="broke", customer="broke", prompt=prompt, tier_hint="premium", max_output_tokens=100),
        line(id="strict", customer="strict", prompt=prompt, tier_hint="premium", max_output_tokens=100),
    ]) + "\n")  # fmt: skip
    customers = [
        Customer("thrifty", monthly_budget=cheap * 2, at_limit="downgrade"),  # cheap fits; standard, premium do not
        Customer("broke", monthly_budget=cheap / 2, at_limit="downgrade"),  # nothing fits
        Customer("strict", monthly_budget=cheap * 2, at_limit="reject"),
    ]
    async with open_app(priced) as app:
        await _book(app).set_limits(customers, None, "reject")
        await enqueue(app, path, "down")
        await drain_workers(app)
        thrifty, broke, strict = [await _record(app, j) for j in ("thrifty", "broke", "strict")]
        assert (thrifty.status, thrifty.tier, thrifty.model) == ("ok", "cheap", CHEAP.model)
        assert thrifty.path == ["cheap:openai/gpt-4o-mini:ok"]
        assert broke.status == "dead" and "no cheaper tier fits" in broke.reason
        assert strict.status == "dead" and "over its monthly budget" in strict.reason
        assert await _spent(app, "thrifty") == to_nano(thrifty.cost) > 0
    assert [c.model for c in fake.calls()] == [CHEAP.model]


async def test_downgrade_skips_a_tier_the_job_has_already_tried(
    priced: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    prompt = "hello again"
    cheap = PriceBook(priced.policies).cost(CHEAP, estimate_tokens(prompt), 100)
    fake.fail(CHEAP.model, status=500, times=1)  # cheap fails: the job climbs to standard, over budget there
    path = tmp_path / "climb.jsonl"
    path.write_text(line(id="c1", customer="thrifty", prompt=prompt, max_output_tokens=100) + "\n")
    async with open_app(priced) as app:
        await _book(app).set_limits([Customer("thrifty", monthly_budget=cheap * 2)], None, "downgrade")
        await enqueue(app, path, "climb")
        await drain_workers(app)
        record = await _record(app, "c1")
    assert record.status == "dead" and "no cheaper tier fits" in record.reason
    assert record.path == ["cheap:openai/gpt-4o-mini:escalated(transient)",
                           "standard:gemini/gemini-2.0-flash:dead(over_budget)"]  # fmt: skip
    assert [c.model for c in fake.calls()] == [CHEAP.model]


async def test_a_rejected_answer_is_billed_against_the_budget_too(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CHEAP.model, "I'm not sure what you mean.")  # uncertain: escalates, but was paid for
    path = tmp_path / "unsure.jsonl"
    path.write_text(line(id="u1", customer="acme", prompt="What is it?") + "\n")
    async with open_app(settings) as app:
        await enqueue(app, path, "unsure")
        await drain_workers(app)
        record = await _record(app, "u1")
        spent = await _spent(app, "acme")
    assert record.status == "ok" and record.path[0] == "cheap:openai/gpt-4o-mini:escalated(uncertain)"
    prices = PriceBook(settings.policies)
    billed = [
        to_nano(prices.cost(Candidate(c.provider, c.model), c.input_tokens, c.output_tokens)) for c in fake.calls()
    ]
    assert len(billed) == 2 and spent == sum(billed) and billed[0] > 0


async def test_the_classifier_call_is_charged_to_the_jobs_customer(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply("gpt-4.1-nano", '{"complexity": "simple", "confidence": 0.95}')
    path = tmp_path / "classify.jsonl"
    path.write_text(line(id="k1", customer="initech", prompt="Write about the spring weather. " * 60) + "\n")
    async with open_app(settings) as app:
        report, _ = await enqueue(app, path, "classify")
        assert report.routed == {"classify": 1}
        runtime = await app.classifier_runtime()
        await classifier_worker(runtime, burst=True, poll_delay=0, handle_signals=False).async_run()
        ((call),) = fake.calls()
        cost = PriceBook(settings.policies).cost(Candidate("openai", call.model), call.input_tokens, call.output_tokens)
        assert await _spent(app, "initech") == to_nano(cost) > 0


async def test_with_budgets_disabled_nothing_is_held_or_refused(
    settings_env: dict[str, str], fake: FakeProvider, tmp_path: Path, clickhouse: ClickHouse, chdb_url: str
) -> None:
    off = _settings(THREE_TIERS + '\n[budgets]\nenabled = false\ndefault_monthly_usd = "0"\n', settings_env,
                    tmp_path, clickhouse, chdb_url)  # fmt: skip
    path = tmp_path / "off.jsonl"
    path.write_text(line(id="o1", customer="acme", prompt="hello") + "\n")
    async with open_app(off) as app:
        await enqueue(app, path, "off")
        await drain_workers(app)
        assert (await _record(app, "o1")).status == "ok"
        assert await app.redis.keys(f"{app.keys.prefix}:budget:*") == []


# --- the commands ------------------------------------------------------------------------------------


def _ladder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ladder.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli_env(settings_env: dict[str, str], policies_file: Path, tmp_path: Path) -> dict[str, str]:
    return dict(settings_env, CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}", LADDER_POLICIES=str(policies_file))


def test_customers_load_stops_at_a_bad_line_and_writes_nothing(
    cli_env: dict[str, str], clean_redis: str, tmp_path: Path
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text("id,plan,monthly_budget,at_limit\nacme,pro,100,reject\nglobex,free,lots,\n")
    result = _ladder(cli_env, "customers", "load", str(path))
    assert result.returncode == 2
    assert "line 3" in result.stderr and "monthly_budget" in result.stderr
    assert redis.Redis.from_url(clean_redis).keys("ladder:budget:*") == []
    assert not (tmp_path / "ch").exists()  # ClickHouse was not even opened


def test_customers_load_then_budgets_shows_each_customers_month(
    cli_env: dict[str, str], clean_redis: str, tmp_path: Path
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text("id,plan,monthly_budget,at_limit\nacme,pro,100,downgrade\nglobex,free,,\n")
    loaded = _ladder(cli_env, "customers", "load", str(path))
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 2 customers" in loaded.stdout
    month = month_of(datetime.now(UTC))
    redis.Redis.from_url(clean_redis).hset(f"ladder:budget:spent:{month}", "acme", 2_500_000_000)
    shown = _ladder(cli_env, "budgets", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["customer"]: r for r in json.loads(shown.stdout)["rows"]}
    assert rows["acme"] == {"customer": "acme", "monthly budget": "100", "spent": "2.5", "held": "0",
                            "remaining": "97.5", "at limit": "downgrade"}  # fmt: skip
    assert rows["globex"]["monthly budget"] is None and rows["globex"]["at limit"] == "reject"
    table = _ladder(cli_env, "budgets")
    assert "acme" in table.stdout and "$97.5000" in table.stdout
    stored = subprocess.run(
        [sys.executable, "-c", "import sys; from worker.clickhouse import ClickHouse; "
         "print(ClickHouse(sys.argv[1], 'ladder').query('SELECT customer FROM {db}.customers ORDER BY customer'))",
         cli_env["CLICKHOUSE_URL"]],
        capture_output=True, text=True, timeout=120, env=cli_env,
    )  # fmt: skip
    assert stored.stdout.strip() == "[('acme',), ('globex',)]", stored.stderr
