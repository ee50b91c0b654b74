"""ClickHouse: the client (a server over HTTP, or chdb in-process), versioned migrations, inserts.

Tables: `outcomes` (one row per provider call), `outcomes_daily` (a materialized view's daily
rollup of it, which the reports read), `customers` (plan, revenue, budget) and `scores` (quality
scores on jobs: escalations, shadow comparisons, feedback; the loop's labelled examples).

Duplicates are handled three times over: the outcomes table is a ReplacingMergeTree keyed on the
event id; each sink batch carries an insert deduplication token, so a batch re-sent after a crash
is dropped at insert time (in the rollup too: deduplicate_blocks_in_dependent_materialized_views);
and the sink drops events of a replayed or claimed batch that are already stored (`stored_event_ids`),
since a rollup, unlike a ReplacingMergeTree, cannot forget a row it counted.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from ladder.messages import Outcome, Score
from policies.customers import Customer

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The event's fields are the table's columns, by name.
OUTCOME_COLUMNS: tuple[str, ...] = Outcome.__struct_fields__
SCORE_COLUMNS: tuple[str, ...] = Score.__struct_fields__

# The rollup's dimensions: every report groups and filters on these, and on nothing finer. Its
# size is what a report reads: one row per day and combination seen, so what only counts (whether a
# row settled its job, whether it was simulated) is a summed column, not a dimension.
ROLLUP_KEYS = (
    "day", "customer", "feature", "batch", "strategy", "task", "route_source", "intended_tier", "tier",
    "provider", "model", "status", "error_class",
)  # fmt: skip

# Fixed column names only: nothing here comes from a user.
_ROLLUP_SELECT = f"""
    SELECT toDate(finished_at) AS day, {", ".join(ROLLUP_KEYS[1:])},
           count() AS calls,
           countIf(final) AS jobs,
           countIf(simulated) AS simulated_calls,
           sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens,
           sum(cost) AS cost,
           sumIf(counterfactual_cost, final) AS top_tier_cost,
           sumIf(middle_tier_cost, final) AS middle_tier_cost,
           quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms
    FROM {{db}}.outcomes{{final}}
    GROUP BY {", ".join(ROLLUP_KEYS)}
"""  # noqa: S608

# Each version is a list of statements run in order; `{db}` is the database. A version is recorded
# once all its statements ran, so each statement must be safe to run again after a crash midway.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
    CREATE TABLE IF NOT EXISTS {db}.outcomes (
        event_id String,
        job_id String,
        batch LowCardinality(String),
        customer LowCardinality(String),
        feature LowCardinality(String),
        task LowCardinality(String),
        route_source LowCardinality(String),
        intended_tier LowCardinality(String),
        tier LowCardinality(String),
        provider LowCardinality(String),
        model LowCardinality(String),
        attempt UInt16,
        status LowCardinality(String),
        error_class LowCardinality(String),
        error_message String,
        input_tokens UInt32,
        output_tokens UInt32,
        cost Decimal(38, 12),
        counterfactual_cost Decimal(38, 12),
        latency_ms Float64,
        started_at DateTime64(3, 'UTC'),
        finished_at DateTime64(3, 'UTC'),
        strategy LowCardinality(String),
        simulated Bool,
        final Bool,
        inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(finished_at)
    ORDER BY (toDate(finished_at), customer, event_id)
    SETTINGS non_replicated_deduplication_window = 10000
    """,
    ),
    (
        # What the same tokens would have cost on the middle tier (the savings report's second line).
        "ALTER TABLE {db}.outcomes ADD COLUMN IF NOT EXISTS middle_tier_cost Decimal(38, 12) DEFAULT 0",
        f"""
        CREATE TABLE IF NOT EXISTS {{db}}.outcomes_daily (
            day Date,
            customer LowCardinality(String),
            feature LowCardinality(String),
            batch LowCardinality(String),
            strategy LowCardinality(String),
            task LowCardinality(String),
            route_source LowCardinality(String),
            intended_tier LowCardinality(String),
            tier LowCardinality(String),
            provider LowCardinality(String),
            model LowCardinality(String),
            status LowCardinality(String),
            error_class LowCardinality(String),
            calls SimpleAggregateFunction(sum, UInt64),
            jobs SimpleAggregateFunction(sum, UInt64),
            simulated_calls SimpleAggregateFunction(sum, UInt64),
            input_tokens SimpleAggregateFunction(sum, UInt64),
            output_tokens SimpleAggregateFunction(sum, UInt64),
            cost SimpleAggregateFunction(sum, Decimal(38, 12)),
            top_tier_cost SimpleAggregateFunction(sum, Decimal(38, 12)),
            middle_tier_cost SimpleAggregateFunction(sum, Decimal(38, 12)),
            latency_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)
        )
        ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM(day)
        ORDER BY ({", ".join(ROLLUP_KEYS)})
        SETTINGS non_replicated_deduplication_window = 10000
        """,
        # Rebuilt from scratch if a crash interrupted this version: view dropped, rollup emptied,
        # view created, then the rows stored before it backfilled.
        "DROP VIEW IF EXISTS {db}.outcomes_daily_mv",
        "TRUNCATE TABLE IF EXISTS {db}.outcomes_daily",
        "CREATE MATERIALIZED VIEW {db}.outcomes_daily_mv TO {db}.outcomes_daily AS "
        + _ROLLUP_SELECT.replace("{final}", ""),
        "INSERT INTO {db}.outcomes_daily " + _ROLLUP_SELECT.replace("{final}", " FINAL"),
    ),
    (
        """
        CREATE TABLE IF NOT EXISTS {db}.customers (
            customer String,
            plan LowCardinality(String),
            revenue_per_month Decimal(38, 12),
            revenue_per_request Decimal(38, 12),
            monthly_budget Nullable(Decimal(38, 12)),
            at_limit LowCardinality(String),
            loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = MergeTree
        ORDER BY customer
        """,
    ),
    (
        # Experiments: the arm of every row; the experiment report reads one experiment's rows.
        "ALTER TABLE {db}.outcomes ADD COLUMN IF NOT EXISTS experiment LowCardinality(String) DEFAULT ''",
        "ALTER TABLE {db}.outcomes ADD COLUMN IF NOT EXISTS arm LowCardinality(String) DEFAULT ''",
        "ALTER TABLE {db}.outcomes ADD INDEX IF NOT EXISTS experiment_idx experiment TYPE set(64) GRANULARITY 4",
        # Few rows (a sample, escalations, feedback) read whole: no partitions, so a later feedback
        # on a job replaces the earlier one whatever the month (ReplacingMergeTree keeps the latest `at`).
        """
        CREATE TABLE IF NOT EXISTS {db}.scores (
            event_id String,
            job_id String,
            batch LowCardinality(String),
            customer LowCardinality(String),
            feature LowCardinality(String),
            task LowCardinality(String),
            strategy LowCardinality(String),
            experiment LowCardinality(String),
            arm LowCardinality(String),
            tier LowCardinality(String),
            source LowCardinality(String),
            score Float64,
            routing Int8,
            label_tier LowCardinality(String),
            method LowCardinality(String),
            detail String,
            text String,
            correction String,
            at DateTime64(3, 'UTC'),
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = ReplacingMergeTree(at)
        ORDER BY (job_id, event_id)
        """,
    ),
]

_DECIMAL = pa.decimal128(38, 12)
_PICO = Decimal("1e-12")


def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    if name in ("cost", "counterfactual_cost", "middle_tier_cost"):
        # Decimal(38, 12) keeps 12 places and drops the rest, as ClickHouse does when it parses text.
        return pa.array([v.quantize(_PICO, ROUND_DOWN) for v in values], _DECIMAL)
    if name in ("started_at", "finished_at", "at"):
        return pa.array(values, pa.float64())  # unix seconds; ClickHouse keeps the milliseconds
    if name in ("route_source", "status", "source"):
        return pa.array([v.value for v in values], pa.string())
    if name == "routing":
        return pa.array([int(v) for v in values], pa.int8())
    return pa.array(values)


def _arrow_table(rows: Sequence[Outcome] | Sequence[Score], columns: tuple[str, ...]) -> pa.Table:
    arrays = [_arrow_column(name, [getattr(r, name) for r in rows]) for name in columns]
    return pa.Table.from_arrays(arrays, names=list(columns))


CUSTOMER_COLUMNS = ("customer", "plan", "revenue_per_month", "revenue_per_request", "monthly_budget", "at_limit")

# chdb can open one data folder per process, once: every caller in a process shares one client.
_chdb_clients: dict[str, Client] = {}
_chdb_lock = threading.Lock()


class ClickHouse:
    def __init__(self, url: str, database: str) -> None:
        if not _IDENT.match(database):
            raise ValueError(f"CLICKHOUSE_DATABASE: '{database}' is not a plain identifier")
        self.database = database
        self._lock = threading.Lock()  # a chdb session is not safe for concurrent queries
        self.client = _connect(url)

    def migrate(self, up_to: int | None = None) -> int:
        """Bring the schema to the newest version (or to `up_to`); returns the version."""
        db = self.database
        with self._lock:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
                "(version UInt32, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                "ENGINE = MergeTree ORDER BY version"
            )
            versions = self.client.query(f"SELECT max(version) FROM {db}.schema_migrations")  # noqa: S608
            current = int(versions.result_rows[0][0] or 0)
            target = len(MIGRATIONS) if up_to is None else up_to
            for version, statements in enumerate(MIGRATIONS[:target], start=1):
                if version > current:
                    for statement in statements:
                        self.client.command(statement.replace("{db}", db))
                    self.client.insert(f"{db}.schema_migrations", [(version,)], column_names=["version"])
            return max(current, target)

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """One insert of the whole batch, as an Arrow table: ClickHouse reads Arrow columns several
        times faster than JSON or the native protocol built value by value in Python."""
        token = hashlib.sha256("\n".join(o.event_id for o in outcomes).encode()).hexdigest()
        table = _arrow_table(outcomes, OUTCOME_COLUMNS)
        with self._lock:
            self.client.insert_arrow(
                f"{self.database}.outcomes",
                table,
                # optimize_on_insert: the sink already made each batch's event ids unique and the
                # view's rows are grouped already, so merging on insert is work for nothing.
                # parallel_view_processing: the rollup is written beside the table, not after it.
                settings={
                    "insert_deduplication_token": token,
                    "optimize_on_insert": 0,
                    "parallel_view_processing": 1,
                },
            )

    def insert_scores(self, scores: Sequence[Score]) -> None:
        """Scores need no more than the table's own replacing: nothing is rolled up from them."""
        table = _arrow_table(scores, SCORE_COLUMNS)
        with self._lock:
            self.client.insert_arrow(f"{self.database}.scores", table)

    def stored_event_ids(self, outcomes: Sequence[Outcome]) -> set[str]:
        """Which of these events are stored already: a lookup by the table's sort key (day, customer,
        event id), so it reads a few granules, not the table."""
        days = sorted({_utc(o.finished_at).date() for o in outcomes})
        rows = self.query(
            "SELECT DISTINCT event_id FROM {db}.outcomes WHERE toDate(finished_at) IN {days:Array(Date)} "
            "AND customer IN {customers:Array(String)} AND event_id IN {ids:Array(String)}",
            {"days": days, "customers": sorted({o.customer for o in outcomes}), "ids": [o.event_id for o in outcomes]},
        )
        return {r[0] for r in rows}

    def replace_customers(self, customers: Sequence[Customer]) -> None:
        """The customers table becomes exactly these, in one step (a report never sees it half loaded)."""
        db = self.database
        rows = [
            (c.id, c.plan, c.revenue_per_month, c.revenue_per_request, c.monthly_budget, c.at_limit or "")
            for c in customers
        ]
        with self._lock:
            self.client.command(f"DROP TABLE IF EXISTS {db}.customers_loading")
            self.client.command(f"CREATE TABLE {db}.customers_loading AS {db}.customers")
            if rows:
                self.client.insert(f"{db}.customers_loading", rows, column_names=list(CUSTOMER_COLUMNS))
            self.client.command(f"EXCHANGE TABLES {db}.customers AND {db}.customers_loading")
            self.client.command(f"DROP TABLE {db}.customers_loading")

    def month_spend(self, month: date, shadow: bool = False) -> dict[str, Decimal]:
        """Cost per customer in the calendar month that starts on `month` (classifier calls included;
        shadow evaluation's calls only with `shadow`, as they are billed only with shadow.bill_customer)."""
        rows = self.query(
            "SELECT customer, sum(cost) FROM {db}.outcomes_daily "
            "WHERE day >= {start:Date} AND day < addMonths({start:Date}, 1) "
            "AND ({shadow:Bool} OR route_source != 'shadow') GROUP BY customer",
            {"start": month.replace(day=1), "shadow": shadow},
        )
        return {str(r[0]): Decimal(r[1]) for r in rows}

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            result = self.client.query(sql.replace("{db}", self.database), parameters=parameters or {})
        return [tuple(r) for r in result.result_rows]

    def query_columns(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            result = self.client.query(sql.replace("{db}", self.database), parameters=parameters or {})
        return list(result.column_names), [tuple(r) for r in result.result_rows]


def _connect(url: str) -> Client:
    if url.startswith("chdb:"):
        with _chdb_lock:
            if url not in _chdb_clients:
                _chdb_clients[url] = clickhouse_connect.get_client(dsn=url)
            return _chdb_clients[url]
    return clickhouse_connect.get_client(dsn=url)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
