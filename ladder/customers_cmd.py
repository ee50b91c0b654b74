"""`ladder customers load FILE` and `ladder budgets`: who pays what, and how much of it is left this month.

`customers load` checks the whole file first (a bad line: its number and the reason, exit 2,
nothing written), then replaces the customers table in ClickHouse (margins) and the limits in Redis
(budgets, enforced by every worker at dispatch; worker/budget.py). `budgets` shows each customer's
month so far from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from rich.console import Console
from rich.markup import escape

from ladder.app import App
from ladder.output import FORMATS, render
from policies.customers import CustomersError, load_customers
from worker.budget import BudgetBook

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

BUDGET_COLUMNS = ["customer", "monthly budget", "spent", "held", "remaining", "at limit"]


def add_customers_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("customers", help="the customers file: plans, revenue, monthly budgets")
    c_sub = c.add_subparsers(dest="customers", required=True)
    load = c_sub.add_parser("load", help="replace the customers with a CSV or JSONL file")
    load.add_argument("file", help="CSV with a header row, or JSONL (policies/customers.py)")
    b = sub.add_parser("budgets", help="this month's spend against each customer's budget")
    b.add_argument("--format", choices=FORMATS, default="table")


def _book(app: App) -> BudgetBook:
    return BudgetBook(app.redis, app.keys, app.settings.policies.budgets)


async def run_customers(app: App, args: argparse.Namespace) -> int:
    try:
        customers = load_customers(args.file)
    except CustomersError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    budgets = app.settings.policies.budgets
    clickhouse = app.clickhouse()
    await asyncio.to_thread(clickhouse.migrate)
    await asyncio.to_thread(clickhouse.replace_customers, customers)
    await _book(app).set_limits(customers, budgets.default_monthly_usd, budgets.at_limit)
    own = sum(1 for c in customers if c.monthly_budget is not None)
    default = "not limited" if budgets.default_monthly_usd is None else f"${budgets.default_monthly_usd}"
    out.print(
        f"loaded {len(customers):,} customers from {args.file}: {own:,} with a monthly budget of their own; "
        f"the others and unlisted customers: {default} ({budgets.at_limit} at the limit)",
        highlight=False,
    )
    if not budgets.enabled:
        out.print("note: budgets are disabled in the policies ([budgets] enabled = false)", markup=False)
    return 0


async def run_budgets(app: App, args: argparse.Namespace) -> int:
    book = _book(app)
    rows = await book.status()
    limit, action, loaded = await book.default_limit()
    notes = [
        "unlisted customers: " + ("not limited" if limit is None else f"${limit} a month, {action} at the limit"),
    ]
    if not loaded:
        notes.append("no customers file loaded yet (ladder customers load FILE): the policies' defaults apply")
    if not app.settings.policies.budgets.enabled:
        notes.append("budgets are disabled in the policies: nothing is enforced")
    table = [[r.customer, r.limit, r.spent, r.held, r.remaining, r.at_limit] for r in rows]
    render(f"budgets, {book.month()} (UTC) so far", BUDGET_COLUMNS, table, args.format, out, notes)
    return 0
