"""`ladder report spend|savings|routing|quality|margins|latency|experiment|html`: the reports on the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ladder.app import App
from ladder.output import FORMATS, payload, render
from ladder.report import SPEND_BY, Filters, Reports, Table, parse_day
from ladder.report_experiment import (
    ExperimentReport,
    arm_table,
    experiment_json,
    experiment_report,
    summary_table,
    verdict_lines,
)
from ladder.report_scores import AccuracyReport, alert_json, routing_accuracy, scores_by_route
from policies.drift import DriftAlert

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

CHARTED = ("spend", "savings", "routing")
DRIFT_EXIT = 3  # `quality --check`: the latest day's routing accuracy is below the drift minimum


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser("report", help="reports from ClickHouse")
    rep_sub = rep.add_subparsers(dest="report", required=True)

    def common(sp: argparse.ArgumentParser, chart: bool) -> None:
        sp.add_argument("--since", help="first day, YYYY-MM-DD or 30d (days back); UTC")
        sp.add_argument("--until", help="last day, inclusive, YYYY-MM-DD or 1d")
        sp.add_argument("--customer", default="", help="only this customer")
        sp.add_argument("--feature", default="", help="only this feature")
        sp.add_argument("--batch", default="", help="only this batch")
        sp.add_argument("--format", choices=FORMATS, default="table")
        if chart:
            sp.add_argument("--chart", metavar="OUT.png", help="also draw the report as a PNG")

    spend = rep_sub.add_parser("spend", help="requests, tokens and cost grouped one way")
    spend.add_argument("--by", choices=list(SPEND_BY), default="model")
    common(spend, chart=True)
    common(rep_sub.add_parser("savings", help="actual cost against all-top-tier and all-middle-tier, by day"), True)
    common(rep_sub.add_parser("routing", help="intended against actual split, escalations and fallbacks"), True)
    quality = rep_sub.add_parser("quality", help="validation pass rate and scores by route and tier, routing accuracy")
    common(quality, False)
    quality.add_argument("--by-strategy", action="store_true", help="routing accuracy by day and strategy")
    quality.add_argument(
        "--check", action="store_true", help=f"exit {DRIFT_EXIT} when the latest day's routing accuracy drifted"
    )
    experiment = rep_sub.add_parser("experiment", help="an A/B experiment's arms with intervals, and its verdict")
    experiment.add_argument("name", help="the experiment's name, as in the policies")
    common(experiment, False)
    common(rep_sub.add_parser("margins", help="cost, revenue and margin per customer, negative first"), False)
    common(rep_sub.add_parser("latency", help="p50/p95/p99 per call by model and tier"), False)
    page = rep_sub.add_parser("html", help="every report and chart on one self-contained page")
    common(page, chart=False)
    page.add_argument("-o", "--output", required=True, metavar="report.html")


def filters_from(args: argparse.Namespace) -> Filters:
    today = datetime.now(UTC).date()
    since = parse_day(args.since, "--since", today) if args.since else None
    until = parse_day(args.until, "--until", today) if args.until else None
    return Filters(since, until, args.customer, args.feature, args.batch)


def tables_for(reports: Reports, name: str, filters: Filters, by: str = "model") -> list[Table]:
    makers: dict[str, Callable[[], list[Table]]] = {
        "spend": lambda: [reports.spend(filters, by)],
        "savings": lambda: [reports.savings(filters)],
        "routing": lambda: reports.routing(filters),
        "quality": lambda: quality_report(reports, filters)[0],
        "margins": lambda: [reports.margins(filters)],
        "latency": lambda: [reports.latency(filters)],
    }
    return makers[name]()


def chart_for(name: str, tables: list[Table]) -> bytes:
    from ladder import charts  # matplotlib: only when a picture is asked for

    drawers = {"spend": charts.spend_chart, "savings": charts.savings_chart, "routing": charts.routing_chart}
    return drawers[name](tables[0])


def quality_report(reports: Reports, filters: Filters, by_strategy: bool = False) -> tuple[list[Table], AccuracyReport]:
    accuracy = routing_accuracy(reports, filters, by_strategy)
    return [reports.quality(filters), scores_by_route(reports, filters), accuracy.table], accuracy


def print_tables(tables: list[Table], fmt: str, alerts: Sequence[DriftAlert] | None = None) -> None:
    """`alerts`: the drift alerts of the quality report, after the tables (red) or in the JSON."""
    if fmt == "json" and (len(tables) > 1 or alerts is not None):
        data: dict[str, Any] = {"tables": [payload(t.title, t.columns, t.rows, t.notes) for t in tables]}
        if alerts is not None:
            data["alerts"] = [alert_json(a) for a in alerts]
        out.print_json(json.dumps(data))
        return
    for t in tables:
        if fmt == "csv" and len(tables) > 1:
            out.file.write(f"# {t.title}\n")
        render(t.title, t.columns, t.rows, fmt, out, t.notes)
    for alert in alerts or ():
        if fmt == "csv":
            out.file.write(f"# ALERT: {alert.message}\n")
        else:
            out.print(f"[bold red]ALERT:[/] {escape(alert.message)}", highlight=False)


def print_experiment(report: ExperimentReport, fmt: str) -> None:
    if fmt == "json":
        out.print_json(json.dumps(experiment_json(report)))
    elif fmt == "csv":
        table = arm_table(report)
        render(table.title, table.columns, table.rows, fmt, out)
        if not report.arms:
            err.print(report.notes[0], highlight=False)
    elif not report.arms:
        out.print(report.notes[0], highlight=False)
    else:
        table = summary_table(report)
        render(table.title, table.columns, table.rows, fmt, out, table.notes)
        for line in verdict_lines(report):
            out.print(line, highlight=False)


def html_page(reports: Reports, filters: Filters) -> str:
    from ladder import charts
    from ladder.report_html import page

    spend = reports.spend(filters, "model")
    savings = reports.savings(filters)
    routing = reports.routing(filters)
    quality, accuracy = quality_report(reports, filters)
    accuracy_charts = [charts.accuracy_chart(accuracy.table, reports.policies.drift.min_routing_accuracy)]
    return page(
        f"Ladder spend report ({filters.describe()})",
        [
            ("Spend", [spend, reports.spend(filters, "customer"), reports.spend(filters, "feature")],
             [charts.spend_chart(spend)] if spend.rows else []),
            ("Savings", [savings], [charts.savings_chart(savings)] if savings.rows else []),
            ("Routing", routing, [charts.routing_chart(routing[0])] if routing[0].rows else []),
            ("Quality", _with_alerts(quality, accuracy.alerts), accuracy_charts if accuracy.table.rows else []),
            ("Margins", [reports.margins(filters)], []),
            ("Latency", [reports.latency(filters)], []),
            *_experiment_sections(reports, filters),
        ],
    )  # fmt: skip


def _with_alerts(tables: list[Table], alerts: Sequence[DriftAlert]) -> list[Table]:
    """The drift alerts as the last table's first notes (report_html shows ALERT notes in red)."""
    if not alerts:
        return tables
    last = tables[-1]
    flagged = Table(last.title, last.columns, last.rows, [f"ALERT: {a.message}" for a in alerts] + last.notes)
    return [*tables[:-1], flagged]


def _experiment_sections(reports: Reports, filters: Filters) -> list[tuple[str, list[Table], list[bytes]]]:
    """One section per experiment of the policies, with its verdicts under the arms."""
    sections: list[tuple[str, list[Table], list[bytes]]] = []
    for experiment in reports.policies.experiments:
        report = experiment_report(reports, experiment.name, filters)
        table = summary_table(report)
        table.notes = [*verdict_lines(report), *table.notes]
        sections.append((f"Experiment {experiment.name}", [table], []))
    return sections


async def run_report(app: App, args: argparse.Namespace) -> int:
    filters = filters_from(args)
    clickhouse = app.clickhouse()
    await asyncio.to_thread(clickhouse.migrate)
    reports = Reports(clickhouse, app.settings.policies)
    own = _OWN_PRINTING.get(args.report)
    if own is not None:
        return await own(reports, filters, args)
    tables = await asyncio.to_thread(tables_for, reports, args.report, filters, getattr(args, "by", "model"))
    print_tables(tables, args.format)
    if getattr(args, "chart", None):
        png = await asyncio.to_thread(chart_for, args.report, tables)
        Path(args.chart).write_bytes(png)
        err.print(f"wrote {args.chart}")
    return 0


async def _html(reports: Reports, filters: Filters, args: argparse.Namespace) -> int:
    text = await asyncio.to_thread(html_page, reports, filters)
    Path(args.output).write_text(text, encoding="utf-8")
    err.print(f"wrote {args.output}")
    return 0


async def _quality(reports: Reports, filters: Filters, args: argparse.Namespace) -> int:
    tables, accuracy = await asyncio.to_thread(quality_report, reports, filters, args.by_strategy)
    print_tables(tables, args.format, accuracy.alerts)
    return DRIFT_EXIT if args.check and accuracy.latest is not None else 0


async def _experiment(reports: Reports, filters: Filters, args: argparse.Namespace) -> int:
    report = await asyncio.to_thread(experiment_report, reports, args.name, filters)
    print_experiment(report, args.format)
    return 0


# Reports that print more than tables (alerts, verdicts) or write a file.
_OWN_PRINTING: dict[str, Callable[[Reports, Filters, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "html": _html,
    "quality": _quality,
    "experiment": _experiment,
}
