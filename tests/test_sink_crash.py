"""A `ladder sink` process SIGKILLed mid-batch loses no outcome and stores none twice.

Real processes, real Redis, chdb. The killed sink leaves entries it read and did not ack in its
pending list (perhaps already inserted: the kill can land between the insert and the ack); the sink
after it claims them (`--claim-after`), drops the events already stored and inserts the rest, so the
table and its daily rollup hold every event once and the cost adds up to the cent, exactly.

chdb locks its data folder for one process and the lock goes with the process: a sink started on
the folder of a killed one opens it at once. Two sinks on one folder cannot insert at the same time,
so in the two-sink test the second waits for the folder as for a ClickHouse outage (worker/sink.py)
and takes over when the first is killed; against a ClickHouse server both would insert at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from ladder.keys import Keys
from ladder.messages import ENCODER
from tests.canary import assert_no_canary
from tests.test_sink import outcome

KEYS = Keys("ladder")
NOTES = f"{KEYS.outcomes}:batches"  # worker/sink.py: the batches whose insert has begun, until acked
COST_STEP = Decimal("0.000000123457")  # twelve places, the column's precision: a float would drift

# Run in a process of its own: chdb opens one data folder per process, and pytest's is taken.
_STORED = """
import json, os
from worker.clickhouse import ClickHouse
ch = ClickHouse(os.environ["CLICKHOUSE_URL"], os.environ.get("CLICKHOUSE_DATABASE", "ladder"))
rows, ids, jobs, cost = ch.query(
    "SELECT count(), uniqExact(event_id), uniqExact(job_id), toString(sum(cost)) FROM {db}.outcomes")[0]
calls, rollup_cost = ch.query("SELECT sum(calls), toString(sum(cost)) FROM {db}.outcomes_daily")[0]
print(json.dumps({"rows": rows, "event_ids": ids, "job_ids": jobs, "cost": cost,
                  "rollup_calls": calls, "rollup_cost": rollup_cost}))
"""


def stored(env: dict[str, str]) -> dict[str, Any]:
    """What the ClickHouse of `env` holds: rows of `outcomes` as stored (a duplicate not yet merged
    away counts), distinct event and job ids, the cost as exact decimal text, and the rollup's sums."""
    result = subprocess.run(
        [sys.executable, "-c", _STORED], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert_no_canary("the ClickHouse query", result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    found["cost"], found["rollup_cost"] = Decimal(found["cost"]), Decimal(found["rollup_cost"])
    return found


def cost_of(n: int) -> Decimal:
    return COST_STEP * (n % 997 + 1)


def add_outcomes(db: redis.Redis, first: int, count: int) -> Decimal:
    """Outcome events first..first+count-1 on the stream, as workers write them; their total cost."""
    pipe = db.pipeline(transaction=False)
    for n in range(first, first + count):
        pipe.xadd(KEYS.outcomes, {"e": ENCODER.encode(outcome(n, str(cost_of(n))))})
    pipe.execute()
    return sum((cost_of(n) for n in range(first, first + count)), Decimal(0))


def pending(db: redis.Redis) -> int:
    if not db.exists(KEYS.outcomes) or not db.xinfo_groups(KEYS.outcomes):
        return 0
    return int(db.xpending(KEYS.outcomes, KEYS.sink_group)["pending"])


def poll(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def stop_line(output: str) -> dict[str, Any]:
    """The sink's last `sink stopped` log line (its stats)."""
    lines = [json.loads(x) for x in output.splitlines() if '"sink stopped"' in x]
    assert lines, output[-3000:]
    return lines[-1]


def test_a_sink_killed_mid_insert_loses_nothing_and_stores_nothing_twice_after_a_restart(
    cli_env: dict[str, str], tmp_path: Path, db: redis.Redis, processes: Any
) -> None:
    total = 60_000
    cost = add_outcomes(db, 0, total)
    sink = processes(cli_env, tmp_path / "sink.log", "sink", "--batch-size", "5000")
    # Mid-insert: a batch has been acked (the stream shrank) and another one's insert has begun (its
    # note is written just before the insert and deleted with the ack).
    poll(lambda: db.xlen(KEYS.outcomes) < total and db.hlen(NOTES) > 0, 90, "the sink mid-insert")
    os.kill(sink.proc.pid, signal.SIGKILL)
    sink.proc.wait()
    assert "Traceback" not in sink.output()
    assert db.hlen(NOTES) > 0 and pending(db) > 0  # it died with a batch on its way to ClickHouse
    assert 0 < db.xlen(KEYS.outcomes) < total

    # A new sink on the same chdb folder (the kill released chdb's lock) takes the dead one's entries.
    done = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "sink", "--burst", "--claim-after", "0"],
        env=cli_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert_no_canary("ladder sink", done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stop_line(done.stdout + done.stderr)["claimed"] > 0
    assert db.xlen(KEYS.outcomes) == 0 and pending(db) == 0 and db.hlen(NOTES) == 0
    found = stored(cli_env)
    assert found == {
        "rows": total, "event_ids": total, "job_ids": total, "cost": cost, "rollup_calls": total, "rollup_cost": cost,
    }  # fmt: skip


class Producer:
    """Outcome events added steadily from a thread, as running workers add them."""

    def __init__(self, url: str, per_tick: int = 200, tick_s: float = 0.02) -> None:
        self._db = redis.Redis.from_url(url)
        self._per_tick, self._tick_s = per_tick, tick_s
        self.added, self.cost = 0, Decimal(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.cost += add_outcomes(self._db, self.added, self._per_tick)
            self.added += self._per_tick

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()


def test_a_running_sink_claims_what_a_killed_sink_of_its_group_left_unacked(
    cli_env: dict[str, str], tmp_path: Path, db: redis.Redis, clean_redis: str, processes: Any
) -> None:
    args = ("sink", "--batch-size", "2000", "--claim-after", "3", "--claim-every", "0.5")
    producer = Producer(clean_redis)
    try:
        first = processes(cli_env, tmp_path / "first.log", *args)
        poll(lambda: db.xlen(KEYS.outcomes) < producer.added, 90, "the first sink to insert", every=0.05)
        second = processes(cli_env, tmp_path / "second.log", *args)
        # The second sink waits for chdb's folder, which the first holds, retrying as in an outage.
        poll(lambda: "clickhouse unavailable" in second.output(), 90, "the second sink to wait", every=0.05)
        poll(lambda: db.hlen(NOTES) > 0, 30, "the first sink mid-insert")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        assert pending(db) > 0 and db.hlen(NOTES) > 0
        # The second sink opens the folder and, running, claims the first's entries once idle 3 s.
        poll(lambda: "claimed entries another consumer left unacked" in second.output(), 60, "a claim", every=0.05)
    finally:
        producer.stop()
    poll(lambda: db.xlen(KEYS.outcomes) == 0 and pending(db) == 0, 60, "the stream to drain", every=0.05)
    assert db.hlen(NOTES) == 0
    code, _ = second.stop(signal.SIGTERM, timeout=60)
    assert code == 0, second.output()[-3000:]
    stats = stop_line(second.output())
    assert stats["claimed"] > 0 and stats["retries"] > 0
    assert "Traceback" not in second.output() and "Traceback" not in first.output()
    found = stored(cli_env)
    n = producer.added
    assert found == {
        "rows": n, "event_ids": n, "job_ids": n, "cost": producer.cost, "rollup_calls": n, "rollup_cost": producer.cost,
    }  # fmt: skip
