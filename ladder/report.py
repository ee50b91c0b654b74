"""The reports: spend, savings, routing, quality, margins and latency, read from ClickHouse.

Every report reads the daily rollup (`outcomes_daily`), so a report over months of outcomes reads
thousands of rows, not millions (ladder/report_scores.py reads the scores, ladder/report_experiment.py
one experiment's outcomes). Filters reach ClickHouse only as query parameters; the grouping
expressions are fixed here. Money stays Decimal from ClickHouse to the printed table.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from ladder.messages import RouteSource, Routing, ScoreSource
from policies.config import ANSWER_CLASSES, CLASSIFY_QUEUE, Policies
from worker.clickhouse import ClickHouse

FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2149, 6, 6)  # the range of ClickHouse's Date
CENT = Decimal("0.01")
OVER_BUDGET = "over_budget"  # a job refused before any call: no latency, no answer to judge

# Fixed values the queries compare with, passed as parameters like the filters.
CONSTANTS: dict[str, Any] = {
    "classify": CLASSIFY_QUEUE,
    "answer_classes": list(ANSWER_CLASSES),
    "over_budget": OVER_BUDGET,
    "shadow": RouteSource.SHADOW.value,  # outcome rows of shadow evaluation calls
    "shadow_scores": ScoreSource.SHADOW.value,
    "feedback": ScoreSource.FEEDBACK.value,
    "right": int(Routing.RIGHT),
    "unknown": int(Routing.UNKNOWN),
}


def filter_where(day: str) -> str:
    """The filters as query parameters, `day` being the table's UTC day expression; ladder/dashboard.py
    maps them to Grafana's time range and variables."""
    return f"""
WHERE {day} BETWEEN {{since:Date}} AND {{until:Date}}
  AND ({{customer:String}} = '' OR customer = {{customer:String}})
  AND ({{feature:String}} = '' OR feature = {{feature:String}})
  AND ({{batch:String}} = '' OR batch = {{batch:String}})
"""


FILTER_WHERE = filter_where("day")


def rollup_query(select: str, tail: str = "") -> str:
    """A query of the daily rollup under the filters; `{db}` and the parameters are filled in later."""
    return f"{select} FROM {{db}}.outcomes_daily {FILTER_WHERE} {tail}"


def scores_query(select: str, tail: str = "") -> str:
    """A query of the scores under the filters, by the UTC day each score was given."""
    return f"{select} FROM {{db}}.scores FINAL {filter_where('toDate(at)')} {tail}"


class ReportError(ValueError):
    """A bad report argument; the message names it."""


@dataclass(frozen=True)
class Filters:
    since: date | None = None
    until: date | None = None  # inclusive
    customer: str = ""
    feature: str = ""
    batch: str = ""

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since or FIRST_DAY,
            "until": self.until or LAST_DAY,
            "customer": self.customer,
            "feature": self.feature,
            "batch": self.batch,
        }

    def describe(self) -> str:
        parts = [f"{self.since or '…'} to {self.until or '…'}"] if self.since or self.until else []
        parts += [f"{name} {value}" for name, value in self._named() if value]
        return ", ".join(parts) or "all outcomes"

    def _named(self) -> list[tuple[str, str]]:
        return [("customer", self.customer), ("feature", self.feature), ("batch", self.batch)]


_RELATIVE = re.compile(r"^(\d+)d$")


def parse_day(text: str, option: str, today: date) -> date:
    """YYYY-MM-DD, or Nd for N days before today (UTC)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return today - timedelta(days=int(relative.group(1)))
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"{option}: '{text}' is not a date (YYYY-MM-DD) or a number of days back (30d)") from None


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    notes: list[str] = field(default_factory=list)


def money_text(amount: Decimal) -> str:
    """An exact amount without the trailing zeros of its scale: $0.0505, not $0.050500000000."""
    return f"${amount.normalize():f}"


def _ratio(part: Decimal | int, whole: Decimal | int) -> float | None:
    """part/whole as a percentage to one decimal (a share, not money); None when there is no whole."""
    if not whole:
        return None
    return round(float(Decimal(part) * 100 / Decimal(whole)), 1)


SPEND_BY = {
    "model": "concat(provider, '/', model)",
    "provider": "provider",
    "tier": "tier",
    "customer": "customer",
    "feature": "feature",
    "day": "toString(day)",
    "route": "route_source",
}
SPEND_COLUMNS = ["key", "requests", "jobs", "ok", "failed", "input_tokens", "output_tokens", "cost", "share_%"]
# The figures of the spend report and of the savings report, in the order their queries select them
# (the Grafana dashboard selects the same expressions).
SPEND_FIGURES = {
    "requests": "sum(calls)",
    "jobs": "sum(jobs)",
    "ok": "sumIf(calls, status = 'ok')",
    "failed": "sumIf(calls, status != 'ok')",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "cost": "sum(cost)",
    "simulated": "sum(simulated_calls)",
    "shadow_cost": "sumIf(cost, route_source = {shadow:String})",
}
# Actual cost in three parts: the calls that answered jobs, the classifier's calls, and shadow
# evaluation (a sample of jobs asked again on the reference tier, and judged): real spend, but the
# cost of measuring routing, not of serving it.
SAVINGS_FIGURES = {
    "jobs": "sumIf(jobs, tier != {classify:String})",
    "model_cost": "sumIf(cost, tier != {classify:String} AND route_source != {shadow:String})",
    "classifier_cost": "sumIf(cost, tier = {classify:String})",
    "shadow_cost": "sumIf(cost, route_source = {shadow:String})",
    "all_top": "sumIf(top_tier_cost, tier != {classify:String})",
    "all_middle": "sumIf(middle_tier_cost, tier != {classify:String})",
    "batch_jobs": "sum(batch_jobs)",
    "batch_cost": "sum(batch_cost)",
    "batch_sync_cost": "sum(batch_sync_cost)",
}
LATENCY_QUANTILES = "quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ms)"  # p50, p95, p99


class Reports:
    def __init__(self, clickhouse: ClickHouse, policies: Policies) -> None:
        self._ch = clickhouse
        self._policies = policies
        self._tier_rank = {t: i for i, t in enumerate(policies.tier_names)}  # tiers only the data knows: last

    @property
    def policies(self) -> Policies:
        return self._policies

    def query(self, sql: str, filters: Filters, **parameters: Any) -> list[tuple[Any, ...]]:
        """A report query under the filters, with the fixed values and any further parameters."""
        return self._ch.query(sql, {**filters.params(), **CONSTANTS, **parameters})

    def _rows(self, select: str, filters: Filters, tail: str = "") -> list[tuple[Any, ...]]:
        return self.query(rollup_query(select, tail), filters)

    def spend(self, filters: Filters, by: str) -> Table:
        if by not in SPEND_BY:
            raise ReportError(f"--by: '{by}' is not one of {', '.join(SPEND_BY)}")
        rows = self._rows(
            f"SELECT {SPEND_BY[by]} AS key, {', '.join(SPEND_FIGURES.values())}",
            filters,
            "GROUP BY key ORDER BY sum(cost) DESC, key",
        )
        total_cost = sum((Decimal(r[7]) for r in rows), Decimal(0))
        table_rows: list[tuple[Any, ...]] = [
            (str(r[0]), *(int(v) for v in r[1:7]), Decimal(r[7]), _ratio(Decimal(r[7]), total_cost)) for r in rows
        ]
        if table_rows:
            sums = [sum(r[i] for r in table_rows) for i in range(1, 7)]
            table_rows.append(("TOTAL", *sums, total_cost, _ratio(total_cost, total_cost)))
        simulated = sum(int(r[8]) for r in rows)
        shadow_cost = sum((Decimal(r[9]) for r in rows), Decimal(0))
        notes = ["requests: provider calls (escalations, retries and classifier calls included); jobs: jobs settled"]
        if shadow_cost:
            notes.append(f"cost includes {money_text(shadow_cost)} of shadow evaluation calls (route shadow)")
        if simulated:
            notes.append(f"SIMULATED: {simulated:,} calls were answered by the simulated provider (no API key set).")
        return Table(f"spend by {by} ({filters.describe()})", SPEND_COLUMNS, table_rows, notes)

    def savings(self, filters: Filters) -> Table:
        """Actual cost against every job sent once to the top (and the middle) tier, by day.

        A job's counterfactual is its final answer's tokens priced on that tier; the actual cost
        is every call made for it (escalations included) plus the classifier's calls and shadow
        evaluation, each shown apart.
        """
        rows = self._rows(
            f"SELECT day, {', '.join(SAVINGS_FIGURES.values())}",
            filters,
            "GROUP BY day ORDER BY day",
        )
        return self._savings_table(
            filters,
            [(r[0], int(r[1]), *(Decimal(v) for v in r[2:7]), int(r[7]), *(Decimal(v) for v in r[8:10])) for r in rows],
        )

    def _savings_table(self, filters: Filters, rows: list[tuple[Any, ...]]) -> Table:
        top, middle = self._policies.top_tier.name, self._policies.middle_tier.name
        with_middle = middle != top
        columns = ["day", "jobs", "model_cost", "classifier_cost", "shadow_cost", "actual", f"all_{top}", "saved",
                   "saved_%"]  # fmt: skip
        if with_middle:
            columns += [f"all_{middle}", f"saved_vs_{middle}", f"saved_vs_{middle}_%"]
        columns += ["batch_jobs", "batch_jobs_%", "batch_saved"]
        out: list[tuple[Any, ...]] = []
        for day, jobs, model_cost, classifier_cost, shadow_cost, all_top, all_middle, batch_jobs, batch_cost, \
                batch_sync_cost in ([*rows, _total(rows)] if rows else []):  # fmt: skip
            actual = model_cost + classifier_cost + shadow_cost
            line: tuple[Any, ...] = (
                str(day), jobs, model_cost, classifier_cost, shadow_cost, actual, all_top, all_top - actual,
                _ratio(all_top - actual, all_top),
            )  # fmt: skip
            if with_middle:
                line += (all_middle, all_middle - actual, _ratio(all_middle - actual, all_middle))
            line += (batch_jobs, _ratio(batch_jobs, jobs), batch_sync_cost - batch_cost)
            out.append(line)
        notes = [
            f"all_{top}: every job sent once to the {top} tier ({self._policies.top_tier.candidates[0].model}), "
            "priced on its final answer's tokens; actual = model_cost (escalations included) + classifier_cost + "
            "shadow_cost (shadow evaluation: a sample of jobs asked again on the reference tier and judged; it "
            "measures routing and answers no job)",
            "batch_jobs: jobs settled through a provider batch API (the batch lane); batch_saved: what those calls "
            "would have cost at the synchronous price, less their batch price (included in saved)",
        ]
        if out and out[-1][-3]:  # the lane's figures in a sentence too: the last columns of a wide table
            total = out[-1]
            notes.append(f"batch lane: {total[-3]:,} of {total[1]:,} jobs ({total[-2]}%), "
                         f"{money_text(total[-1])} saved against the synchronous price")  # fmt: skip
        return Table(f"savings by day ({filters.describe()})", columns, out, notes)

    def routing(self, filters: Filters) -> list[Table]:
        """Intended split (first route) against actual (where jobs finished), and why jobs moved."""
        rows = self._rows(
            "SELECT intended_tier, tier, status, error_class, sum(jobs), sum(calls)",
            filters,
            "AND tier != {classify:String} GROUP BY intended_tier, tier, status, error_class",
        )
        return [self._split(filters, rows), self._moves_by_tier(rows), self._moves_by_reason(rows)]

    def _split(self, filters: Filters, rows: list[tuple[Any, ...]]) -> Table:
        intended: dict[str, int] = {}
        finished: dict[str, int] = {}
        dead: dict[str, int] = {}
        for first, tier, status, _reason, jobs_settled, _calls in rows:
            if not jobs_settled:
                continue
            intended[first] = intended.get(first, 0) + int(jobs_settled)
            target = dead if status == "dead" else finished
            target[tier] = target.get(tier, 0) + int(jobs_settled)
        jobs = sum(intended.values())
        out = [
            (t, intended.get(t, 0), _ratio(intended.get(t, 0), jobs), finished.get(t, 0),
             _ratio(finished.get(t, 0), jobs), dead.get(t, 0))
            for t in self._tiers(intended, finished, dead)
        ]  # fmt: skip
        if out:
            out.append(("TOTAL", jobs, _ratio(jobs, jobs), sum(finished.values()), _ratio(sum(finished.values()), jobs),
                        sum(dead.values())))  # fmt: skip
        notes = [f"dead-lettered jobs: {sum(dead.values()):,}"] if out else []
        columns = ["tier", "intended", "intended_%", "finished", "finished_%", "dead"]
        return Table(f"routing split ({filters.describe()})", columns, out, notes)

    def _moves_by_tier(self, rows: list[tuple[Any, ...]]) -> Table:
        per: dict[str, dict[str, int]] = {}
        for _first, tier, status, _reason, _jobs, calls in rows:
            counts = per.setdefault(tier, {})
            counts["calls"] = counts.get("calls", 0) + int(calls)
            counts[status] = counts.get(status, 0) + int(calls)
        out = []
        for tier in self._tiers(per):
            c = per[tier]
            out.append(
                (tier, c["calls"], c.get("escalated", 0), _ratio(c.get("escalated", 0), c["calls"]),
                 c.get("failover", 0), _ratio(c.get("failover", 0), c["calls"]), c.get("retried", 0),
                 c.get("dead", 0))
            )  # fmt: skip
        columns = ["tier", "calls", "escalated", "escalated_%", "failed_over", "failed_over_%", "retried_429", "dead"]
        return Table("escalation and fallback by tier", columns, out)

    def _moves_by_reason(self, rows: list[tuple[Any, ...]]) -> Table:
        per: dict[tuple[str, str], dict[str, int]] = {}
        for _first, tier, status, reason, _jobs, calls in rows:
            if status in ("escalated", "failover", "retried", "dead"):
                counts = per.setdefault((tier, reason or "(none)"), {})
                counts[status] = counts.get(status, 0) + int(calls)
        out = [
            (tier, reason, c.get("escalated", 0), c.get("failover", 0), c.get("retried", 0), c.get("dead", 0))
            for (tier, reason), c in sorted(
                per.items(), key=lambda kv: (self.tier_rank(kv[0][0]), -sum(kv[1].values()))
            )
        ]
        return Table("escalation and fallback by reason", ["tier", "reason", "escalated", "failed_over", "retried_429",
                                                           "dead"], out)  # fmt: skip

    def tier_rank(self, tier: str) -> int:
        """A tier's place in the policies' order; tiers only the data knows come last."""
        return self._tier_rank.get(tier, len(self._tier_rank))

    def _tiers(self, *seen: dict[str, Any]) -> list[str]:
        """The policies' tiers in order, then any tier only the data knows (an older policies file)."""
        names = list(self._policies.tier_names)
        extra = sorted({t for s in seen for t in s} - set(names))
        return [t for t in [*names, *extra] if any(t in s for s in seen)]

    def quality(self, filters: Filters) -> Table:
        """Validation pass rate by route and tier: of the answers that came back, the share kept
        without an answer problem (refused, empty, truncated, invalid JSON, schema, uncertain).
        The scores of the same answers are ladder/report_scores.py's."""
        rows = self._rows(
            "SELECT route_source, tier, sumIf(calls, status = 'ok' AND error_class = ''), "
            "sumIf(calls, error_class IN {answer_classes:Array(String)}), sum(jobs)",
            filters,
            # Shadow calls are references, not answers the job kept: they are judged in the scores.
            "AND tier != {classify:String} AND route_source != 'shadow' GROUP BY route_source, tier",
        )
        out = []
        for route, tier, passed, problems, jobs in sorted(rows, key=lambda r: (r[0], self.tier_rank(r[1]))):
            answers = int(passed) + int(problems)
            if answers:
                out.append((route, tier, int(jobs), answers, int(passed), int(problems), _ratio(int(passed), answers)))
        columns = ["route", "tier", "jobs_finished", "answers", "passed", "answer_problems", "pass_rate_%"]
        notes = ["route: how the attempt reached its tier (rule, hint, classifier, embedding, escalation)"]
        return Table(f"quality: validation pass rate ({filters.describe()})", columns, out, notes)

    def latency(self, filters: Filters) -> Table:
        rows = self._rows(
            f"SELECT {SPEND_BY['model']} AS m, tier, sum(calls) - sum(batch_calls), {LATENCY_QUANTILES}",
            filters,
            "AND error_class != {over_budget:String} GROUP BY m, tier HAVING sum(calls) > sum(batch_calls) "
            "ORDER BY m, tier",
        )
        out = [(m, tier, int(calls), *(round(float(q), 1) for q in qs)) for m, tier, calls, qs in rows]
        notes = [
            "milliseconds per provider call (t-digest estimates), failed calls included; batch-lane requests "
            "left out (a batch's turnaround is not a call's latency)"
        ]
        return Table(f"latency by model and tier ({filters.describe()})", ["model", "tier", "calls", "p50_ms",
                                                                          "p95_ms", "p99_ms"], out, notes)  # fmt: skip

    def margins(self, filters: Filters) -> Table:
        """Cost, revenue and margin per customer, negative margins first. Monthly revenue counts
        for the share of each calendar month's days the period covers."""
        usage = {
            str(r[0]): (int(r[1]), Decimal(r[2]))
            for r in self._rows(
                "SELECT customer, sumIf(jobs, tier != {classify:String}), sum(cost)",
                filters,
                "GROUP BY customer",
            )
        }
        customers = {
            str(r[0]): (str(r[1]), Decimal(r[2]), Decimal(r[3]))
            for r in self._ch.query(
                "SELECT customer, plan, revenue_per_month, revenue_per_request FROM {db}.customers "
                "WHERE {customer:String} = '' OR customer = {customer:String}",
                {"customer": filters.customer},
            )
        }
        first, last = self._period(filters)
        months = _month_shares(first, last) if first and last else Decimal(0)
        out = []
        for customer in sorted(set(usage) | set(customers)):
            jobs, cost = usage.get(customer, (0, Decimal(0)))
            plan, per_month, per_request = customers.get(customer, ("(not in customers)", Decimal(0), Decimal(0)))
            revenue = (per_month * months + per_request * jobs).quantize(CENT, ROUND_HALF_EVEN)
            margin = revenue - cost
            out.append((customer, plan, jobs, cost, revenue, margin, _ratio(margin, revenue)))
        out.sort(key=lambda r: (r[5], r[0]))
        notes = [f"period {first} to {last}: {months.normalize()} months of monthly revenue" if first else "no data"]
        unknown = [r[0] for r in out if r[1] == "(not in customers)"]
        if unknown:
            notes.append(f"{len(unknown)} customers have no revenue on file: ladder customers load FILE")
        columns = ["customer", "plan", "jobs", "cost", "revenue", "margin", "margin_%"]
        return Table(f"margins by customer ({filters.describe()})", columns, out, notes)

    def _period(self, filters: Filters) -> tuple[date | None, date | None]:
        """The filters' dates, or else the first and last day with data."""
        first, last, rows = self._rows("SELECT min(day), max(day), count()", filters)[0]
        if not rows:
            return (filters.since, filters.until) if filters.since and filters.until else (None, None)
        return filters.since or first, filters.until or last


def _month_shares(first: date, last: date) -> Decimal:
    """How many months [first, last] covers, each month counted by its share of days."""
    total = Decimal(0)
    day = first
    while day <= last:
        days_in_month = calendar.monthrange(day.year, day.month)[1]
        month_end = day.replace(day=days_in_month)
        covered = (min(month_end, last) - day).days + 1
        total += Decimal(covered) / Decimal(days_in_month)
        day = month_end + timedelta(days=1)
    return total


def _total(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return ("TOTAL", *(sum(r[i] for r in rows) for i in range(1, len(rows[0]))))
