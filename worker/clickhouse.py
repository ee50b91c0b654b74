"""ClickHouse: the client (a server over HTTP, or chdb in-process), versioned migrations, inserts.

Tables: `outcomes` (one row per provider call), `outcomes_daily` (a materialized view's daily
rollup of it, which the reports read), `customers` (plan, revenue, budget) and `scores` (quality
scores on jobs: escalations, shadow comparisons, feedback; the loop's labelled examples).

Duplicates are handled three times over: the outcomes table is a ReplacingMergeTree keyed on the
event id; each sink batch carries an insert deduplication token, so a batch re-sent after a crash
is dropped at insert time (in the rollup too: deduplicate_blocks_in_dependent_materialized_views);
and the sink drops events of a replayed or claimed batch that are already stored (`stored_event_ids`),
since a rollup, unlike a ReplacingMergeTree, cannot forget a row it counted.

On a cluster (`cluster`, from CLICKHOUSE_CLUSTER) the same MIGRATIONS run rewritten statement by
statement (`cluster_statements`): each table is `<table>_local`, a Replicated*MergeTree created ON
CLUSTER, under a Distributed table of the plain name, so every query and report reads as on one
node; the view runs on each shard's local tables; writes go through the Distributed tables and wait
for the shards. chdb can run neither Replicated engines (no Keeper) nor ON CLUSTER, so the tests
check the generated text and run its Distributed layer over plain local tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from ladder.messages import Outcome, Score
from policies.customers import Customer

if TYPE_CHECKING:
    from ladder.settings import Settings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # as remote_servers names it

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

# Fixed column names only: nothing here comes from a user. The view's query as version 2 made it
# (kept as it was: a fresh database runs every version in turn), then as it is now.
_ROLLUP_SELECT_V2 = f"""
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
# The batch lane's rows are summed apart (their jobs, cost, and the same tokens at the synchronous
# price); their latency is a batch's turnaround, hours, so the latency quantiles leave them out.
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
           quantilesTDigestStateIf(0.5, 0.95, 0.99)(latency_ms, lane != 'batch') AS latency_ms,
           countIf(lane = 'batch') AS batch_calls,
           countIf(final AND lane = 'batch') AS batch_jobs,
           sumIf(o.cost, lane = 'batch') AS batch_cost,
           sumIf(o.sync_cost, lane = 'batch') AS batch_sync_cost
    FROM {{db}}.outcomes AS o{{final}}
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
        + _ROLLUP_SELECT_V2.replace("{final}", ""),
        "INSERT INTO {db}.outcomes_daily " + _ROLLUP_SELECT_V2.replace("{final}", " FINAL"),
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
    (
        # The batch lane: each row's lane, and its tokens at the synchronous price; the rollup sums
        # the batch rows apart. Rollup rows written before this have no batch rows (their sums: 0),
        # so the view is replaced without a backfill. A sink inserting between the two view
        # statements would miss the rollup: upgrade with the sinks stopped (deploy/README.md).
        "ALTER TABLE {db}.outcomes ADD COLUMN IF NOT EXISTS lane LowCardinality(String) DEFAULT 'sync'",
        "ALTER TABLE {db}.outcomes ADD COLUMN IF NOT EXISTS sync_cost Decimal(38, 12) DEFAULT 0",
        "ALTER TABLE {db}.outcomes_daily ADD COLUMN IF NOT EXISTS batch_calls SimpleAggregateFunction(sum, UInt64)",
        "ALTER TABLE {db}.outcomes_daily ADD COLUMN IF NOT EXISTS batch_jobs SimpleAggregateFunction(sum, UInt64)",
        "ALTER TABLE {db}.outcomes_daily ADD COLUMN IF NOT EXISTS batch_cost "
        "SimpleAggregateFunction(sum, Decimal(38, 12))",
        "ALTER TABLE {db}.outcomes_daily ADD COLUMN IF NOT EXISTS batch_sync_cost "
        "SimpleAggregateFunction(sum, Decimal(38, 12))",
        "DROP VIEW IF EXISTS {db}.outcomes_daily_mv",
        "CREATE MATERIALIZED VIEW {db}.outcomes_daily_mv TO {db}.outcomes_daily AS "
        + _ROLLUP_SELECT.replace("{final}", ""),
    ),
]

# ---- the same schema on a replicated cluster --------------------------------------------------------

# How each table's rows are spread over the shards. A job's rows stay together, so every copy of an
# event or a score lands on one shard: FINAL and the replacing merges work shard by shard, and a
# re-sent batch splits into the same per-shard blocks. The rollup and customers are only read summed
# or whole; their keys place what is written through their Distributed tables (backfill, a load).
SHARDING_KEYS = {
    "outcomes": "cityHash64(job_id)",
    "outcomes_daily": "cityHash64(customer)",
    "customers": "cityHash64(customer)",
    "scores": "cityHash64(job_id)",
}

_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+) \(")
_ENGINE = re.compile(r"ENGINE = (\w*?)MergeTree(?:\(([^)]*)\))?")
_NON_REPLICATED_WINDOW = re.compile(r"\s*SETTINGS non_replicated_deduplication_window = \d+")
_ALTER = re.compile(r"ALTER TABLE \{db\}\.(\w+) (ADD (?:COLUMN|INDEX) .*)", re.DOTALL)
_CREATE_VIEW = re.compile(r"CREATE MATERIALIZED VIEW \{db\}\.(\w+) (TO .*)", re.DOTALL)
_SHARDED_NAME = re.compile(r"\{db\}\.(" + "|".join(SHARDING_KEYS) + r")\b")


def on_cluster(cluster: str) -> str:
    return f"ON CLUSTER '{cluster}'"


def zookeeper_path(table: str) -> str:
    """Where a shard's replicas of a table meet in Keeper; {shard} is each server's macro."""
    return f"/clickhouse/tables/{{shard}}/{{db}}/{table}"


def cluster_migrations(cluster: str) -> list[tuple[str, ...]]:
    """MIGRATIONS as a cluster runs them: the same versions, each statement rewritten."""
    return [tuple(out for s in version for out in cluster_statements(s, cluster)) for version in MIGRATIONS]


def cluster_statements(statement: str, cluster: str) -> list[str]:
    """One single-node migration statement as a cluster runs it (`{db}` left for `migrate`). A
    statement of a kind not known here is an error, so a new migration cannot skip the cluster."""
    s, on = statement.strip(), on_cluster(cluster)
    if m := _CREATE_TABLE.match(s):
        return _cluster_tables(s, m[1], cluster)
    if m := _ALTER.match(s):
        table, change = m[1], m[2]
        local = f"ALTER TABLE {{db}}.{table}_local {on} {change}"
        # A Distributed table keeps its own list of columns, so a new column is added there too; an
        # index belongs with the data only.
        return [local] if change.startswith("ADD INDEX") else [local, f"ALTER TABLE {{db}}.{table} {on} {change}"]
    if s.startswith(("DROP VIEW IF EXISTS {db}.", "TRUNCATE TABLE IF EXISTS {db}.")):
        return [f"{_local_names(s)} {on}"]
    if m := _CREATE_VIEW.match(s):
        # Each shard's view reads what is inserted into its own outcomes_local and writes its own
        # rollup rows; a report sums them over the shards through the Distributed outcomes_daily.
        return [f"CREATE MATERIALIZED VIEW {{db}}.{m[1]} {on} {_local_names(m[2])}"]
    if s.startswith("INSERT INTO {db}."):
        # INSERT has no ON CLUSTER: it reads and writes the Distributed tables, waiting for the
        # shards (insert_distributed_sync, a session setting on a cluster). The backfill's rows may
        # land on any shard: the rollup is only ever read summed.
        return [s]
    raise ValueError(f"no cluster form for this migration statement: {s[:80]}")


def _cluster_tables(statement: str, table: str, cluster: str) -> list[str]:
    """The table as `<table>_local` on every node, replicated within its shard, and a Distributed
    `<table>` over them. Replicated tables deduplicate inserts by default (block ids kept in Keeper,
    replicated_deduplication_window), so the non-replicated window the single node needs goes."""
    on = on_cluster(cluster)

    def replicated(m: re.Match[str]) -> str:
        args = [f"'{zookeeper_path(table)}'", "'{replica}'", *([m[2]] if m[2] else [])]
        return f"ENGINE = Replicated{m[1]}MergeTree({', '.join(args)})"

    local = _ENGINE.sub(replicated, _NON_REPLICATED_WINDOW.sub("", statement), count=1)
    local = local.replace(f"{{db}}.{table} (", f"{{db}}.{table}_local {on} (", 1)
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{table} {on} AS {{db}}.{table}_local "
        f"ENGINE = Distributed('{cluster}', '{{db}}', '{table}_local', {SHARDING_KEYS[table]})"
    )
    return [local, distributed]


def _local_names(sql: str) -> str:
    return _SHARDED_NAME.sub(r"{db}.\1_local", sql)


def bootstrap_statements(cluster: str = "") -> list[str]:
    """The database and the migrations' own record, before any version runs."""
    columns = "(version UInt32, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
    if not cluster:
        return [
            "CREATE DATABASE IF NOT EXISTS {db}",
            f"CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations {columns} ENGINE = MergeTree ORDER BY version",
        ]
    on = on_cluster(cluster)
    # Replicated to every node of every shard (no {shard} in the path, so the replica name carries
    # it): whichever node the runner reaches reads the versions applied, and a version's ON CLUSTER
    # statements run once for the whole cluster. A local read, so no Distributed table over it.
    return [
        f"CREATE DATABASE IF NOT EXISTS {{db}} {on}",
        f"CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations {on} {columns} "
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{db}/schema_migrations', '{shard}-{replica}') "
        "ORDER BY version",
    ]


def customers_swap(cluster: str, load_id: str) -> tuple[list[str], list[str]]:
    """The statements before and after a load writes `{db}.customers_loading`: the new table takes
    the place of the old one in one EXCHANGE, so a report never sees customers half loaded.

    On a cluster the EXCHANGE swaps the local tables, ON CLUSTER; the Distributed `customers` reads
    `customers_local` by name, so it reads the new rows from then on. Each node swaps atomically, the
    nodes a moment apart. A replicated table's Keeper path stays with its data when swapped, so each
    load's table gets a path of its own, and the old table is dropped SYNC, its Keeper path with it.
    """
    if not cluster:
        before = [
            "DROP TABLE IF EXISTS {db}.customers_loading",
            "CREATE TABLE {db}.customers_loading AS {db}.customers",
        ]
        return before, [
            "EXCHANGE TABLES {db}.customers AND {db}.customers_loading",
            "DROP TABLE {db}.customers_loading",
        ]
    on = on_cluster(cluster)
    drop = [
        f"DROP TABLE IF EXISTS {{db}}.customers_loading {on} SYNC",
        f"DROP TABLE IF EXISTS {{db}}.customers_loading_local {on} SYNC",
    ]
    before = [
        *drop,
        # The sort key of migration 3, said again rather than left for AS to copy beside a new engine.
        f"CREATE TABLE {{db}}.customers_loading_local {on} AS {{db}}.customers_local "
        f"ENGINE = ReplicatedMergeTree('{zookeeper_path(f'customers_{load_id}')}', '{{replica}}') ORDER BY customer",
        f"CREATE TABLE {{db}}.customers_loading {on} AS {{db}}.customers_loading_local "
        f"ENGINE = Distributed('{cluster}', '{{db}}', 'customers_loading_local', {SHARDING_KEYS['customers']})",
    ]
    return before, [f"EXCHANGE TABLES {{db}}.customers_local AND {{db}}.customers_loading_local {on}", *drop]


# On a cluster, every call carries these. insert_distributed_sync: an insert into a Distributed table
# returns once each shard has stored its part (see insert_outcomes). in_order without the local
# replica first: whichever node the client reaches, an insert and the stored-events check after it
# pick the same replica of each shard (the first healthy one in remote_servers), so the check does
# not ask a replica that has not fetched the part yet. distributed_product_mode: reports filter one
# Distributed table by a subquery on another (job_id IN (SELECT ... scores)), which is refused by
# default; 'global' runs the subquery once and sends its result to the shards.
_CLUSTER_SETTINGS: dict[str, Any] = {
    "insert_distributed_sync": 1,
    "load_balancing": "in_order",
    "prefer_localhost_replica": 0,
    "distributed_product_mode": "global",
}

_DECIMAL = pa.decimal128(38, 12)
_PICO = Decimal("1e-12")


def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    if name in ("cost", "counterfactual_cost", "middle_tier_cost", "sync_cost"):
        # Decimal(38, 12) keeps 12 places and drops the rest, as ClickHouse does when it parses text.
        return pa.array([v.quantize(_PICO, ROUND_DOWN) for v in values], _DECIMAL)
    if name in ("started_at", "finished_at", "at"):
        return pa.array(values, pa.float64())  # unix seconds; ClickHouse keeps the milliseconds
    if name in ("route_source", "status", "source", "lane"):
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
    def __init__(self, url: str, database: str, cluster: str = "") -> None:
        if not _IDENT.match(database):
            raise ValueError(f"CLICKHOUSE_DATABASE: '{database}' is not a plain identifier")
        if cluster and not _CLUSTER_NAME.match(cluster):
            raise ValueError(f"CLICKHOUSE_CLUSTER: '{cluster}' is not a cluster name (letters, digits, _ . -)")
        self.database = database
        self.cluster = cluster  # "": one node
        self.migrations = cluster_migrations(cluster) if cluster else MIGRATIONS
        self._settings = dict(_CLUSTER_SETTINGS) if cluster else {}
        self._lock = threading.Lock()  # a chdb session is not safe for concurrent queries
        self._url = url
        self._client: Client | None = None
        with contextlib.suppress(ClickHouseError):
            self._client = _connect(url)

    @property
    def client(self) -> Client:
        """Connected at construction if it can be, else on the next call: a ClickHouse that is down
        (or a chdb folder another process holds) when a process starts is an error of each call
        until it is back, not of start-up; the sink waits it out (worker/sink.py)."""
        if self._client is None:
            self._client = _connect(self._url)
        return self._client

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouse:
        return cls(settings.clickhouse_url, settings.clickhouse_database, settings.clickhouse_cluster)

    def migrate(self, up_to: int | None = None) -> int:
        """Bring the schema to the newest version (or to `up_to`); returns the version."""
        db = self.database
        with self._lock:
            for statement in bootstrap_statements(self.cluster):
                self.client.command(statement.replace("{db}", db), settings=self._settings)
            versions = self.client.query(f"SELECT max(version) FROM {db}.schema_migrations")  # noqa: S608
            current = int(versions.result_rows[0][0] or 0)
            target = len(self.migrations) if up_to is None else up_to
            for version, statements in enumerate(self.migrations[:target], start=1):
                if version > current:
                    for statement in statements:
                        self.client.command(statement.replace("{db}", db), settings=self._settings)
                    self.client.insert(
                        f"{db}.schema_migrations", [(version,)], column_names=["version"], settings=self._settings
                    )
            return max(current, target)

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """One insert of the whole batch, as an Arrow table: ClickHouse reads Arrow columns several
        times faster than JSON or the native protocol built value by value in Python.

        On a cluster the Distributed `outcomes` splits the batch by job into one block per shard,
        each sent with this token. With insert_distributed_sync the insert returns once every shard
        stored its block, so the token reaches the shards' replicated tables and their views (whose
        deduplication, kept in Keeper, every replica shares), and an ack after it means what it says.
        A re-sent batch splits the same way, so each shard drops its block again. In the default
        background mode the node would queue the rows on its disk and send them later, perhaps merged
        with other batches' into one block: the token would no longer match a re-sent batch, and
        `stored_event_ids` would miss rows still queued, so the rollup could count a replay twice.
        """
        token = hashlib.sha256("\n".join(o.event_id for o in outcomes).encode()).hexdigest()
        table = _arrow_table(outcomes, OUTCOME_COLUMNS)
        with self._lock:
            self.client.insert_arrow(
                f"{self.database}.outcomes",
                table,
                # optimize_on_insert: the sink already made each batch's event ids unique and the
                # view's rows are grouped already, so merging on insert is work for nothing.
                # parallel_view_processing: the rollup is written beside the table, not after it.
                # deduplicate_blocks_in_dependent_materialized_views (chdb's default, not older
                # servers'): the rollup checks the token on its own, so a batch sent again after the
                # table stored it and the rollup did not (an insert that failed midway) fills the
                # rollup instead of being dropped whole with the table's duplicate.
                settings={
                    "insert_deduplication_token": token,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    "optimize_on_insert": 0,
                    "parallel_view_processing": 1,
                    **self._settings,
                },
            )

    def insert_scores(self, scores: Sequence[Score]) -> None:
        """Scores need no more than the table's own replacing: nothing is rolled up from them."""
        table = _arrow_table(scores, SCORE_COLUMNS)
        with self._lock:
            self.client.insert_arrow(f"{self.database}.scores", table, settings=self._settings)

    def stored_event_ids(self, outcomes: Sequence[Outcome]) -> set[str]:
        """Which of these events are stored already: a lookup by the table's sort key (day, customer,
        event id), so it reads a few granules, not the table. On a cluster it asks the replicas the
        inserts went to (see _CLUSTER_SETTINGS); one that failed in between leaves Keeper's block ids
        as the guard, which catch a batch re-sent whole but not one claimed in another make-up."""
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
        before, after = customers_swap(self.cluster, uuid.uuid4().hex)
        with self._lock:
            for statement in before:
                self.client.command(statement.replace("{db}", db), settings=self._settings)
            if rows:
                self.client.insert(
                    f"{db}.customers_loading", rows, column_names=list(CUSTOMER_COLUMNS), settings=self._settings
                )
            for statement in after:
                self.client.command(statement.replace("{db}", db), settings=self._settings)

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
            result = self.client.query(
                sql.replace("{db}", self.database), parameters=parameters or {}, settings=self._settings
            )
        return [tuple(r) for r in result.result_rows]

    def query_columns(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            result = self.client.query(
                sql.replace("{db}", self.database), parameters=parameters or {}, settings=self._settings
            )
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
