"""Quality from the scores: shadow agreement and feedback by route and tier, routing accuracy by day,
and the drift alerts policies/drift.py raises on it.

A shadow comparison judges a job that finished on a lower tier: was its answer good enough (the
route was right) or did it need the reference tier (wrong)? Comparisons that could not tell are left
out of the rates. Scores count on the UTC day they were given. Drift is judged on a trailing window
of days, so the accuracy query reaches one window back before --since: the first day shown is
judged on a whole window, as a later run would judge it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from ladder.report import FIRST_DAY, Filters, Reports, Table, scores_query
from policies.drift import DayAccuracy, DriftAlert, drift_alerts, latest_alert
from policies.stats import wilson_interval

ACCURACY_CONFIDENCE = 0.95
# The shadow comparisons that judged the route (ladder/dashboard.py reads the same ones).
JUDGED_SHADOW = "AND source = {shadow_scores:String} AND routing != {unknown:Int8}"
RIGHT = "countIf(routing = {right:Int8})"


# Scores carry no route: a scored answer's route is that of the job's own attempt on the scored tier
# (escalations included), looked up in the raw outcomes for the scored jobs only (a set lookup).
_SCORED = scores_query(
    "SELECT job_id, tier, source, score, routing", "AND source IN ({shadow_scores:String}, {feedback:String})"
)
SCORES_BY_ROUTE = f"""
SELECT if(r.route = '', '(unknown)', r.route) AS scored_route, s.tier AS scored_tier,
       countIf(s.source = {{shadow_scores:String}} AND s.routing != {{unknown:Int8}}),
       countIf(s.source = {{shadow_scores:String}} AND s.routing = {{right:Int8}}),
       sumIf(s.score, s.source = {{shadow_scores:String}} AND s.routing != {{unknown:Int8}}),
       countIf(s.source = {{feedback:String}}),
       sumIf(s.score, s.source = {{feedback:String}})
FROM ({_SCORED}) AS s
LEFT JOIN (
    SELECT job_id, tier, argMax(route_source, attempt) AS route FROM {{db}}.outcomes
    WHERE job_id IN (SELECT job_id FROM ({_SCORED})) AND route_source != {{shadow:String}}
    GROUP BY job_id, tier
) AS r ON s.job_id = r.job_id AND s.tier = r.tier
GROUP BY scored_route, scored_tier
"""  # noqa: S608 (fixed text: the filters are parameters)


def scores_by_route(reports: Reports, filters: Filters) -> Table:
    """Shadow agreement (with its interval) and mean shadow score, feedback count and mean, by the
    route and tier of the scored answer: the companion of the validation pass rate."""
    rows = sorted(reports.query(SCORES_BY_ROUTE, filters), key=lambda r: (r[0], reports.tier_rank(r[1])))
    out = []
    # A comparison that could not judge (routing unknown) has no score to average either.
    for route, tier, judged, right, shadow_sum, feedback, feedback_sum in rows:
        low, high = wilson_interval(int(right), int(judged), ACCURACY_CONFIDENCE) if judged else (None, None)
        out.append(
            (str(route), str(tier), int(judged), _percent(int(right), int(judged)), _scaled(low), _scaled(high),
             _mean(shadow_sum, judged), int(feedback), _mean(feedback_sum, feedback))
        )  # fmt: skip
    columns = ["route", "tier", "shadow_judged", "shadow_agree_%", "ci95_low_%", "ci95_high_%", "shadow_mean_%",
               "feedback", "feedback_mean_%"]  # fmt: skip
    notes = [
        "shadow_agree_%: of the shadow comparisons that judged the route, the share where this tier's answer was "
        "good enough; shadow_mean_%: mean comparison score; feedback: count and mean score (scores of 0..1 shown "
        "as %); "
        "(unknown): the scored job's outcomes are not stored"
    ]
    return Table(f"quality: shadow and feedback scores ({filters.describe()})", columns, out, notes)


def accuracy_query(by_strategy: bool) -> str:
    keys = "scored_day, strategy" if by_strategy else "scored_day"
    return scores_query(
        f"SELECT toDate(at) AS scored_day, {'strategy, ' if by_strategy else ''}{RIGHT}, count()",
        f"{JUDGED_SHADOW} GROUP BY {keys} ORDER BY {keys}",
    )


@dataclass(frozen=True)
class AccuracyReport:
    table: Table
    alerts: list[DriftAlert]  # days of the period whose window is below the minimum
    latest: DriftAlert | None  # the last day with data, if it is one of them: what --check exits on


def routing_accuracy(reports: Reports, filters: Filters, by_strategy: bool = False) -> AccuracyReport:
    policy = reports.policies.drift
    first = filters.since or FIRST_DAY
    lookback = replace(filters, since=_days_before(first, policy.window_days - 1))
    rows = reports.query(accuracy_query(by_strategy), lookback)
    # drift pools the rows of a day (one per strategy) like the days of a window
    series = [DayAccuracy(r[0], int(r[-2]), int(r[-1])) for r in rows]
    alerts = [a for a in drift_alerts(series, policy) if a.day >= first]
    latest = latest_alert(series, policy)
    alert_days = {a.day for a in alerts}
    out = [_row(r, by_strategy, r[0] in alert_days) for r in rows if r[0] >= first]
    columns = ["day", *(["strategy"] if by_strategy else []), "right", "judged", "accuracy_%", "ci95_low_%",
               "ci95_high_%", "drift"]  # fmt: skip
    window = "" if policy.window_days == 1 else f"trailing {policy.window_days}-day "
    notes = [
        "routing accuracy: of the shadow comparisons that judged the route, the share where the cheaper "
        f"tier's answer was good enough (right); Wilson {ACCURACY_CONFIDENCE:.0%} interval",
        f"drift: ALERT when the {window}accuracy of all strategies together is below "
        f"{policy.min_routing_accuracy * 100:g}% over at least {policy.min_samples} comparisons (policies [drift])",
    ]
    table = Table(f"routing accuracy by day ({filters.describe()})", columns, out, notes)
    return AccuracyReport(table, alerts, latest if latest is not None and latest.day >= first else None)


def _days_before(day: date, days: int) -> date:
    return max(FIRST_DAY, day - timedelta(days=days))


def _row(row: tuple[Any, ...], by_strategy: bool, alert: bool) -> tuple[Any, ...]:
    right, judged = int(row[-2]), int(row[-1])
    low, high = wilson_interval(right, judged, ACCURACY_CONFIDENCE)
    keys = (str(row[0]), str(row[1])) if by_strategy else (str(row[0]),)
    return (*keys, right, judged, _percent(right, judged), _scaled(low), _scaled(high), "ALERT" if alert else "")


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _scaled(fraction: float | None) -> float | None:
    """A fraction as a percentage to one decimal."""
    return None if fraction is None else round(fraction * 100, 1)


def _mean(total: float, count: int) -> float | None:
    """The mean of scores of 0..1, as a percentage to one decimal."""
    return round(100 * float(total) / int(count), 1) if count else None


def alert_json(alert: DriftAlert) -> dict[str, Any]:
    return {"day": alert.day.isoformat(), "accuracy": alert.accuracy, "judged": alert.judged, "message": alert.message}
