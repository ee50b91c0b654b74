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
from ladder.messages import ENCODER, Outcome, RouteSource, Routing, Score, ScoreSource, Status
from ladder.report import Filters, ReportError, Reports, parse_day
from ladder.report_scores import routing_accuracy, scores_by_route
from policies.config import parse_policies
from policies.customers import Customer
from policies.stats import wilson_interval
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


def shadow_call(job: str, day: str = "2026-11-02", cost: str = "0.02") -> Outcome:
    """The reference tier asked again for a job that finished on cheap: evaluation, not an answer."""
    return outcome(event_id=f"{job}#shadow", job_id=job, route_source=RouteSource.SHADOW, intended_tier="premium",
                   tier="premium", provider="anthropic", model="claude-3-5-sonnet-20241022", attempt=0, final=False,
                   cost=Decimal(cost), finished_at=at(day))  # fmt: skip


def score(**over: object) -> Score:
    n = next(_ids)
    fields: dict[str, object] = dict(
        event_id=f"s{n}", job_id=f"j{n}", batch="b", customer="acme", feature="faq", task="generation",
        strategy="rules-v1", experiment="", arm="", tier="cheap", source=ScoreSource.SHADOW, score=1.0,
        routing=Routing.RIGHT, label_tier="", method="exact", detail="", text="", correction="", at=at("2026-11-02"),
    )  # fmt: skip
    fields.update(over)
    return Score(**fields)  # type: ignore[arg-type]


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
    assert table.columns[:9] == ["day", "jobs", "model_cost", "classifier_cost", "shadow_cost", "actual",
                                 "all_premium", "saved", "saved_%"]  # fmt: skip
    assert table.columns[9:] == ["all_standard", "saved_vs_standard", "saved_vs_standard_%", "batch_jobs",
                                 "batch_jobs_%", "batch_saved"]  # fmt: skip
    day1 = table.rows[0]
    # 3 jobs: two plain (0.001 each) and one escalated (0.002 + 0.005); the classifier 0.0001.
    assert day1[:6] == ("2026-11-02", 3, Decimal("0.009"), Decimal("0.0001"), Decimal("0"), Decimal("0.0091"))
    # Counterfactual: each job once, priced on its final answer's tokens: 0.01 + 0.01 + 0.03.
    assert day1[6:9] == (Decimal("0.05"), Decimal("0.0409"), 81.8)
    assert day1[9:11] == (Decimal("0.013"), Decimal("0.0039"))
    total = table.rows[-1]
    assert total[:8] == ("TOTAL", 4, Decimal("0.010"), Decimal("0.0001"), Decimal("0"), Decimal("0.0101"),
                         Decimal("0.06"), Decimal("0.0499"))  # fmt: skip


def test_shadow_evaluation_is_spend_of_its_own_not_model_cost(clickhouse: ClickHouse, reports: Reports) -> None:
    first = outcome(job_id="s1", event_id="s1#1")
    clickhouse.insert_outcomes(
        [first, shadow_call("s1", cost="0.02"), *escalated_job("esc"), classifier_call("esc"),
         shadow_call("esc", day="2026-11-03", cost="0.0305")]
    )  # fmt: skip
    table = reports.savings(Filters())
    rows = {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}
    day1, day2, total = rows["2026-11-02"], rows["2026-11-03"], rows["TOTAL"]
    # The shadow call is not a job, not model cost and has no counterfactual: it is its own column.
    assert (day1["jobs"], day1["model_cost"], day1["classifier_cost"], day1["shadow_cost"]) == (
        2, Decimal("0.008"), Decimal("0.0001"), Decimal("0.02"))  # fmt: skip
    assert day1["all_premium"] == Decimal("0.04")
    assert (day2["jobs"], day2["model_cost"], day2["shadow_cost"], day2["all_premium"]) == (
        0, Decimal("0"), Decimal("0.0305"), Decimal("0"))  # fmt: skip
    for row in rows.values():
        assert row["actual"] == row["model_cost"] + row["classifier_cost"] + row["shadow_cost"]
        assert row["saved"] == row["all_premium"] - row["actual"]
    assert total["actual"] == Decimal("0.0586")
    # Everything spent is in spend, the shadow part named in a note.
    spend = reports.spend(Filters(), "route")
    assert spend.rows[-1][7] == Decimal("0.0586")
    assert {r[0]: r[7] for r in spend.rows}["shadow"] == Decimal("0.0505")
    assert "cost includes $0.0505 of shadow evaluation calls (route shadow)" in spend.notes
    first_day = reports.spend(Filters(since=date(2026, 11, 2), until=date(2026, 11, 2)), "route")
    assert first_day.notes[-1].startswith("cost includes $0.02 of shadow")


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


def test_quality_scores_by_the_route_and_tier_of_the_scored_answer(clickhouse: ClickHouse, reports: Reports) -> None:
    clickhouse.insert_outcomes(
        [outcome(job_id="a", event_id="a#1"), outcome(job_id="b", event_id="b#1"), *escalated_job("e"),
         shadow_call("a"), shadow_call("b")]
    )  # fmt: skip
    clickhouse.insert_scores(
        [score(job_id="a", score=0.9), score(job_id="b", score=0.2, routing=Routing.WRONG),
         score(job_id="c", score=0.5, routing=Routing.UNKNOWN),  # a job whose outcomes are not stored
         score(job_id="a", source=ScoreSource.FEEDBACK, score=0.6, routing=Routing.UNKNOWN, method="feedback"),
         score(job_id="e", tier="standard", source=ScoreSource.FEEDBACK, score=0.8, routing=Routing.RIGHT),
         # the escalation score of the answer that failed on cheap: in the pass rate already
         score(job_id="e", source=ScoreSource.ESCALATION, score=0.0, routing=Routing.WRONG),
         score(job_id="a", score=0.0, routing=Routing.WRONG, at=at("2026-12-01"))]  # after --until
    )  # fmt: skip
    table = scores_by_route(reports, Filters(until=date(2026, 11, 30)))
    assert table.columns == ["route", "tier", "shadow_judged", "shadow_agree_%", "ci95_low_%", "ci95_high_%",
                             "shadow_mean_%", "feedback", "feedback_mean_%"]  # fmt: skip
    rows = {(r[0], r[1]): r[2:] for r in table.rows}
    assert list(rows) == [("(unknown)", "cheap"), ("escalation", "standard"), ("rule", "cheap")]
    low, high = wilson_interval(1, 2)
    assert rows[("rule", "cheap")] == (2, 50.0, round(100 * low, 1), round(100 * high, 1), 55.0, 1, 60.0)
    assert rows[("escalation", "standard")] == (0, None, None, None, None, 1, 80.0)
    assert rows[("(unknown)", "cheap")] == (0, None, None, None, None, 0, None)  # unjudged: no mean either
    # Beside the pass rate of the same answers; the shadow calls are references, not kept answers.
    validation = {(r[0], r[1]): r for r in reports.quality(Filters()).rows}
    assert validation[("rule", "cheap")][3:] == (3, 2, 1, 66.7)
    assert ("shadow", "premium") not in validation
    assert scores_by_route(reports, Filters(customer="acme' OR '1'='1")).rows == []


DRIFT = THREE_TIERS + "\n[drift]\nmin_routing_accuracy = 0.9\nmin_samples = 50\nwindow_days = 2\n"
# right, judged per day: windows of two days, judged from 50 comparisons, below 90% alert.
DRIFT_DAYS = {
    "2026-11-01": (29, 30),  # window 30 judged: too few to judge
    "2026-11-02": (28, 30),  # 57 of 60: 95%
    "2026-11-03": (20, 40),  # 48 of 70: 68.6% ALERT
    "2026-11-04": (45, 50),  # 65 of 90: 72.2% ALERT
    "2026-11-05": (50, 50),  # 95 of 100: healthy again
}


def drift_scores(
    days: dict[str, tuple[int, int]] = DRIFT_DAYS, strategies: tuple[str, ...] = ("rules-v1",)
) -> list[Score]:
    """Shadow comparisons with these counts per day (split evenly over the strategies), plus scores
    that must not count: routing unknown, and feedback."""
    scores = []
    for day, (right, judged) in days.items():
        for i in range(judged):
            scores.append(score(at=at(day, 1 + i % 20), strategy=strategies[i % len(strategies)],
                                routing=Routing.RIGHT if i < right else Routing.WRONG))  # fmt: skip
        scores.append(score(at=at(day), routing=Routing.UNKNOWN))
        scores.append(score(at=at(day), source=ScoreSource.FEEDBACK, routing=Routing.WRONG))
    return scores


def test_routing_accuracy_by_day_and_the_drift_alerts(clickhouse: ClickHouse) -> None:
    clickhouse.insert_scores(drift_scores())
    reports = Reports(clickhouse, parse_policies(DRIFT))
    accuracy = routing_accuracy(reports, Filters())
    table = accuracy.table
    assert table.columns == ["day", "right", "judged", "accuracy_%", "ci95_low_%", "ci95_high_%", "drift"]
    by_day = {r[0]: r for r in table.rows}
    assert list(by_day) == list(DRIFT_DAYS)
    for day, (right, judged) in DRIFT_DAYS.items():
        low, high = wilson_interval(right, judged, 0.95)
        assert by_day[day][1:6] == (right, judged, round(100 * right / judged, 1), round(100 * low, 1),
                                    round(100 * high, 1))  # fmt: skip
    assert [r[0] for r in table.rows if r[-1] == "ALERT"] == ["2026-11-03", "2026-11-04"]
    assert [(str(a.day), round(a.accuracy, 3), a.judged) for a in accuracy.alerts] == [
        ("2026-11-03", 0.686, 70), ("2026-11-04", 0.722, 90)]  # fmt: skip
    assert accuracy.alerts[0].message == (
        "routing accuracy 68.6% over the 2 days to 2026-11-03 (48 of 70 shadow comparisons) "
        "is below the policy minimum of 90%"
    )
    assert accuracy.latest is None  # the last day is healthy again
    # Up to the 4th, the last day alerts; from the 4th, the window still reaches back to the 3rd.
    assert str(routing_accuracy(reports, Filters(until=date(2026, 11, 4))).latest.day) == "2026-11-04"  # type: ignore[union-attr]
    since_4th = routing_accuracy(reports, Filters(since=date(2026, 11, 4)))
    assert [r[0] for r in since_4th.table.rows] == ["2026-11-04", "2026-11-05"]
    assert [str(a.day) for a in since_4th.alerts] == ["2026-11-04"]
    assert routing_accuracy(reports, Filters(customer="x' OR '1'='1")).table.rows == []


def test_routing_accuracy_by_strategy_pools_the_strategies_for_drift(clickhouse: ClickHouse) -> None:
    clickhouse.insert_scores(drift_scores(strategies=("rules-v1", "rules-v2")))
    accuracy = routing_accuracy(Reports(clickhouse, parse_policies(DRIFT)), Filters(), by_strategy=True)
    rows = {(r[0], r[1]): r for r in accuracy.table.rows}
    assert accuracy.table.columns[:4] == ["day", "strategy", "right", "judged"]
    assert rows[("2026-11-03", "rules-v1")][2:4] == (10, 20) and rows[("2026-11-03", "rules-v2")][2:4] == (10, 20)
    assert rows[("2026-11-03", "rules-v2")][-1] == "ALERT"
    assert [str(a.day) for a in accuracy.alerts] == ["2026-11-03", "2026-11-04"]


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
    v1_columns = [c for c in OUTCOME_COLUMNS if c not in ("middle_tier_cost", "experiment", "arm", "lane", "sync_cost")]
    old.client.insert(
        f"{old.database}.outcomes",
        [[getattr(e, c) if c not in ("started_at", "finished_at", "route_source", "status") else
          (datetime.fromtimestamp(getattr(e, c), UTC) if c.endswith("_at") else getattr(e, c).value)
          for c in v1_columns] for e in events],
        column_names=v1_columns,
    )  # fmt: skip
    assert old.migrate() == 5
    fresh = ClickHouse(chdb_url, f"fresh_{next(_ids)}")
    fresh.migrate()
    fresh.insert_outcomes(events)
    assert _schema(old) == _schema(fresh)
    assert _objects(old) == _objects(fresh)
    # The old rows were backfilled into the rollup: every report reads the same figures.
    raw, rollup = _totals(old)
    assert rollup == raw == _totals(fresh)[0]
    assert old.migrate() == 5  # a second run changes nothing
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
    assert routing_accuracy(reports, f).table.rows == [] and routing_accuracy(reports, f).latest is None
    assert scores_by_route(reports, f).rows == []
    assert reports.margins(f).rows == []
