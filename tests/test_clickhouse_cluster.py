"""The replicated-cluster schema (CLICKHOUSE_CLUSTER): generated from the single-node MIGRATIONS.

chdb runs neither Replicated engines (a replica without a running Keeper session stays read-only
and an insert waits forever) nor ON CLUSTER ("Replicated DDL queries are disabled"). So the generated
DDL is checked as text and through ClickHouse's own parser (formatQuery), and its Distributed layer
runs for real in a child process whose chdb has a one-shard cluster in remote_servers: the same
statements with ON CLUSTER left out and each Replicated engine turned into its plain one. What only a
real cluster shows (Keeper, several shards and replicas, the DDL queue) is not run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ladder.messages import Outcome, RouteSource, Routing, Score, ScoreSource, Status
from ladder.report import Filters, Reports
from ladder.report_scores import routing_accuracy, scores_by_route
from ladder.settings import Settings
from policies.config import parse_policies
from policies.customers import Customer
from tests.helpers import THREE_TIERS
from worker.clickhouse import (
    MIGRATIONS,
    SHARDING_KEYS,
    ClickHouse,
    bootstrap_statements,
    cluster_migrations,
    cluster_statements,
    customers_swap,
)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "ladder"
ON = f"ON CLUSTER '{CLUSTER}'"
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+) ")
_ENGINE = re.compile(r"ENGINE = (\w+)(?:\(([^)]*)\))?")


def _creates(statements: tuple[str, ...]) -> dict[str, str]:
    return {m[1]: s.strip() for s in statements if (m := _CREATE.match(s.strip()))}


def _clause(statement: str, name: str) -> str:
    m = re.search(rf"^\s*{name} (.+)$", statement, re.MULTILINE)
    return m[1].strip() if m else ""


def _columns(statement: str) -> str:
    """The column list: from the first "(" to the ")" before ENGINE."""
    return statement[statement.index("(") : statement.rindex(")", 0, statement.index("ENGINE"))]


def _versions() -> Iterator[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    clustered = cluster_migrations(CLUSTER)
    assert len(clustered) == len(MIGRATIONS)
    yield from ((v, single, clustered[v - 1]) for v, single in enumerate(MIGRATIONS, start=1))


def _all_cluster_statements() -> list[str]:
    before, after = customers_swap(CLUSTER, "0123abcd")
    return [*bootstrap_statements(CLUSTER), *(s for v in cluster_migrations(CLUSTER) for s in v), *before, *after]


# ---- the generated text -------------------------------------------------------------------------


def test_every_table_is_a_replicated_local_table_under_a_distributed_one_of_its_name() -> None:
    created = set()
    for version, single, clustered in _versions():
        tables = _creates(clustered)
        for table, statement in _creates(single).items():
            created.add(table)
            local, distributed = tables[f"{table}_local"], tables[table]
            family, args = _ENGINE.search(statement).groups()  # type: ignore[union-attr]
            expected = [f"'/clickhouse/tables/{{shard}}/{{db}}/{table}'", "'{replica}'", *([args] if args else [])]
            assert _ENGINE.search(local).groups() == (f"Replicated{family}", ", ".join(expected)), version  # type: ignore[union-attr]
            assert local.startswith(f"CREATE TABLE IF NOT EXISTS {{db}}.{table}_local {ON} (")
            assert distributed == (
                f"CREATE TABLE IF NOT EXISTS {{db}}.{table} {ON} AS {{db}}.{table}_local "
                f"ENGINE = Distributed('{CLUSTER}', '{{db}}', '{table}_local', {SHARDING_KEYS[table]})"
            )
            # the local table first: the Distributed one copies its columns
            assert clustered.index(local) < clustered.index(distributed)
    assert created == set(SHARDING_KEYS) == {"outcomes", "outcomes_daily", "customers", "scores"}
    # A job's rows on one shard: every copy of an event or a score replaces another on its own shard.
    assert SHARDING_KEYS["outcomes"] == SHARDING_KEYS["scores"] == "cityHash64(job_id)"


def test_a_cluster_table_has_the_single_node_columns_sort_key_and_partitions() -> None:
    for _, single, clustered in _versions():
        tables = _creates(clustered)
        for table, statement in _creates(single).items():
            local = tables[f"{table}_local"]
            assert _columns(local) == _columns(statement)
            for clause in ("PARTITION BY", "ORDER BY"):
                assert _clause(local, clause) == _clause(statement, clause)
            # replicated tables deduplicate by default, with block ids kept in Keeper
            assert "non_replicated_deduplication_window" not in local


def test_every_ddl_statement_runs_on_the_cluster() -> None:
    named = re.compile(
        r"^(CREATE TABLE( IF NOT EXISTS)?|CREATE MATERIALIZED VIEW|ALTER TABLE|DROP (TABLE|VIEW) IF EXISTS|"
        rf"TRUNCATE TABLE IF EXISTS|CREATE DATABASE IF NOT EXISTS) \{{db\}}(\.\w+)? {re.escape(ON)}( |$)"
    )
    for statement in _all_cluster_statements():
        if statement.startswith("INSERT"):
            assert ON not in statement  # INSERT has no ON CLUSTER: it goes through the Distributed tables
        elif statement.startswith("EXCHANGE"):
            assert statement.endswith(ON)
        else:
            assert named.match(statement), statement[:100]


def test_alters_change_local_and_distributed_columns_and_indexes_only_the_local_table() -> None:
    for _, single, clustered in _versions():
        for statement in single:
            if not (m := re.match(r"ALTER TABLE \{db\}\.(\w+) (.*)", statement.strip(), re.DOTALL)):
                continue
            table, change = m[1], m[2]
            local = f"ALTER TABLE {{db}}.{table}_local {ON} {change}"
            distributed = f"ALTER TABLE {{db}}.{table} {ON} {change}"
            assert local in clustered
            assert (distributed in clustered) == change.startswith("ADD COLUMN"), change


def test_the_view_reads_and_writes_each_shards_local_tables() -> None:
    v2 = cluster_migrations(CLUSTER)[1]
    view = next(s for s in v2 if s.startswith("CREATE MATERIALIZED VIEW"))
    assert view.startswith(f"CREATE MATERIALIZED VIEW {{db}}.outcomes_daily_mv {ON} TO {{db}}.outcomes_daily_local AS")
    assert re.findall(r"\{db\}\.\w+", view) == [
        "{db}.outcomes_daily_mv",
        "{db}.outcomes_daily_local",
        "{db}.outcomes_local",
    ]
    assert f"DROP VIEW IF EXISTS {{db}}.outcomes_daily_mv {ON}" in v2
    assert f"TRUNCATE TABLE IF EXISTS {{db}}.outcomes_daily_local {ON}" in v2
    # the backfill reads and writes the Distributed tables, as a single node reads its own
    backfill = next(s for s in v2 if s.startswith("INSERT"))
    assert backfill == MIGRATIONS[1][-1].strip()
    assert re.findall(r"\{db\}\.\w+", backfill) == ["{db}.outcomes_daily", "{db}.outcomes"]


def test_a_statement_the_rewriting_does_not_know_is_refused() -> None:
    for unknown in ("RENAME TABLE {db}.outcomes TO {db}.old", "ALTER TABLE {db}.outcomes DROP COLUMN arm"):
        with pytest.raises(ValueError, match="no cluster form"):
            cluster_statements(unknown, CLUSTER)


def test_schema_migrations_is_replicated_to_every_node_of_every_shard() -> None:
    database, table = bootstrap_statements(CLUSTER)
    assert database == f"CREATE DATABASE IF NOT EXISTS {{db}} {ON}"
    assert table.startswith(f"CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations {ON} (version UInt32,")
    assert "ReplicatedMergeTree('/clickhouse/tables/{db}/schema_migrations', '{shard}-{replica}')" in table


def test_a_customers_load_swaps_the_local_tables_each_load_with_a_keeper_path_of_its_own() -> None:
    before, after = customers_swap(CLUSTER, "aaa")
    other, _ = customers_swap(CLUSTER, "bbb")
    create = next(s for s in before if s.startswith("CREATE TABLE {db}.customers_loading_local"))
    assert (
        "ReplicatedMergeTree('/clickhouse/tables/{shard}/{db}/customers_aaa', '{replica}') ORDER BY customer" in create
    )
    assert "customers_bbb" in next(s for s in other if "customers_loading_local" in s and "CREATE" in s)
    assert f"CREATE TABLE {{db}}.customers_loading {ON} AS {{db}}.customers_loading_local " in before[-1]
    assert after[0] == f"EXCHANGE TABLES {{db}}.customers_local AND {{db}}.customers_loading_local {ON}"
    # the old rows' table goes at once, with its Keeper path (an Atomic database would wait 8 minutes)
    assert all(s.endswith(f"{ON} SYNC") for s in after[1:]) and len(after) == 3


def test_one_node_runs_the_migrations_as_written(chdb_url: str) -> None:
    one = ClickHouse(chdb_url, "cluster_unused")
    assert one.cluster == "" and one.migrations is MIGRATIONS
    assert bootstrap_statements() == [
        "CREATE DATABASE IF NOT EXISTS {db}",
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
    ]
    assert customers_swap("", "x") == (
        ["DROP TABLE IF EXISTS {db}.customers_loading", "CREATE TABLE {db}.customers_loading AS {db}.customers"],
        ["EXCHANGE TABLES {db}.customers AND {db}.customers_loading", "DROP TABLE {db}.customers_loading"],
    )


# ---- through ClickHouse's parser ----------------------------------------------------------------


def _format(ch: ClickHouse, statement: str) -> str:
    rows = ch.query("SELECT formatQuery({q:String})", {"q": statement.replace("{db}", "ladder")})
    return str(rows[0][0])


def test_clickhouse_parses_every_generated_statement_and_reads_the_same_columns(chdb_url: str) -> None:
    ch = ClickHouse(chdb_url, "cluster_parse")
    for statement in _all_cluster_statements():
        _format(ch, statement)  # raises on a syntax error
    for _, single, clustered in _versions():
        tables = _creates(clustered)
        for table, statement in _creates(single).items():
            # the parser's own text of each column list, one column a line
            assert _columns(_format(ch, tables[f"{table}_local"])) == _columns(_format(ch, statement))


# ---- the setting ----------------------------------------------------------------------------------


def test_clickhouse_cluster_reaches_the_clickhouse_object_from_settings(chdb_url: str, tmp_path: Path) -> None:
    env = {"CLICKHOUSE_URL": chdb_url, "LADDER_HOME": str(tmp_path), "CLICKHOUSE_CLUSTER": f" {CLUSTER} "}
    settings = Settings.from_env(env=env)
    assert settings.clickhouse_cluster == CLUSTER
    ch = ClickHouse.from_settings(settings)
    assert ch.cluster == CLUSTER and ch.migrations == cluster_migrations(CLUSTER)
    one = ClickHouse.from_settings(Settings.from_env(env={**env, "CLICKHOUSE_CLUSTER": ""}))
    assert one.cluster == "" and one.migrations is MIGRATIONS
    with pytest.raises(ValueError, match="CLICKHOUSE_CLUSTER"):
        ClickHouse(chdb_url, "ladder", cluster="x'; DROP")


# ---- the Distributed layer, run in chdb on a one-shard cluster -------------------------------------

_ONE_SHARD = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><ladder><shard><internal_replication>true</internal_replication>
    <replica><host>localhost</host><port>9000</port></replica>
  </shard></ladder></remote_servers>
</clickhouse>
"""


class OneShardClient:
    """Passes the cluster's statements to a chdb that cannot run ON CLUSTER or Replicated engines:
    ON CLUSTER dropped, each Replicated engine turned into its plain one with the non-replicated
    deduplication window standing in for Keeper's, and the local replica allowed (nothing listens)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @staticmethod
    def sql(text: str) -> str:
        text = text.replace(f" {ON}", "")
        plain = re.sub(r"Replicated(\w*)MergeTree\('[^']*', '[^']*'(?:, ([^)]*))?\)", r"\1MergeTree(\2)", text)
        if plain != text:
            plain += " SETTINGS non_replicated_deduplication_window = 10000"
        return plain

    @staticmethod
    def settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**(settings or {}), "prefer_localhost_replica": 1} if settings else {}

    def command(self, cmd: str, settings: Mapping[str, Any] | None = None) -> Any:
        return self._client.command(self.sql(cmd), settings=self.settings(settings))

    def query(self, sql: str, parameters: Any = None, settings: Mapping[str, Any] | None = None) -> Any:
        return self._client.query(self.sql(sql), parameters=parameters, settings=self.settings(settings))

    def insert(self, table: str, data: Any, column_names: Any = None, settings: Mapping[str, Any] | None = None) -> Any:
        return self._client.insert(table, data, column_names=column_names, settings=self.settings(settings))

    def insert_arrow(self, table: str, arrow: Any, settings: Mapping[str, Any] | None = None) -> Any:
        return self._client.insert_arrow(table, arrow, settings=self.settings(settings))


def _at(day: int, hour: int) -> float:
    return datetime(2026, 11, day, hour, tzinfo=UTC).timestamp()


def _outcomes(n: int) -> list[Outcome]:
    tiers = ["cheap", "standard", "premium"]
    return [
        Outcome(event_id=f"e{i}", job_id=f"j{i // 2}", batch="b", customer=f"c{i % 3}", feature="faq", task="generation",
                route_source=RouteSource.RULE if i % 2 == 0 else RouteSource.ESCALATION, intended_tier="cheap",
                tier=tiers[i % 3], provider="openai", model=f"m{i % 3}", attempt=1 + i % 2,
                status=Status.OK if i % 2 else Status.ESCALATED, error_class="" if i % 2 else "uncertain",
                error_message="", input_tokens=100 + i, output_tokens=50, cost=Decimal(i + 1) / 1000,
                counterfactual_cost=Decimal("0.01"), middle_tier_cost=Decimal("0.004"), latency_ms=float(10 + i),
                started_at=_at(1 + i % 5, 12), finished_at=_at(1 + i % 5, 12), strategy="rules-v1",
                simulated=False, final=bool(i % 2))
        for i in range(n)
    ]  # fmt: skip


def _scores(outcomes: list[Outcome]) -> list[Score]:
    return [
        Score(event_id=f"s{o.event_id}", job_id=o.job_id, batch="b", customer=o.customer, feature="faq",
              task="generation", strategy="rules-v1", experiment="", arm="", tier=o.tier, source=ScoreSource.SHADOW,
              score=0.5, routing=Routing.RIGHT if n % 2 else Routing.WRONG, label_tier="", method="exact", detail="",
              text="", correction="", at=o.finished_at)
        for n, o in enumerate(outcomes[::4])
    ]  # fmt: skip


def _shape(ch: ClickHouse, table: str) -> list[tuple[Any, ...]]:
    return ch.query(
        "SELECT name, type, default_kind, default_expression FROM system.columns "
        "WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        {"db": ch.database, "t": table},
    )


def _keys(ch: ClickHouse, table: str) -> tuple[Any, ...]:
    rows = ch.query(
        "SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": ch.database, "t": table},
    )
    return rows[0]


def _reports(ch: ClickHouse) -> list[Any]:
    reports, everything = Reports(ch, parse_policies(THREE_TIERS)), Filters()
    tables = [reports.spend(everything, by) for by in ("customer", "model", "tier", "day")]
    tables += [reports.savings(everything), *reports.routing(everything), reports.quality(everything)]
    tables += [reports.latency(everything), reports.margins(everything), scores_by_route(reports, everything)]
    return [t.rows for t in tables] + [routing_accuracy(reports, everything).table.rows]


def run_on_one_shard(folder: str) -> str:
    """The child process: the cluster's schema and every write and read Ladder makes, against the same
    on one node, in one chdb."""
    import clickhouse_connect

    from worker import clickhouse as module

    config = Path(folder) / "one-shard.xml"
    config.write_text(_ONE_SHARD)
    url = f"chdb://{folder}/data"
    client = clickhouse_connect.get_client(
        interface="chdb", path=f"{folder}/data", chdb_options={"config-file": str(config)}
    )
    module._chdb_clients[url] = OneShardClient(client)  # type: ignore[assignment]
    clustered, one = ClickHouse(url, "clustered", cluster=CLUSTER), ClickHouse(url, "one")
    assert clustered.migrate() == one.migrate() == len(MIGRATIONS)
    assert clustered.migrate() == len(MIGRATIONS)  # a second run changes nothing
    for table in SHARDING_KEYS:
        assert _shape(clustered, f"{table}_local") == _shape(clustered, table) == _shape(one, table), table
        assert _keys(clustered, f"{table}_local")[1:] == _keys(one, table)[1:], table
        assert _keys(clustered, table)[0] == "Distributed"

    events = _outcomes(60)
    for ch in (clustered, one):
        ch.insert_outcomes(events[:40])
        ch.insert_outcomes(events[:40])  # a batch re-sent whole: dropped by its token, in the rollup too
        assert ch.stored_event_ids(events[30:50]) == {f"e{i}" for i in range(30, 40)}
        ch.insert_outcomes(events[40:])
        ch.insert_scores(_scores(events))
        ch.replace_customers([Customer("c0", "free")])
        ch.replace_customers([Customer("c1", "pro", Decimal(100), Decimal("0.01"), Decimal(50))])
    assert clustered.query("SELECT count() FROM {db}.outcomes") == [(60,)]
    assert clustered.query("SELECT sum(calls) FROM {db}.outcomes_daily") == [(60,)]
    assert clustered.query("SELECT customer, plan FROM {db}.customers") == [("c1", "pro")]
    assert clustered.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name LIKE 'customers_loading%'",
        {"db": clustered.database},
    ) == [(0,)]
    assert clustered.month_spend(datetime(2026, 11, 1).date()) == one.month_spend(datetime(2026, 11, 1).date())
    assert _reports(clustered) == _reports(one)
    return "ok"


def _in_own_process(function: str, folder: Path) -> str:
    """chdb reads its config when its engine starts, once per process: a process of its own."""
    script = f"from tests.test_clickhouse_cluster import {function}\nprint({function}({str(folder)!r}))"
    env = {**os.environ, "CLICKHOUSE_CLUSTER_SECRET": "test-only"}  # cluster.xml reads it
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip()


def test_the_distributed_layer_runs_on_a_one_shard_cluster_in_chdb(tmp_path: Path) -> None:
    _in_own_process("run_on_one_shard", tmp_path)


# ---- deploy/clickhouse ----------------------------------------------------------------------------


def example_clusters(folder: str) -> list[tuple[Any, ...]]:
    """The child process: what a server reading deploy/clickhouse/cluster.xml knows of its clusters."""
    import clickhouse_connect

    config = str(ROOT / "deploy" / "clickhouse" / "cluster.xml")
    client = clickhouse_connect.get_client(
        interface="chdb", path=f"{folder}/data", chdb_options={"config-file": config}
    )
    rows = client.query("SELECT cluster, shard_num, replica_num FROM system.clusters ORDER BY ALL").result_rows
    return [tuple(r) for r in rows]


def test_the_example_config_defines_the_cluster_two_shards_of_two_replicas(tmp_path: Path) -> None:
    clusters = _in_own_process("example_clusters", tmp_path)
    assert clusters == str([(CLUSTER, shard, replica) for shard in (1, 2) for replica in (1, 2)])
    macros = (ROOT / "deploy" / "clickhouse" / "macros.xml").read_text()
    assert "<shard>" in macros and "<replica>" in macros


def test_the_example_grants_parse_and_give_grafana_the_four_tables(chdb_url: str) -> None:
    text = (ROOT / "deploy" / "clickhouse" / "users.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    statements = [s.strip() for s in body.split(";") if s.strip()]
    ch = ClickHouse(chdb_url, "cluster_parse")
    for statement in statements:
        _format(ch, statement)
    reader = {s.split(" ON ")[1].split()[0] for s in statements if s.startswith("GRANT SELECT")}
    tables = {f"ladder.{t}" for t in SHARDING_KEYS}
    assert reader == tables | {f"{t}_local" for t in tables}
    assert (
        "GRANT ALL ON ladder.* TO ladder_owner" in statements and "GRANT CLUSTER ON *.* TO ladder_owner" in statements
    )
