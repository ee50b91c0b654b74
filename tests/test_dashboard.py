"""The Grafana dashboard: the committed JSON is the generated one, it is dashboard JSON for the
ClickHouse plugin, and every panel's SQL, with the macros and variables filled in the way the plugin
and Grafana fill them, runs on chdb and gives the reports' figures."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ladder.dashboard import ALL, PLUGIN, dashboard, render
from ladder.messages import Lane, Outcome, RouteSource, Routing, Score, Status
from ladder.report import Filters, Reports
from ladder.report_scores import routing_accuracy
from policies.config import default_policies_text, parse_policies
from tests.test_reports import POLICIES, at, classifier_call, escalated_job, outcome, score, shadow_call
from worker.clickhouse import ClickHouse

COMMITTED = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "ladder.json"
SINCE, UNTIL = date(2026, 11, 1), date(2026, 11, 30)

# How the plugin expands its time macros: toDateTime(<unix seconds>) today, toDateTime64(<ms>/1000, 3) in
# v4.0 to v4.x; both must give the same days.
MACRO_STYLES = {
    "seconds": lambda t: f"toDateTime({int(t.timestamp())})",
    "milliseconds": lambda t: f"toDateTime64({int(t.timestamp() * 1000)}/1000, 3)",
}


def grafana_quote(value: str) -> str:
    """Grafana's `singlequote` format: quotes doubled by a backslash, the value in single quotes."""
    return "'" + value.replace("'", "\\'") + "'"


def concrete(sql: str, database: str, customer: str = "", style: str = "seconds") -> str:
    """A panel's SQL as ClickHouse receives it: the time picker on SINCE..UNTIL (whole UTC days), the
    customer variable on All ('' from allValue, unformatted) or on one customer, feature on All, batch empty."""
    start = datetime.combine(SINCE, time(0, 0), UTC)
    end = datetime.combine(UNTIL, time(23, 59, 59), UTC)
    for name, text in {
        "$__fromTime": MACRO_STYLES[style](start),
        "$__toTime": MACRO_STYLES[style](end),
        "${database}": database,
        "${customer:singlequote}": grafana_quote(customer) if customer else ALL,
        "${feature:singlequote}": ALL,
        "${batch:singlequote}": grafana_quote(""),
    }.items():
        sql = sql.replace(name, text)
    assert "$" not in sql and "{" not in sql, sql
    return sql


def sql_of(panel: dict[str, Any]) -> str:
    [target] = panel["targets"]
    return str(target["rawSql"])


def by_title(title: str) -> dict[str, Any]:
    [panel] = [p for p in dashboard()["panels"] if p["title"].startswith(title)]
    return panel


def run(clickhouse: ClickHouse, title: str, customer: str = "", style: str = "seconds") -> list[dict[str, Any]]:
    columns, rows = clickhouse.query_columns(concrete(sql_of(by_title(title)), clickhouse.database, customer, style))
    return [dict(zip(columns, r, strict=True)) for r in rows]


def test_the_committed_dashboard_is_the_generated_one() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "deploy/grafana/ladder.json is stale: python -m ladder.dashboard > deploy/grafana/ladder.json"
    )


def test_it_is_dashboard_json_for_the_clickhouse_plugin() -> None:
    board = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"] and board["id"] is None and isinstance(board["schemaVersion"], int)
    assert board["timezone"] == "utc"  # the rollup's days are UTC days
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) >= 7
    datasource = {"type": PLUGIN, "uid": "${datasource}"}
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["datasource"] == datasource, p["title"]
        assert p["type"] in {"timeseries", "table", "barchart", "stat"}
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        [target] = p["targets"]
        assert target["datasource"] == datasource and target["editorType"] == "sql" and target["rawSql"].strip()
        series = p["type"] == "timeseries"
        assert (target["format"], target["queryType"]) == ((0, "timeseries") if series else (1, "table"))
        # the rollup, or (routing accuracy) the scores: never the raw outcomes
        assert re.search(r"\$\{database\}\.(outcomes_daily|scores FINAL)\b", target["rawSql"])
        assert "${database}.outcomes " not in target["rawSql"]
        assert "toDate($__fromTime, 'UTC')" in target["rawSql"] and "toDate($__toTime, 'UTC')" in target["rawSql"]
        assert not re.search(r"\{\w+:\w+", target["rawSql"].replace("${", "")), "a report parameter left over"

    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "database", "customer", "feature", "batch"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == PLUGIN
    assert variables["database"]["type"] == "constant" and variables["database"]["query"] == "ladder"
    for name in ("customer", "feature"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == datasource
        assert v["includeAll"] and v["allValue"] == "''" and not v["multi"]
        assert v["current"]["value"] == "$__all"


def _data() -> list[Outcome]:
    dead = [
        outcome(event_id="d#1", job_id="d", customer="o'hara", intended_tier="premium", tier="premium",
                provider="anthropic", model="claude", status=Status.FAILOVER, error_class="overloaded",
                final=False, latency_ms=300.0, finished_at=at("2026-11-04")),
        outcome(event_id="d#2", job_id="d", customer="o'hara", intended_tier="premium", tier="premium",
                provider="anthropic", model="claude", status=Status.DEAD, error_class="transient",
                cost=Decimal("0.03"), latency_ms=700.0, finished_at=at("2026-11-04")),
    ]  # fmt: skip
    return [
        *(outcome(latency_ms=float(ms)) for ms in range(10, 210, 10)),  # 20 cheap jobs on 2026-11-02
        outcome(feature="legal", finished_at=at("2026-11-03"), cost=Decimal("0.25"), counterfactual_cost=Decimal("0.5")),
        *escalated_job("esc1", customer="globex"),
        *escalated_job("esc2", day="2026-11-05", customer="globex"),
        outcome(customer="globex", tier="premium", intended_tier="premium", provider="anthropic", model="claude",
                route_source=RouteSource.CLASSIFIER, cost=Decimal("1.1"), counterfactual_cost=Decimal("1.1"),
                latency_ms=900.0, finished_at=at("2026-11-05")),
        classifier_call("esc1"),
        classifier_call("x", day="2026-11-05"),
        *dead,
        outcome(customer="globex", status=Status.DEAD, error_class="over_budget", cost=Decimal(0), latency_ms=0.0,
                input_tokens=0, output_tokens=0, counterfactual_cost=Decimal(0), middle_tier_cost=Decimal(0),
                finished_at=at("2026-11-05")),
        outcome(customer="globex", event_id="lane#1", job_id="lane", lane=Lane.BATCH, cost=Decimal("0.02"),
                sync_cost=Decimal("0.04"), latency_ms=3_600_000.0, finished_at=at("2026-11-05")),  # batch lane
        outcome(finished_at=at("2026-10-31", 23), cost=Decimal("5")),  # outside the time range
        outcome(finished_at=at("2026-12-01", 0), cost=Decimal("7")),  # outside too
        shadow_call("esc1", cost="0.04"),
        shadow_call("d", day="2026-11-04", cost="0.05"),  # on acme, as shadow_call builds it
    ]  # fmt: skip


def _scores() -> list[Score]:
    """Shadow comparisons on three days and for every customer, and scores the panel must not count."""
    days = {"2026-11-02": (9, 10, "acme"), "2026-11-03": (3, 4, "globex"), "2026-11-04": (1, 2, "o'hara"),
            "2026-11-05": (2, 2, "globex")}  # fmt: skip
    scores = [
        score(customer=customer, at=at(day, 1 + i), routing=Routing.RIGHT if i < right else Routing.WRONG)
        for day, (right, judged, customer) in days.items()
        for i in range(judged)
    ]
    return [*scores, score(routing=Routing.UNKNOWN), score(at=at("2026-12-01", 0), routing=Routing.WRONG)]


@pytest.fixture
def loaded(clickhouse: ClickHouse) -> tuple[ClickHouse, Reports]:
    clickhouse.insert_outcomes(_data())
    clickhouse.insert_scores(_scores())
    return clickhouse, Reports(clickhouse, POLICIES)


@pytest.mark.parametrize("style", list(MACRO_STYLES))
@pytest.mark.parametrize("customer", ["", "globex", "o'hara", "nobody"])
def test_every_panel_and_variable_query_runs_on_chdb(
    loaded: tuple[ClickHouse, Reports], customer: str, style: str
) -> None:
    clickhouse, _ = loaded
    board = dashboard()
    for panel in board["panels"]:
        columns, rows = clickhouse.query_columns(concrete(sql_of(panel), clickhouse.database, customer, style))
        if customer == "nobody":  # no data: no rows, but no error either
            assert rows == [] or panel["type"] == "stat", panel["title"]
        else:
            assert columns and rows, panel["title"]
    options = {
        v["name"]: [r[0] for r in clickhouse.query(concrete(v["query"], clickhouse.database))]
        for v in board["templating"]["list"]
        if v["type"] == "query"
    }
    assert options == {"customer": ["acme", "globex", "o'hara"], "feature": ["faq", "legal"]}


@pytest.mark.parametrize("customer", ["", "globex", "o'hara"])
def test_spend_panels_give_the_spend_report(loaded: tuple[ClickHouse, Reports], customer: str) -> None:
    clickhouse, reports = loaded
    filters = Filters(SINCE, UNTIL, customer=customer)
    report = reports.spend(filters, "customer")
    panel = run(clickhouse, "Spend by customer", customer)
    # customer, requests, jobs, ok, failed, input and output tokens, cost, share %: in the report's order
    assert [(*list(r.values())[:8], r["share %"]) for r in panel] == [r for r in report.rows if r[0] != "TOTAL"]
    assert sum(r["spend"] for r in panel) == report.rows[-1][7]

    by_model: dict[str, Decimal] = {}
    for row in run(clickhouse, "Spend by model", customer):
        by_model[row["model_name"]] = by_model.get(row["model_name"], Decimal(0)) + row["spend"]
    assert by_model == {r[0]: r[7] for r in reports.spend(filters, "model").rows if r[0] != "TOTAL"}


@pytest.mark.parametrize("customer", ["", "globex"])
def test_savings_panels_give_the_savings_report(loaded: tuple[ClickHouse, Reports], customer: str) -> None:
    clickhouse, reports = loaded
    report = reports.savings(Filters(SINCE, UNTIL, customer=customer))
    panel = run(clickhouse, "Savings by day", customer)
    figures = [dict(zip(report.columns, r, strict=True)) for r in report.rows]
    # day, actual (models + classifier + shadow evaluation), all on the top tier, saved %
    assert [(str(r["time"]), r["actual"], r["all_top_tier"], r["saved %"]) for r in panel] == [
        (r["day"], r["actual"], r["all_premium"], r["saved_%"]) for r in figures[:-1]
    ]
    [total] = run(clickhouse, "Spend and savings", customer)
    assert (total["spend"], total["saved"], total["saved %"]) == tuple(figures[-1][k] for k in ("actual", "saved",
                                                                                               "saved_%"))  # fmt: skip
    assert total["saved"] > 0
    assert (total["batch lane jobs %"], total["saved by batch lane"]) == (figures[-1]["batch_jobs_%"],
                                                                         figures[-1]["batch_saved"])  # fmt: skip
    assert figures[-1]["batch_saved"] == {"": Decimal("0.02"), "globex": Decimal("0.02")}[customer]
    assert figures[-1]["shadow_cost"] == {"": Decimal("0.09"), "globex": 0}[customer]


def test_routing_panels_give_the_routing_report(loaded: tuple[ClickHouse, Reports]) -> None:
    clickhouse, reports = loaded
    split, by_tier, by_reason = reports.routing(Filters(SINCE, UNTIL))
    panel = run(clickhouse, "Routing split")
    assert {r["tier"]: (r["intended"], r["finished"], r["dead"]) for r in panel} == {
        r[0]: (r[1], r[3], r[5]) for r in split.rows if r[0] != "TOTAL"
    }
    assert [r["tier"] for r in panel] == ["cheap", "standard", "premium"]  # cheapest per call first

    rates = run(clickhouse, "Escalation and fallback rate")
    assert {r["tier"]: (r["escalated %"], r["failed over %"]) for r in rates} == {
        r[0]: (r[3], r[5]) for r in by_tier.rows
    }
    assert {r["tier"]: r["escalated %"] for r in rates}["cheap"] > 0

    dead: dict[str, int] = {}
    for row in run(clickhouse, "Dead letters"):
        dead[row["reason"]] = dead.get(row["reason"], 0) + row["dead_jobs"]
    reported: dict[str, int] = {}
    for _tier, reason, *_moves, died in by_reason.rows:
        reported[reason] = reported.get(reason, 0) + died
    assert dead == {k: v for k, v in reported.items() if v} == {"transient": 1, "over_budget": 1}


def test_latency_panel_gives_the_latency_report_per_day(loaded: tuple[ClickHouse, Reports]) -> None:
    clickhouse, reports = loaded
    compared = 0
    for row in run(clickhouse, "Latency p95"):
        day = row["time"]
        report = [r for r in reports.latency(Filters(day, day)).rows if r[0] == row["model_name"]]
        if len(report) == 1:  # one tier for this model that day: the same t-digest
            assert row["p95_ms"] == report[0][4], row
            compared += 1
    assert compared >= 4


@pytest.mark.parametrize("customer", ["", "globex"])
def test_routing_accuracy_panel_gives_the_reports_accuracy_and_the_drift_line(
    loaded: tuple[ClickHouse, Reports], customer: str
) -> None:
    clickhouse, reports = loaded
    report = routing_accuracy(reports, Filters(SINCE, UNTIL, customer=customer)).table
    panel = run(clickhouse, "Routing accuracy by day", customer)
    assert [(str(r["time"]), r["routing accuracy %"]) for r in panel] == [(r[0], r[3]) for r in report.rows]
    assert len(panel) == (4 if customer == "" else 2)
    steps = by_title("Routing accuracy by day")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    minimum = parse_policies(default_policies_text()).drift.min_routing_accuracy
    assert steps[-1]["value"] == minimum * 100


def test_a_batch_lane_request_counts_in_spend_but_not_in_latency(loaded: tuple[ClickHouse, Reports]) -> None:
    _, reports = loaded
    globex = Filters(SINCE, UNTIL, customer="globex")
    latency = reports.latency(globex)
    assert latency.rows and all(row[5] < 3_600_000 for row in latency.rows)  # p99 under the batch's hour
    calls = {(r[0], r[1]): r[2] for r in latency.rows}
    spend = {r[0]: r[1] for r in reports.spend(globex, "model").rows}
    assert sum(calls.values()) == spend["TOTAL"] - 1 - 1  # less the batch request and the over-budget refusal
