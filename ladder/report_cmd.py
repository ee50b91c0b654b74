"""`ladder report spend|savings|routing|quality|margins|latency|html`: the reports on the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from ladder.app import App
from ladder.output import FORMATS, payload, render
from ladder.report import SPEND_BY, Filters, Reports, Table, parse_day

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

CHARTED = ("spend", "savings", "routing")


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
    common(rep_sub.add_parser("quality", help="validation pass rate by route and tier"), False)
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
        "quality": lambda: [reports.quality(filters)],
        "margins": lambda: [reports.margins(filters)],
        "latency": lambda: [reports.latency(filters)],
    }
    return makers[name]()


def chart_for(name: str, tables: list[Table]) -> bytes:
    from ladder import charts  # matplotlib: only when a picture is asked for

    drawers = {"spend": charts.spend_chart, "savings": charts.savings_chart, "routing": charts.routing_chart}
    return drawers[name](tables[0])


def print_tables(tables: list[Table], fmt: str) -> None:
    if fmt == "json" and len(tables) > 1:
        out.print_json(json.dumps({"tables": [payload(t.title, t.columns, t.rows, t.notes) for t in tables]}))
        return
    for t in tables:
        if fmt == "csv" and len(tables) > 1:
            out.file.write(f"# {t.title}\n")
        render(t.title, t.columns, t.rows, fmt, out, t.notes)


def html_page(reports: Reports, filters: Filters) -> str:
    from ladder import charts
    from ladder.report_html import page

    spend = reports.spend(filters, "model")
    savings = reports.savings(filters)
    routing = reports.routing(filters)
    return page(
        f"Ladder spend report ({filters.describe()})",
        [
            ("Spend", [spend, reports.spend(filters, "customer"), reports.spend(filters, "feature")],
             [charts.spend_chart(spend)] if spend.rows else []),
            ("Savings", [savings], [charts.savings_chart(savings)] if savings.rows else []),
            ("Routing", routing, [charts.routing_chart(routing[0])] if routing[0].rows else []),
            ("Quality", [reports.quality(filters)], []),
            ("Margins", [reports.margins(filters)], []),
            ("Latency", [reports.latency(filters)], []),
        ],
    )  # fmt: skip


async def run_report(app: App, args: argparse.Namespace) -> int:
    filters = filters_from(args)
    clickhouse = app.clickhouse()
    await asyncio.to_thread(clickhouse.migrate)
    reports = Reports(clickhouse, app.settings.policies)
    if args.report == "html":
        text = await asyncio.to_thread(html_page, reports, filters)
        Path(args.output).write_text(text, encoding="utf-8")
        err.print(f"wrote {args.output}")
        return 0
    tables = await asyncio.to_thread(tables_for, reports, args.report, filters, getattr(args, "by", "model"))
    print_tables(tables, args.format)
    if getattr(args, "chart", None):
        png = await asyncio.to_thread(chart_for, args.report, tables)
        Path(args.chart).write_bytes(png)
        err.print(f"wrote {args.chart}")
    return 0
