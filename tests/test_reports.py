"""Reports read the daily rollup: its figures equal the raw outcomes', exactly, across replays and
migrations; each report's numbers are checked against data built by hand."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from arq.connections import ArqRedis

from ladder.keys import Keys
from ladder.messages import ENCODER, Outcome, RouteSource, Status
from ladder.report import Filters, ReportError, Reports, parse_day
from policies.config import parse_policies
from policies.customers import Customer
from tests.helpers import THREE_TIERS
from worker.clickhouse import OUTCOME_COLUMNS, ClickHouse
from worker.sink import Sink

POLICIES = parse_policies(THREE_TIERS)
_ids = itertools.count()


def at(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC).timestamp()


def outcome(**over: object) -> Outcome:
    n = next(_ids)
    fields: dict[str, object] = dict(
        event_id=f"e{n}", job_id=f"j{n}", batch="b", customer="acme", feature="faq", task="generation",
        route_source=RouteSource.RULE, intended_tier="cheap", tier="cheap", provider="openai", model="gpt-4o-mini",
        attempt=1, status=Status.OK, error_class="", error_message="", input_tokens=100, output_tokens=50,
        cost=Decimal("0.001"), counterfactual_cost=Decimal("0.01"), middle_tier_cost=Decimal("0.004"),
        latency_ms=100.0, started_at=at("2026-11-02"), finished_at=at("2026-11-02"), strategy="rules-v1",
        simulated=False, final=True,
    )  # fmt: skip
    fields.update(over)
    return Outcome(**fields)  # type: ignore[arg-type]


def escalated_job(job: str, day: str = "2026-11-02", customer: str = "acme") -> list[Outcome]:
    """A job that failed on cheap (uncertain answer, billed) and finished on standard."""
    return [
        outcome(event_id=f"{job}#1", job_id=job, customer=customer, status=Status.ESCALATED, error_class="uncertain",
                final=False, cost=Decimal("0.002"), counterfactual_cost=Decimal("0.02"), finished_at=at(day)),
        outcome(event_id=f"{job}#2", job_id=job, customer=customer, route_source=RouteSource.ESCALATION,
                tier="standard", provider="gemini", model="gemini-2.0-flash", attempt=2, cost=Decimal("0.005"),
                counterfactual_cost=Decimal("0.03"), middle_tier_cost=Decimal("0.005"), finished_at=at(day)),
    ]  # fmt: skip


def classifier_call(job: str, day: str = "2026-11-02") -> Outcome:
    return outcome(event_id=f"{job}#classify", job_id=job, route_source=RouteSource.CLASSIFIER, intended_tier="classify",
                   tier="classify", model="gpt-4.1-nano", attempt=0, final=False, cost=Decimal("0.0001"),
                   finished_at=at(day))  # fmt: skip


@pytest.fixture
def reports(clickhouse: ClickHouse) -> Reports:
    return Reports(clickhouse, POLICIES)


def test_spend_by_customer_is_exact_and_filters_are_parameters(clickhouse: ClickHouse, reports: Reports) -> None:
    clickhouse.insert_outcomes(
        [outcome(customer="acme", cost=Decimal("0.000000000001")) for _ in range(3)]
        + [outcome(customer="globex", cost=Decimal("1.1"), feature="legal")]
        + escalated_job("esc", customer="globex")
    )
    table = reports.spend(Filters(), "customer")
    rows = {r[0]: r for r in table.rows}
    assert rows["acme"][1:8] == (3, 3, 3, 0, 300, 150, Decimal("0.000000000003"))
    assert rows["globex"][1:8] == (3, 2, 2, 1, 300, 150, Decimal("1.107"))
    assert rows["TOTAL"][7] == Decimal("1.107000000003")
    assert [r[0] for r in table.rows] == ["globex", "acme", "TOTAL"]  # most expensive first

    assert {r[0] for r in reports.spend(Filters(feature="legal"), "customer").rows} == {"globex", "TOTAL"}
    # A hostile value is compared as a value: no rows, no error, no SQL executed.
    hostile = "acme' OR '1'='1"
    assert reports.spend(Filters(customer=hostile), "model").rows == []
    assert reports.spend(Filters(customer="x'); DROP TABLE outcomes; --"), "tier").rows == []
    assert clickhouse.query("SELECT count() FROM {db}.outcomes") == [(6,)]
    with pytest.raises(ReportError, match="--by: 'colour'"):
        reports.spend(Filters(), "colour")


def test_since_and_until_select_whole_utc_days(clickhouse: ClickHouse, reports: Reports) -> None:
    clickhouse.insert_outcomes(
        [outcome(finished_at=at("2026-10-31", 23)), outcome(finished_at=at("2026-11-01", 0)),
         outcome(finished_at=at("2026-11-15")), outcome(finished_at=at("2026-11-30", 23))]
    )  # fmt: skip

    def days(f: Filters) -> list[str]:
        return [r[0] for r in reports.spend(f, "day").rows if r[0] != "TOTAL"]

    assert sorted(days(Filters(since=date(2026, 11, 1)))) == ["2026-11-01", "2026-11-15", "2026-11-30"]
    assert sorted(days(Filters(until=date(2026, 11, 1)))) == ["2026-10-31", "2026-11-01"]
    assert days(Filters(since=date(2026, 11, 2), until=date(2026, 11, 29))) == ["2026-11-15"]
    today = date(2026, 11, 29)
    assert parse_day("30d", "--since", today) == date(2026, 10, 30)
    assert parse_day("2026-11-01", "--since", today) == date(2026, 11, 1)
    with pytest.raises(ReportError, match="--until: 'last week' is not a date"):
        parse_day("last week", "--until", today)


def test_savings_subtracts_the_classifier_and_counts_each_job_once(clickhouse: ClickHouse, reports: Reports) -> None:
    clickhouse.insert_outcomes(
        [outcome(), outcome(), *escalated_job("esc"), classifier_call("c1"), outcome(finished_at=at("2026-11-03"))]
    )
    table = reports.savings(Filters())
    assert table.columns[:8] == ["day", "jobs", "model_cost", "classifier_cost", "actual", "all_premium", "saved",
                                 "saved_%"]  # fmt: skip
    assert table.columns[8:] == ["all_standard", "saved_vs_standard", "saved_vs_standard_%"]
    day1 = table.rows[0]
    # 3 jobs: two plain (0.001 each) and one escalated (0.002 + 0.005); the classifier 0.0001.
    assert day1[:5] == ("2026-11-02", 3, Decimal("0.009"), Decimal("0.0001"), Decimal("0.0091"))
    # Counterfactual: each job once, priced on its final answer's tokens: 0.01 + 0.01 + 0.03.
    assert day1[5:8] == (Decimal("0.05"), Decimal("0.0409"), 81.8)
    assert day1[8:10] == (Decimal("0.013"), Decimal("0.0039"))
    total = table.rows[-1]
    assert total[:7] == ("TOTAL", 4, Decimal("0.010"), Decimal("0.0001"), Decimal("0.0101"), Decimal("0.06"),
                         Decimal("0.0499"))  # fmt: skip


def test_routing_shows_intended_against_actual_and_why_jobs_moved(clickhouse: ClickHouse, reports: Reports) -> None:
    dead = [
        outcome(event_id="d#1", job_id="d", intended_tier="premium", tier="premium", status=Status.FAILOVER,
                error_class="overloaded", final=False, input_tokens=0, output_tokens=0),
        outcome(event_id="d#2", job_id="d", intended_tier="premium", tier="premium", status=Status.DEAD,
                error_class="transient", final=True),
    ]  # fmt: skip
    clickhouse.insert_outcomes([outcome(), outcome(), *escalated_job("esc"), *dead, classifier_call("c")])
    split, by_tier, by_reason = reports.routing(Filters())
    rows = {r[0]: r for r in split.rows}
    assert rows["cheap"] == ("cheap", 3, 75.0, 2, 50.0, 0)
    assert rows["standard"] == ("standard", 0, 0.0, 1, 25.0, 0)
    assert rows["premium"] == ("premium", 1, 25.0, 0, 0.0, 1)
    assert split.notes == ["dead-lettered jobs: 1"]
    tiers = {r[0]: r for r in by_tier.rows}
    assert tiers["cheap"][:4] == ("cheap", 3, 1, 33.3)
    assert tiers["premium"][1:] == (2, 0, 0.0, 1, 50.0, 0, 1)
    assert "classify" not in tiers
    assert ("cheap", "uncertain", 1, 0, 0, 0) in by_reason.rows
    assert ("premium", "overloaded", 0, 1, 0, 0) in by_reason.rows


def test_quality_is_the_validation_pass_rate_by_route_and_tier(clickhouse: ClickHouse, reports: Reports) -> None:
    kept_flagged = outcome(tier="premium", status=Status.OK, error_class="truncated")  # top tier keeps it, flagged
    no_answer = outcome(status=Status.FAILOVER, error_class="rate_limited", final=False)
    clickhouse.insert_outcomes([outcome(), outcome(), outcome(), *escalated_job("e"), kept_flagged, no_answer])
    rows = {(r[0], r[1]): r for r in reports.quality(Filters()).rows}
    # cheap by rule: 3 passed + 1 uncertain; the rate-limited call returned no answer and is not judged.
    assert rows[("rule", "cheap")][3:] == (4, 3, 1, 75.0)
    assert rows[("escalation", "standard")][3:] == (1, 1, 0, 100.0)
    assert rows[("rule", "premium")][3:] == (1, 0, 1, 0.0)


def test_margins_put_negative_customers_first_and_prorate_monthly_revenue(
    clickhouse: ClickHouse, reports: Reports
) -> None:
    clickhouse.insert_outcomes(
        [outcome(customer="acme", cost=Decimal("40"), finished_at=at("2026-11-01")),
         outcome(customer="acme", cost=Decimal("40"), finished_at=at("2026-11-30")),
         outcome(customer="initech", cost=Decimal("3"), finished_at=at("2026-11-10")),
         outcome(customer="stranger", cost=Decimal("1"), finished_at=at("2026-11-10"))]
    )  # fmt: skip
    clickhouse.replace_customers(
        [Customer("acme", "pro", revenue_per_month=Decimal("60")),
         Customer("initech", "usage", revenue_per_request=Decimal("5.25")),
         Customer("idle", "pro", revenue_per_month=Decimal("30"))]
    )  # fmt: skip
    table = reports.margins(Filters(since=date(2026, 11, 1), until=date(2026, 11, 30)))
    assert [r[0] for r in table.rows] == ["acme", "stranger", "initech", "idle"]
    assert table.rows[0] == ("acme", "pro", 2, Decimal("80"), Decimal("60.00"), Decimal("-20.00"), -33.3)
    assert table.rows[2][2:6] == (1, Decimal("3"), Decimal("5.25"), Decimal("2.25"))
    assert table.rows[3][3:6] == (Decimal("0"), Decimal("30.00"), Decimal("30.00"))
    assert table.rows[1][1] == "(not in customers)"
    # Half of November: half the monthly revenue.
    half = reports.margins(Filters(since=date(2026, 11, 1), until=date(2026, 11, 15), customer="acme"))
    assert half.rows == [("acme", "pro", 1, Decimal("40"), Decimal("30.00"), Decimal("-10.00"), -33.3)]
    # Loading replaces the whole set.
    clickhouse.replace_customers([Customer("acme", "enterprise", revenue_per_month=Decimal("500"))])
    again = reports.margins(Filters(since=date(2026, 11, 1), until=date(2026, 11, 30)))
    assert {r[0]: r[1] for r in again.rows}["acme"] == "enterprise" and "idle" not in {r[0] for r in again.rows}


def test_latency_percentiles_by_model_and_tier(clickhouse: ClickHouse, reports: Reports) -> None:
    clickhouse.insert_outcomes([outcome(latency_ms=float(ms)) for ms in range(1, 1001)])
    clickhouse.insert_outcomes([outcome(tier="premium", provider="anthropic", model="m", latency_ms=50.0)] * 1)
    clickhouse.insert_outcomes([outcome(status=Status.DEAD, error_class="over_budget", latency_ms=0.0)])
    rows = {(r[0], r[1]): r for r in reports.latency(Filters()).rows}
    calls, p50, p95, p99 = rows[("openai/gpt-4o-mini", "cheap")][2:]
    assert calls == 1000  # the job refused for its budget made no call
    assert abs(p50 - 500) < 15 and abs(p95 - 950) < 15 and abs(p99 - 990) < 10
    assert rows[("anthropic/m", "premium")][2:] == (1, 50.0, 50.0, 50.0)


def _totals(clickhouse: ClickHouse) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    raw = clickhouse.query(
        "SELECT customer, tier, status, count(), countIf(final), sum(input_tokens), sum(cost), "
        "sumIf(counterfactual_cost, final) "
        "FROM {db}.outcomes FINAL GROUP BY customer, tier, status ORDER BY customer, tier, status"
    )
    rollup = clickhouse.query(
        "SELECT customer, tier, status, sum(calls), sum(jobs), sum(input_tokens), sum(cost), sum(top_tier_cost) "
        "FROM {db}.outcomes_daily GROUP BY customer, tier, status ORDER BY customer, tier, status"
    )
    return raw, rollup


def _random_outcomes(n: int, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    start = at("2026-09-01")
    statuses = [rng.choice(list(Status)) for _ in range(n)]
    return [
        outcome(customer=rng.choice(["a", "b", "c"]), tier=rng.choice(["cheap", "standard", "premium"]),
                status=status, final=status in (Status.OK, Status.DEAD), input_tokens=rng.randint(1, 5000),
                cost=Decimal(rng.randint(1, 10**9)) / 10**12, counterfactual_cost=Decimal(rng.randint(1, 10**6)) / 10**9,
                finished_at=start + rng.uniform(0, 90 * 86400))
        for status in statuses
    ]  # fmt: skip


async def test_the_rollup_counts_each_event_once_when_a_sink_replays_a_batch(
    arq_redis: ArqRedis, keys: Keys, clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _random_outcomes(300, seed=1)
    for e in events:
        await arq_redis.xadd(keys.outcomes, {"e": ENCODER.encode(e)})
    await Sink(arq_redis, keys, clickhouse, consumer="dead").setup()
    # A sink read 200 events and inserted 120 of them (another composition than any later batch),
    # then died before acking: a ReplacingMergeTree would forget the repeats, a rollup would not.
    await arq_redis.xreadgroup(keys.sink_group, "dead", {keys.outcomes: ">"}, count=200)
    clickhouse.insert_outcomes(events[40:160])
    monkeypatch.setattr("worker.sink.CLAIM_IDLE_MS", 0)
    stats = await Sink(arq_redis, keys, clickhouse, consumer="other", batch_size=64).run(burst=True)
    assert stats.replayed == 120 and stats.inserted == 180
    raw, rollup = _totals(clickhouse)
    assert rollup == raw
    assert clickhouse.query("SELECT sum(calls) FROM {db}.outcomes_daily") == [(300,)]


def _schema(clickhouse: ClickHouse) -> list[tuple[object, ...]]:
    return clickhouse.query(
        "SELECT table, name, type, default_expression, position FROM system.columns "
        "WHERE database = {db:String} AND table != 'schema_migrations' ORDER BY table, position",
        {"db": clickhouse.database},
    )


def _objects(clickhouse: ClickHouse) -> list[tuple[object, ...]]:
    rows = clickhouse.query(
        "SELECT name, engine, replaceAll(create_table_query, {db:String}, 'DB') FROM system.tables "
        "WHERE database = {db:String} ORDER BY name",
        {"db": clickhouse.database},
    )
    return [(n, e, " ".join(str(q).split())) for n, e, q in rows]


def test_an_old_database_and_a_fresh_one_end_at_the_same_schema_and_figures(chdb_url: str) -> None:
    old = ClickHouse(chdb_url, f"old_{next(_ids)}")
    assert old.migrate(up_to=1) == 1
    events = _random_outcomes(500, seed=2)
    v1_columns = [c for c in OUTCOME_COLUMNS if c not in ("middle_tier_cost", "experiment", "arm")]
    old.client.insert(
        f"{old.database}.outcomes",
        [[getattr(e, c) if c not in ("started_at", "finished_at", "route_source", "status") else
          (datetime.fromtimestamp(getattr(e, c), UTC) if c.endswith("_at") else getattr(e, c).value)
          for c in v1_columns] for e in events],
        column_names=v1_columns,
    )  # fmt: skip
    assert old.migrate() == 4
    fresh = ClickHouse(chdb_url, f"fresh_{next(_ids)}")
    fresh.migrate()
    fresh.insert_outcomes(events)
    assert _schema(old) == _schema(fresh)
    assert _objects(old) == _objects(fresh)
    # The old rows were backfilled into the rollup: every report reads the same figures.
    raw, rollup = _totals(old)
    assert rollup == raw == _totals(fresh)[0]
    assert old.migrate() == 4  # a second run changes nothing
    assert _totals(old)[1] == rollup


def test_month_spend_is_the_calendar_month_per_customer(clickhouse: ClickHouse) -> None:
    clickhouse.insert_outcomes(
        [outcome(customer="a", cost=Decimal("1.5"), finished_at=at("2026-11-01", 0)),
         outcome(customer="a", cost=Decimal("2"), finished_at=at("2026-10-31", 23)),
         classifier_call("x"), outcome(customer="b", cost=Decimal("0.25"), finished_at=at("2026-11-30", 23))]
    )  # fmt: skip
    spent = clickhouse.month_spend(date(2026, 11, 17))
    assert spent == {"a": Decimal("1.5"), "b": Decimal("0.25"), "acme": Decimal("0.0001")}


def test_empty_reports_say_so_without_failing(reports: Reports) -> None:
    f = Filters(since=date.today() - timedelta(days=7))
    assert reports.spend(f, "model").rows == []
    assert reports.savings(f).rows == []
    assert all(t.rows == [] for t in reports.routing(f))
    assert reports.quality(f).rows == [] and reports.latency(f).rows == []
    assert reports.margins(f).rows == []
