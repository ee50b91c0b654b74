"""Report filters are query parameters, never SQL text: hostile customer, feature, batch and experiment
values select exactly their own rows, inject nothing, and reach ClickHouse only as parameters."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from ladder.output import render
from ladder.report import SPEND_BY, Filters, ReportError, Reports, parse_day
from ladder.report_cmd import chart_for, quality_report, tables_for
from ladder.report_experiment import experiment_report
from policies.config import parse_policies
from tests.helpers import THREE_TIERS, ladder
from tests.test_report_cli import seed
from tests.test_reports import at, outcome, score
from worker.clickhouse import ClickHouse

EXPERIMENT = """
[[experiments]]
name = "lean"
arms = [{ name = "stay", strategy = "rules-v1", share = 0.5 }, { name = "go", strategy = "rules-v1", share = 0.5 }]
"""
POLICIES = parse_policies(THREE_TIERS + EXPERIMENT)

HOSTILE = [
    "o'brien",
    "x' OR '1'='1",
    "a'); DROP TABLE outcomes; --",
    "back\\slash",
    "back\\'; SELECT 1; --",
    "\\N",  # the null of TSV, which query parameters are sent in
    "{db}",
    "%s",
    "%(customer)s",
    "{customer:String}",
    "$$heredoc$$",
    "tab\there\nnewline",
    "é 中 \u200b",
    "[bold]markup[/bold]",
]
NORMAL = "acme"


def rows_for(value: str, count: int, day: str = "2026-11-02") -> list[Any]:
    """`count` settled jobs whose customer, feature, batch and experiment are all `value`."""
    return [
        outcome(
            customer=value, feature=value, batch=value, experiment=value, arm="stay", latency_ms=10.0,
            finished_at=at(day), started_at=at(day),
        )
        for _ in range(count)
    ]  # fmt: skip


def counts() -> dict[str, int]:
    """Each value its own number of jobs, so a report showing another value's rows shows a wrong count."""
    return {value: i + 2 for i, value in enumerate([NORMAL, *HOSTILE])}


@pytest.fixture
def seeded(clickhouse: ClickHouse) -> Reports:
    clickhouse.insert_outcomes([o for value, n in counts().items() for o in rows_for(value, n)])
    clickhouse.insert_scores(
        [score(customer=v, feature=v, batch=v, experiment=v, arm="stay") for v, n in counts().items() for _ in range(n)]
    )
    return Reports(clickhouse, POLICIES)


def total_outcomes(clickhouse: ClickHouse) -> int:
    return int(clickhouse.query("SELECT count() FROM {db}.outcomes")[0][0])


@pytest.mark.parametrize("field", ["customer", "feature", "batch"])
def test_a_hostile_filter_value_selects_exactly_its_own_rows(
    seeded: Reports, clickhouse: ClickHouse, field: str
) -> None:
    everything = total_outcomes(clickhouse)
    for value, n in counts().items():
        filters = Filters(**{field: value})  # type: ignore[arg-type]
        by = field if field in SPEND_BY else "customer"  # each row's customer, feature and batch are `value`
        spend = {r[0]: r for r in seeded.spend(filters, by).rows}
        assert set(spend) == {value, "TOTAL"}, (value, spend)
        assert spend[value][1:3] == (n, n)  # requests, jobs
        assert seeded.savings(filters).rows[-1][1] == n
        assert seeded.routing(filters)[0].rows[-1][1] == n
        assert seeded.latency(filters).rows[0][2] == n
        assert seeded.quality(filters).rows[0][2] == n
        tables, accuracy = quality_report(seeded, filters)
        assert sum(int(r[2]) for r in tables[1].rows) == n  # shadow comparisons of the scores
        assert accuracy.table.rows[0][2] == n  # judged
        if field == "customer":
            assert [r[0] for r in seeded.margins(filters).rows] == [value]
    assert total_outcomes(clickhouse) == everything  # nothing dropped or changed
    assert seeded.spend(Filters(), "customer").rows[-1][1] == sum(counts().values())


def test_a_hostile_experiment_name_is_a_value(seeded: Reports) -> None:
    for value, n in counts().items():
        report = experiment_report(seeded, value, Filters())
        assert [(a.figures.name, a.figures.jobs) for a in report.arms] == [("stay", n)], value
    assert experiment_report(seeded, "nope' OR '1'='1", Filters()).arms == []


def test_since_until_and_by_cannot_carry_sql(seeded: Reports) -> None:
    with pytest.raises(ReportError, match="--since: "):
        parse_day("2026-11-01' OR '1'='1", "--since", date(2026, 11, 5))
    with pytest.raises(ReportError, match="--by: "):
        seeded.spend(Filters(), "customer; DROP TABLE outcomes")
    assert seeded.spend(Filters(since=date(2026, 11, 3)), "customer").rows == []


class SqlSpy:
    """Every statement the ClickHouse wrapper hands to its client, with its parameters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def spied(sql: str, *args: Any, parameters: dict[str, Any] | None = None, **kwargs: Any) -> Any:
            self.calls.append((sql, dict(parameters or {})))
            return method(sql, *args, parameters=parameters, **kwargs)

        return spied


@pytest.fixture
def spy(clickhouse: ClickHouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlSpy]:
    spy = SqlSpy()
    client = clickhouse.client
    for name in ("query", "command", "raw_query", "query_arrow", "query_df", "query_np"):
        if hasattr(client, name):
            monkeypatch.setattr(client, name, spy.wrap(getattr(client, name)))
    yield spy


# A canary in each value: if any part of a value is spliced into SQL, the canary is in the text.
CANARY = "qq7canary"


def every_report(reports: Reports, filters: Filters, experiment: str) -> None:
    for by in SPEND_BY:
        reports.spend(filters, by)
    for name in ("savings", "routing", "quality", "margins", "latency"):
        tables_for(reports, name, filters)
    quality_report(reports, filters, by_strategy=True)
    for name in (experiment, *(e.name for e in reports.policies.experiments)):
        experiment_report(reports, name, filters)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_filter_values_reach_clickhouse_only_as_parameters(seeded: Reports, spy: SqlSpy, hostile: str) -> None:
    values = {
        "customer": f"{CANARY}c{hostile}",
        "feature": f"{CANARY}f{hostile}",
        "batch": f"{CANARY}b{hostile}",
    }
    filters = Filters(since=date(2026, 10, 17), until=date(2026, 11, 29), **values)
    experiment = f"{CANARY}e{hostile}"
    every_report(seeded, filters, experiment)
    assert len(spy.calls) > 20
    for sql, parameters in spy.calls:
        assert CANARY not in sql, sql
        assert "2026-10-17" not in sql and "2026-11-29" not in sql, sql
        assert "{db}" not in sql  # the database is filled in; no other brace is left for a value to fill
        for name, value in parameters.items():
            if CANARY in str(value):  # a value goes only where the SQL names its parameter
                assert name in (*values, "experiment") and f"{{{name}:String}}" in sql, (name, sql)
        for name, value in values.items():
            if f"{{{name}:String}}" in sql:
                assert parameters[name] == value
        if "{since:Date}" in sql:
            assert parameters["until"] == date(2026, 11, 29)
    assert experiment in [p.get("experiment") for sql, p in spy.calls if "{experiment:String}" in sql]


def test_ladder_report_with_a_hostile_customer_in_a_subprocess(cli_env: dict[str, str], tmp_path: Path) -> None:
    drop = "a'); DROP TABLE outcomes; --"
    seed(cli_env, tmp_path, rows_for(drop, 3) + rows_for("o'brien", 2) + rows_for(NORMAL, 4), [])
    for value, want in ((drop, [(drop, 3), ("TOTAL", 3)]), ("x' OR '1'='1", [])):
        result = ladder(cli_env, "report", "spend", "--by", "customer", "--customer", value, "--format", "json")
        assert [(r["key"], r["requests"]) for r in json.loads(result.stdout)["rows"]] == want
    everyone = json.loads(ladder(cli_env, "report", "spend", "--by", "customer", "--format", "json").stdout)["rows"]
    assert {r["key"]: r["requests"] for r in everyone} == {NORMAL: 4, drop: 3, "o'brien": 2, "TOTAL": 9}


def test_a_customer_that_looks_like_markup_prints_as_text(seeded: Reports) -> None:
    table = seeded.spend(Filters(customer="[/]"), "customer")
    console = Console(file=io.StringIO(), width=200)
    render(table.title, table.columns, [("[/]", *table.rows[0][1:])] if table.rows else [], "table", console)
    assert "customer [/]" in console.file.getvalue()


def test_a_filter_value_with_dollars_draws_as_text(seeded: Reports) -> None:
    filters = Filters(customer="$$heredoc$$")
    assert chart_for("spend", [seeded.spend(filters, "model")])


def test_the_outcome_rows_hold_the_hostile_values_verbatim(clickhouse: ClickHouse) -> None:
    """The values went in as Arrow columns and come back unchanged: the filters compare the same bytes."""
    clickhouse.insert_outcomes([o for v in HOSTILE for o in rows_for(v, 1)])
    stored = {r[0] for r in clickhouse.query("SELECT DISTINCT customer FROM {db}.outcomes")}
    assert stored == set(HOSTILE)
    assert msgspec.json.decode(msgspec.json.encode(sorted(stored))) == sorted(HOSTILE)
    assert Decimal(clickhouse.query("SELECT sum(cost) FROM {db}.outcomes")[0][0]) == Decimal("0.001") * len(HOSTILE)
