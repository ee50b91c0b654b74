"""ClickHouse: the client (a server over HTTP, or chdb in-process), versioned migrations, inserts.

Duplicates are handled twice over: the outcomes table is a ReplacingMergeTree keyed on the event
id (reports read it with FINAL), and each sink batch carries an insert deduplication token, so a
batch re-sent after a crash is dropped at insert time.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ladder.messages import Outcome

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

OUTCOME_COLUMNS = (
    "event_id", "job_id", "batch", "customer", "feature", "task", "route_source", "intended_tier",
    "tier", "provider", "model", "attempt", "status", "error_class", "error_message", "input_tokens",
    "output_tokens", "cost", "counterfactual_cost", "latency_ms", "started_at", "finished_at",
    "strategy", "simulated", "final",
)  # fmt: skip

MIGRATIONS: list[str] = [
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
]

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

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns the version."""
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
            for version, ddl in enumerate(MIGRATIONS, start=1):
                if version > current:
                    self.client.command(ddl.format(db=db))
                    self.client.insert(f"{db}.schema_migrations", [(version,)], column_names=["version"])
            return len(MIGRATIONS)

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        rows = [_row(o) for o in outcomes]
        token = hashlib.sha256("\n".join(o.event_id for o in outcomes).encode()).hexdigest()
        with self._lock:
            self.client.insert(
                f"{self.database}.outcomes",
                rows,
                column_names=list(OUTCOME_COLUMNS),
                settings={"insert_deduplication_token": token},
            )

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


def _row(o: Outcome) -> tuple[Any, ...]:
    return (
        o.event_id, o.job_id, o.batch, o.customer, o.feature, o.task, o.route_source.value,
        o.intended_tier, o.tier, o.provider, o.model, o.attempt, o.status.value, o.error_class,
        o.error_message, o.input_tokens, o.output_tokens, o.cost, o.counterfactual_cost,
        o.latency_ms, _utc(o.started_at), _utc(o.finished_at), o.strategy, o.simulated, o.final,
    )  # fmt: skip
