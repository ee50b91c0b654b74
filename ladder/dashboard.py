"""The Grafana dashboard: the reports' own queries for the ClickHouse data source plugin.

Every panel reads the daily rollup through `rollup_query` and the figures of ladder/report.py (the
routing accuracy panel the scores, through `scores_query` and ladder/report_scores.py); only the
query parameters change hands. The reports pass them to ClickHouse; here they become what the
plugin (grafana-clickhouse-datasource, v4 query model: `editorType: sql`, `rawSql`) fills in: the
time picker's range as UTC days and the dashboard variables. Regenerate the committed file with

    python -m ladder.dashboard > deploy/grafana/ladder.json
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from ladder.messages import Status
from ladder.report import (
    CONSTANTS,
    LATENCY_QUANTILES,
    SAVINGS_FIGURES,
    SPEND_BY,
    SPEND_FIGURES,
    rollup_query,
    scores_query,
)
from ladder.report_scores import JUDGED_SHADOW, RIGHT
from policies.config import Policies, default_policies_text, load_policies, parse_policies

PLUGIN = "grafana-clickhouse-datasource"
PLUGIN_VERSION = "4.0.0"  # the query model the targets follow (older saved queries get migrated)
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}
ALL = "''"  # the customer and feature variables' "All": the empty string the reports read as no filter

# The reports' query parameters as the plugin and Grafana fill them in. The rollup's days are UTC
# days; `$__fromTime` expands to a DateTime. `singlequote` quotes a chosen value and escapes its
# quotes; Grafana leaves a custom all value as it is.
PARAMETERS = {
    "since:Date": "toDate($__fromTime, 'UTC')",
    "until:Date": "toDate($__toTime, 'UTC')",
    "customer:String": "${customer:singlequote}",
    "feature:String": "${feature:singlequote}",
    "batch:String": "${batch:singlequote}",
}
_PARAMETER = re.compile(r"\{(\w+):([^{}]+)\}")

MODEL_CALLS = "tier != {classify:String}"  # the classifier's calls are not a tier's
DEAD = Status.DEAD.value


def grafana_sql(sql: str) -> str:
    """A report query with Grafana's macros and variables for its parameters, and the reports' fixed
    values (the classify queue, the answer classes) written as literals."""

    def value(match: re.Match[str]) -> str:
        name, kind = match.groups()
        if f"{name}:{kind}" in PARAMETERS:
            return PARAMETERS[f"{name}:{kind}"]
        if name in CONSTANTS:
            return _literal(CONSTANTS[name])
        raise ValueError(f"no Grafana value for the query parameter {{{name}:{kind}}}")

    sql = _PARAMETER.sub(value, sql).replace("{db}", "${database}")
    return "\n".join(line.strip() for line in sql.splitlines() if line.strip())


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"no SQL literal for {value!r}")


def _ratio(part: str, whole: str) -> str:
    """part/whole as a percentage to one decimal, NULL without a whole (the reports' _ratio)."""
    return f"round(100 * toFloat64({part}) / nullIf(toFloat64({whole}), 0), 1)"


# The panels' queries, by panel: fixed text only (the filters are Grafana's variables, quoted by
# Grafana). Aliases never reuse a column's name: ClickHouse would read the alias inside the other
# expressions of the same SELECT.
_ACTUAL = " + ".join(SAVINGS_FIGURES[k] for k in ("model_cost", "classifier_cost", "shadow_cost"))
_ALL_TOP = SAVINGS_FIGURES["all_top"]
_SPEND_LABELS = {
    "requests": "requests",
    "jobs": "jobs settled",
    "ok": "ok",
    "failed": "failed",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "cost": "spend",
    "simulated": "simulated calls",
}
_SPEND_COLUMNS = ",\n".join(f'{SPEND_FIGURES[k]} AS "{label}"' for k, label in _SPEND_LABELS.items())
_SHARE = _ratio(SPEND_FIGURES["cost"], f"sum({SPEND_FIGURES['cost']}) OVER ()")
_ESCALATED = f"sumIf(calls, status = '{Status.ESCALATED.value}')"
_FAILED_OVER = f"sumIf(calls, status = '{Status.FAILOVER.value}')"
# Routing: jobs by the tier they were first sent to, and by the tier they finished on (or died on).
_INTENDED = rollup_query(
    "SELECT intended_tier AS tier_name, sum(jobs) AS intended_jobs, 0 AS finished_jobs, 0 AS dead_jobs",
    f"AND {MODEL_CALLS} GROUP BY intended_tier",
)
_FINISHED = rollup_query(
    f"SELECT tier AS tier_name, 0 AS intended_jobs, sumIf(jobs, status != '{DEAD}') AS finished_jobs,\n"
    f"sumIf(jobs, status = '{DEAD}') AS dead_jobs",
    f"AND {MODEL_CALLS} GROUP BY tier",
)
_TOTALS = rollup_query(
    f"SELECT {_ACTUAL} AS actual,\n{_ALL_TOP} AS all_top_tier,\n{SAVINGS_FIGURES['jobs']} AS all_jobs,\n"
    f"{SAVINGS_FIGURES['batch_jobs']} AS lane_jobs,\n"
    f"{SAVINGS_FIGURES['batch_sync_cost']} - {SAVINGS_FIGURES['batch_cost']} AS lane_saved"
)


def queries(tiers: Sequence[str]) -> dict[str, str]:
    """Each panel's query, in report syntax; `tiers` orders the tier charts (unknown tiers after, by name)."""
    order = _literal(list(tiers))

    def by_tier(column: str) -> str:
        return f"ORDER BY indexOf({order}, {column}) = 0, indexOf({order}, {column}), {column}"

    return {
        "spend_by_model": rollup_query(
            f"SELECT day AS time, {SPEND_BY['model']} AS model_name, {SPEND_FIGURES['cost']} AS spend",
            "GROUP BY time, model_name ORDER BY time, model_name",
        ),
        "spend_by_customer": rollup_query(
            f'SELECT {SPEND_BY["customer"]},\n{_SPEND_COLUMNS},\n{_SHARE} AS "share %"',
            f"GROUP BY {SPEND_BY['customer']} ORDER BY {SPEND_FIGURES['cost']} DESC, {SPEND_BY['customer']}",
        ),
        "savings_by_day": rollup_query(
            f"SELECT day AS time,\n{_ACTUAL} AS actual,\n{_ALL_TOP} AS all_top_tier,\n"
            f'{_ratio("all_top_tier - actual", "all_top_tier")} AS "saved %"',
            "GROUP BY time ORDER BY time",
        ),
        "savings_total": (
            f'SELECT actual AS spend, all_top_tier - actual AS saved, {_ratio("saved", "all_top_tier")} AS "saved %",\n'
            f'{_ratio("lane_jobs", "all_jobs")} AS "batch lane jobs %", lane_saved AS "saved by batch lane"\n'
            f"FROM (\n{_TOTALS}\n)"
        ),
        "routing_split": (
            "SELECT tier_name AS tier, sum(intended_jobs) AS intended, sum(finished_jobs) AS finished, "
            f"sum(dead_jobs) AS dead\nFROM (\n{_INTENDED}\nUNION ALL\n{_FINISHED}\n)\n"
            f"GROUP BY tier_name {by_tier('tier_name')}"
        ),
        "escalation_by_tier": rollup_query(
            f'SELECT tier,\n{_ratio(_ESCALATED, "sum(calls)")} AS "escalated %",\n'
            f'{_ratio(_FAILED_OVER, "sum(calls)")} AS "failed over %"',
            f"AND {MODEL_CALLS} GROUP BY tier {by_tier('tier')}",
        ),
        "dead_letters": rollup_query(
            "SELECT day AS time, if(error_class = '', '(none)', error_class) AS reason, sum(jobs) AS dead_jobs",
            f"AND status = '{DEAD}' GROUP BY time, reason ORDER BY time, reason",
        ),
        "latency_p95": rollup_query(
            f"SELECT day AS time, {SPEND_BY['model']} AS model_name,\n"
            f"round(toFloat64({LATENCY_QUANTILES}[2]), 1) AS p95_ms",
            "AND error_class != {over_budget:String} GROUP BY time, model_name ORDER BY time, model_name",
        ),
        "routing_accuracy": scores_query(
            f'SELECT toDate(at) AS time,\n{_ratio(RIGHT, "count()")} AS "routing accuracy %"',
            f"{JUDGED_SHADOW} GROUP BY time ORDER BY time",
        ),
    }


def _target(sql: str, kind: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorType": "sql",
        "format": 0 if kind == "timeseries" else 1,  # sqlds: 0 time series (long frames widened), 1 table
        "pluginVersion": PLUGIN_VERSION,
        "queryType": kind,
        "rawSql": grafana_sql(sql),
        "refId": "A",
    }


def _panel(
    pid: int, title: str, kind: str, sql: str, grid: tuple[int, int, int, int], description: str, **extra: Any
) -> dict[str, Any]:
    x, y, w, h = grid
    query_kind = "timeseries" if kind == "timeseries" else "table"
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [_target(sql, query_kind)],
        "fieldConfig": extra.pop("fieldConfig", {"defaults": {}, "overrides": []}),
        "options": extra.pop("options", {}),
        **extra,
    }


def _unit(name: str, unit: str, **props: Any) -> dict[str, Any]:
    """A field override: this field's unit (and any custom properties)."""
    properties = [{"id": "unit", "value": unit}] + [{"id": f"custom.{k}", "value": v} for k, v in props.items()]
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def _series(label: str, unit: str, bars: bool) -> dict[str, Any]:
    """Field config of a time series split by one label (the query's string column)."""
    custom: dict[str, Any] = {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}} if bars else {}
    return {
        "defaults": {"unit": unit, "displayName": "${__field.labels." + label + "}", "custom": custom},
        "overrides": [],
    }


def _floor(minimum: float) -> dict[str, Any]:
    """Field config of a percentage with a dashed line at `minimum` (red below it)."""
    steps = [{"color": "red", "value": None}, {"color": "green", "value": minimum}]
    return {
        "defaults": {"unit": "percent", "min": 0, "max": 100, "thresholds": {"mode": "absolute", "steps": steps},
                     "custom": {"thresholdsStyle": {"mode": "dashed"}}},
        "overrides": [],
    }  # fmt: skip


def panels(tiers: Sequence[str], drift_minimum: float = 0.9) -> list[dict[str, Any]]:
    """`drift_minimum`: the policies' minimum routing accuracy (0..1), drawn on the accuracy panel."""
    sql = queries(tiers)
    table = {"showHeader": True, "footer": {"show": True, "reducer": ["sum"], "fields": ""}}
    below = {"displayMode": "list", "placement": "bottom"}
    saved_pct = _unit("saved %", "percent", axisPlacement="right", lineStyle={"fill": "dash", "dash": [10, 10]})
    return [
        _panel(1, "Spend by model", "timeseries", sql["spend_by_model"], (0, 0, 16, 8),
               "Cost per day by provider/model, every call included (escalations, retries, the classifier): "
               "ladder report spend --by model.",
               fieldConfig=_series("model_name", "currencyUSD", bars=True),
               options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}),
        _panel(2, "Spend and savings", "stat", sql["savings_total"], (16, 0, 8, 8),
               "Over the time range: what was spent (classifier included), and what was saved against every "
               "job sent once to the top tier: the TOTAL line of ladder report savings.",
               fieldConfig={"defaults": {"unit": "currencyUSD"}, "overrides": [_unit("saved %", "percent")]},
               options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "none", "graphMode": "none", "textMode": "value_and_name"}),
        _panel(3, "Savings by day: actual against all top tier", "timeseries", sql["savings_by_day"],
               (0, 8, 12, 8),
               "actual: every call made (escalations and classifier included); all_top_tier: each job sent once "
               "to the top tier, priced on its final answer's tokens; saved % on the right axis: "
               "ladder report savings.",
               fieldConfig={"defaults": {"unit": "currencyUSD"}, "overrides": [saved_pct]},
               options={"legend": below, "tooltip": {"mode": "multi"}}),
        _panel(4, "Spend by customer", "table", sql["spend_by_customer"], (12, 8, 12, 8),
               "Requests are provider calls, jobs are jobs settled: ladder report spend --by customer.",
               fieldConfig={"defaults": {}, "overrides": [_unit("spend", "currencyUSD"), _unit("share %", "percent")]},
               options=table),
        _panel(5, "Routing split: intended against finished", "barchart", sql["routing_split"], (0, 16, 8, 8),
               "Jobs by the tier they were first routed to (intended), the tier they finished on, and the "
               "dead-lettered ones: ladder report routing.",
               options={"xField": "tier", "legend": below}),
        _panel(6, "Escalation and fallback rate by tier", "barchart", sql["escalation_by_tier"], (8, 16, 8, 8),
               "Share of each tier's calls that escalated one tier up, or failed over to the next candidate of "
               "the same tier: ladder report routing.",
               fieldConfig={"defaults": {"unit": "percent"}, "overrides": []},
               options={"xField": "tier", "legend": below}),
        _panel(7, "Dead letters by reason", "timeseries", sql["dead_letters"], (16, 16, 8, 8),
               "Jobs dead-lettered per day, by the last error (over_budget: refused before any call).",
               fieldConfig=_series("reason", "short", bars=True),
               options={"legend": below, "tooltip": {"mode": "multi"}}),
        _panel(8, "Latency p95 by model", "timeseries", sql["latency_p95"], (0, 24, 24, 8),
               "95th percentile of a provider call's latency per day (t-digest, failed calls included): "
               "ladder report latency.",
               fieldConfig=_series("model_name", "ms", bars=False),
               options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["max", "mean"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}),
        _panel(9, "Routing accuracy by day", "timeseries", sql["routing_accuracy"], (0, 32, 24, 8),
               "Of the shadow comparisons that judged the route, the share where the cheaper tier's answer was good "
               "enough, per day the score was given; the dashed line is the drift minimum (policies [drift]). "
               "Drift alerts judge a trailing window of days: ladder report quality.",
               fieldConfig=_floor(drift_minimum * 100),
               options={"legend": below, "tooltip": {"mode": "multi"}}),
    ]  # fmt: skip


def _filter_variable(name: str) -> dict[str, Any]:
    query = f"SELECT DISTINCT {name} FROM ${{database}}.outcomes_daily WHERE {name} != '' ORDER BY {name}"  # noqa: S608
    return {
        "type": "query",
        "name": name,
        "label": name,
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 1,
        "includeAll": True,
        "allValue": ALL,
        "multi": False,
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def variables() -> list[dict[str, Any]]:
    return [
        {"type": "datasource", "name": "datasource", "label": "ClickHouse", "query": PLUGIN, "current": {},
         "options": [], "refresh": 1, "regex": "", "hide": 0},
        {"type": "constant", "name": "database", "label": "database", "query": "ladder",
         "current": {"text": "ladder", "value": "ladder"}, "hide": 2,
         "description": "CLICKHOUSE_DATABASE of the Ladder deployment"},
        _filter_variable("customer"),
        _filter_variable("feature"),
        {"type": "textbox", "name": "batch", "label": "batch (empty: all)", "query": "",
         "current": {"text": "", "value": ""}, "hide": 0},
    ]  # fmt: skip


def dashboard(policies: Policies | None = None) -> dict[str, Any]:
    """The dashboard; `policies` (default: the packaged ones) orders the tiers in the tier charts and
    gives the drift minimum."""
    chosen = policies or parse_policies(default_policies_text())
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": PLUGIN, "name": "ClickHouse", "version": PLUGIN_VERSION},
            *(
                {"type": "panel", "id": p, "name": p, "version": ""}
                for p in ("barchart", "stat", "table", "timeseries")
            ),
        ],
        "annotations": {"list": []},
        "description": "Ladder: spend, savings, routing, dead letters and latency from the daily rollup "
        "(outcomes_daily), and routing accuracy from the scores, with the same queries as `ladder report`.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels(chosen.tier_names, chosen.drift.min_routing_accuracy),
        "refresh": "",
        "schemaVersion": 38,
        "tags": ["ladder", "clickhouse", "llm-spend"],
        "templating": {"list": variables()},
        "time": {"from": "now-30d", "to": "now"},
        "timepicker": {},
        "timezone": "utc",  # the rollup's days are UTC days
        "title": "Ladder: spend, savings and routing",
        "uid": "ladder-spend",
        "version": 1,
        "weekStart": "",
    }


def render(policies: Policies | None = None) -> str:
    return json.dumps(dashboard(policies), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    # python -m ladder.dashboard [POLICIES.toml]: the committed file uses the packaged policies.
    sys.stdout.write(render(load_policies(sys.argv[1]) if len(sys.argv) > 1 else None))
