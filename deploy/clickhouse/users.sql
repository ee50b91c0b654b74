-- Ladder's users and grants, run once by an administrator (clickhouse-client --multiquery < users.sql).
-- Database `ladder` (CLICKHOUSE_DATABASE). On a cluster, run it on every node, or keep users in
-- replicated access storage (user_directories: replicated), or add ON CLUSTER 'ladder' to each statement.
-- Passwords never go in this file: put the SHA-256 of each (echo -n "$PASSWORD" | sha256sum) in place
-- of the placeholders, and the password itself in the Secret that holds CLICKHOUSE_URL or Grafana's.

-- The schema's owner: the sink creates and migrates the schema on every start (CREATE ... IF NOT EXISTS
-- is checked against grants even when the table exists), inserts outcomes and scores, and reads them
-- back (stored events, month-to-date spend); `ladder customers load` creates, fills and exchanges a table.
CREATE ROLE IF NOT EXISTS ladder_owner;
GRANT ALL ON ladder.* TO ladder_owner;
-- ON CLUSTER statements (CLICKHOUSE_CLUSTER set) need this as well.
GRANT CLUSTER ON *.* TO ladder_owner;

-- Grafana and ad-hoc reports: read the four tables, nothing else. With a <secret> in remote_servers the
-- shards check the same user's grants on the local tables a Distributed table reads.
CREATE ROLE IF NOT EXISTS ladder_reader;
GRANT SELECT ON ladder.outcomes TO ladder_reader;
GRANT SELECT ON ladder.outcomes_daily TO ladder_reader;
GRANT SELECT ON ladder.scores TO ladder_reader;
GRANT SELECT ON ladder.customers TO ladder_reader;
-- cluster only (the local tables under the Distributed ones):
GRANT SELECT ON ladder.outcomes_local TO ladder_reader;
GRANT SELECT ON ladder.outcomes_daily_local TO ladder_reader;
GRANT SELECT ON ladder.scores_local TO ladder_reader;
GRANT SELECT ON ladder.customers_local TO ladder_reader;

-- The sink (and whoever runs `ladder report` or `ladder customers load`).
CREATE USER IF NOT EXISTS ladder IDENTIFIED WITH sha256_hash BY 'SHA256-OF-THE-SINK-PASSWORD';
GRANT ladder_owner TO ladder;
SET DEFAULT ROLE ladder_owner TO ladder;

-- Grafana. readonly = 2: reads only, but the plugin may still set query settings. A report filters one
-- Distributed table by a subquery on another: 'global' runs that subquery once (Ladder sets the same).
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_hash BY 'SHA256-OF-THE-GRAFANA-PASSWORD'
    SETTINGS readonly = 2, distributed_product_mode = 'global';
GRANT ladder_reader TO grafana;
SET DEFAULT ROLE ladder_reader TO grafana;
