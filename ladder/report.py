"""`ladder report spend`: requests, tokens and exact cost from ClickHouse, grouped one way."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from worker.clickhouse import ClickHouse

# The grouping expressions are fixed here; user-given values only ever reach ClickHouse as parameters.
SPEND_BY = {
    "model": "concat(provider, '/', model)",
    "provider": "provider",
    "tier": "tier",
    "customer": "customer",
    "feature": "feature",
    "day": "toString(toDate(finished_at))",
    "route": "route_source",
}

SPEND_COLUMNS = ["key", "requests", "ok", "failed", "in_tokens", "out_tokens", "cost", "top_tier_cost"]

_SPEND_SQL = """
SELECT {key} AS key,
       count() AS requests,
       countIf(status = 'ok') AS ok,
       countIf(status != 'ok') AS failed,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(cost) AS cost,
       sum(counterfactual_cost) AS all_top_tier_cost
FROM {{db}}.outcomes FINAL
WHERE ({{batch:String}} = '' OR batch = {{batch:String}})
GROUP BY key
ORDER BY cost DESC, key
"""


class SpendReport:
    def __init__(self, clickhouse: ClickHouse) -> None:
        self._ch = clickhouse

    def by(self, dimension: str, batch: str = "") -> list[tuple[Any, ...]]:
        if dimension not in SPEND_BY:
            raise ValueError(f"--by: '{dimension}' is not one of {', '.join(SPEND_BY)}")
        sql = _SPEND_SQL.format(key=SPEND_BY[dimension])  # a fixed expression from SPEND_BY
        rows = self._ch.query(sql, {"batch": batch})
        return [
            (str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), Decimal(r[6]), Decimal(r[7]))
            for r in rows
        ]

    def simulated_rows(self, batch: str = "") -> int:
        rows = self._ch.query(
            "SELECT countIf(simulated) FROM {db}.outcomes FINAL WHERE ({batch:String} = '' OR batch = {batch:String})",
            {"batch": batch},
        )
        return int(rows[0][0])


def with_total(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    if not rows:
        return rows
    total = ["TOTAL"] + [sum(r[i] for r in rows) for i in range(1, len(rows[0]))]
    return [*rows, tuple(total)]
