"""Workers that die or crash: a `ladder worker` SIGKILLed in the middle of a provider call, alone and
among many concurrent jobs, and a poison job that crashes Ladder's own code on every try.

A killed worker leaves each running job locked by arq's in-progress key, which expires
limits.job_timeout_s + limits.settle_margin_s + 10 s after the claim; then another worker runs the
job again. The outcome stream and ClickHouse must hold exactly one final outcome per job, and no
attempt twice: the killed call wrote nothing, its re-run writes the attempt once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from ladder.app import open_app
from ladder.keys import Keys
from ladder.messages import DeadLetter, Status
from ladder.settings import Settings
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, ladder, line
from tests.pipeline import enqueue as enqueue_file
from tests.processes import clickhouse_rows, wait_for
from tests.test_shutdown import (
    IN_PROGRESS,
    QUEUE,
    SLOW_POLICIES,
    SlowServer,
    counts,
    enqueue,
    in_progress,
    job_id,
    outcomes,
    worker_args,
)
from worker.clickhouse import ClickHouse
from worker.provider import Completion
from worker.steps import Call, Handler
from worker.tier_worker import TierRuntime, tier_worker

KEYS = Keys("ladder")
DEAD_LETTER = msgspec.msgpack.Decoder(DeadLetter)
# The in-progress key of a killed worker's job lives 2 + 1 + 10 = 13 s.
SHORT_TIMEOUTS = (
    "\n[limits]\njob_timeout_s = 2\nsettle_margin_s = 1\n\n[faults]\nmax_job_tries = 2\ncrash_retry_delay_s = 0.2\n"
)
LOCK_S = 13


@pytest.fixture
def env(cli_env: dict[str, str], slow: SlowServer, tmp_path: Path) -> dict[str, str]:
    policies = tmp_path / "slow.toml"
    policies.write_text(SLOW_POLICIES.format(url=slow.url) + SHORT_TIMEOUTS)
    return dict(cli_env, LADDER_POLICIES=str(policies))


def rows_per_job(env: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    """Per job: final outcome rows, rows in all, distinct attempts; from ClickHouse after the sink."""
    ladder(env, "sink", "--burst")
    sql = "SELECT job_id, countIf(final), count(), uniqExact(attempt) FROM {db}.outcomes FINAL GROUP BY job_id"
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in clickhouse_rows(env, sql)}


def test_a_worker_killed_mid_call_leaves_its_jobs_to_run_again_after_their_timeout_once_each(
    env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis, processes: Any
) -> None:
    """Two workers share 120 jobs, 24 at a time each; one is SIGKILLed with calls in flight."""
    slow.delay = 0.6
    ids = enqueue(env, tmp_path, 120)
    killed = processes(env, tmp_path / "killed.log", *worker_args(5, 24))
    processes(env, tmp_path / "survivor.log", *worker_args(5, 24))
    wait_for(lambda: counts(db)["final"] >= 20, 60, "some jobs done")
    # Each worker holds at most 24: more in flight means the one to kill has calls in flight too (it
    # may start seconds after the survivor, which could otherwise have done the first jobs alone).
    wait_for(lambda: len(in_progress(db)) > 24, 60, "both workers with calls in flight")
    killed.kill()
    killed_at = time.time()
    locked = {k.decode().removeprefix(IN_PROGRESS).split("~")[0] for k in in_progress(db)}
    done_at_kill = {o.job_id for o in outcomes(db)}
    wait_for(lambda: counts(db)["final"] == len(ids), LOCK_S + 60, "every job, the killed worker's too")

    assert counts(db) == {"accepted": len(ids), "ok": len(ids), "final": len(ids)}
    streamed = outcomes(db)
    assert sorted(o.job_id for o in streamed) == sorted(ids)  # one outcome each: nothing twice, nothing lost
    assert all(o.final and o.status == Status.OK and o.attempt == 1 for o in streamed)
    # The dead worker's jobs (locked, not settled, not taken by the survivor) ran again only once
    # their lock expired, although the survivor polled all along.
    orphans = {o.job_id: o.finished_at for o in streamed if o.job_id in locked - done_at_kill}
    called = [job_id(p) for p in slow.prompts()]
    orphans = {i: at for i, at in orphans.items() if called.count(i) == 2}
    assert orphans, "no job of the killed worker was caught in flight"
    assert all(at > killed_at + LOCK_S - 1 for at in orphans.values())
    assert set(called) == set(ids) and len(called) == len(ids) + len(orphans)  # only those called twice
    assert rows_per_job(env) == {i: (1, 1, 1) for i in ids}  # in ClickHouse: one final row per job
    cost = clickhouse_rows(env, "SELECT count(), countIf(cost > 0) FROM {db}.outcomes FINAL")
    assert cost == [[str(len(ids)), str(len(ids))]]  # one billed row per job: no duplicate cost rows
    assert db.zcard(QUEUE) == 0 and in_progress(db) == []


def test_a_job_whose_worker_dies_on_every_try_is_dead_lettered_after_max_job_tries(
    env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis, processes: Any
) -> None:
    """With max_job_tries = 1 (to wait out one lock, not several): killed on try 1, the next claim
    gives the job up without calling the provider. Crashes counted over several tries: the poison test."""
    policies = Path(env["LADDER_POLICIES"])
    policies.write_text(policies.read_text().replace("max_job_tries = 2", "max_job_tries = 1"))
    slow.delay = 60.0
    [only] = enqueue(env, tmp_path, 1)
    killed = processes(env, tmp_path / "killed.log", *worker_args(5, 4))
    wait_for(lambda: len(slow.prompts()) == 1, 60, "the call in flight")
    killed.kill()
    processes(env, tmp_path / "next.log", *worker_args(5, 4))
    wait_for(lambda: counts(db)["final"] == 1, LOCK_S + 30, "the job to be given up")

    assert len(slow.prompts()) == 1  # the second try did not call the provider
    [letter] = [DEAD_LETTER.decode(f[b"d"]) for _, f in db.xrange(KEYS.deadletter)]
    assert (
        letter.job_id == only
        and letter.reason == "given up: each try crashed or lost its worker (faults.max_job_tries = 1)"
    )
    [row] = outcomes(db)
    assert (row.status, row.error_class, row.final, row.cost) == (Status.DEAD, "crashed", True, 0)
    ladder(env, "results", "--batch", "b", "-o", str(tmp_path / "results.jsonl"))
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "dead" and "max_job_tries = 1" in record["reason"]
    assert rows_per_job(env) == {only: (1, 1, 1)}
    assert db.zcard(QUEUE) == 0 and in_progress(db) == []


class CrashOn:
    """A step that raises inside Ladder's code for jobs whose prompt holds `marker`, as a bug would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.crashes = 0

    async def __call__(self, call: Call, proceed: Handler) -> Completion:
        if self.marker in call.task.job.text():
            self.crashes += 1
            raise KeyError("a bug in Ladder's code")
        return await proceed(call)


async def test_a_poison_job_is_tried_a_bounded_number_of_times_then_dead_lettered_without_holding_up_others(
    settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str, fake: FakeProvider
) -> None:
    policies = tmp_path / "poison.toml"
    policies.write_text(THREE_TIERS + "\n[faults]\nmax_job_tries = 3\ncrash_retry_delay_s = 0.3\n")
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    settings = Settings.from_env(str(policies), env)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        line(id="poison", prompt="POISON please") + "\n"
        + "".join(line(id=f"ok-{n}", prompt=f"question {n}") + "\n" for n in range(30))
    )  # fmt: skip
    crash = CrashOn("POISON")
    async with open_app(settings) as app:
        await enqueue_file(app, jobs, "b")
        runtime = TierRuntime(settings.policies, app.redis, app.keys, app.providers(), extra_steps=[crash])
        worker = tier_worker(runtime, "cheap", burst=True, poll_delay=0.01, handle_signals=False)
        await asyncio.wait_for(worker.async_run(), 60)  # a burst worker waits for the deferred retries too
        await app.sink().run(burst=True)
        letters = [DEAD_LETTER.decode(f[b"d"]) for _, f in await app.redis.xrange(app.keys.deadletter)]
        rows = clickhouse.query(
            "SELECT job_id, status, error_class, error_message, final, finished_at FROM {db}.outcomes FINAL"
        )

    assert crash.crashes == 3  # max_job_tries, then given up
    [letter] = letters
    assert letter.job_id == "poison"
    assert "crashed on each of 3 tries, last with KeyError" in letter.reason
    finals = {r[0]: r for r in rows if r[4]}
    assert set(finals) == {"poison", *(f"ok-{n}" for n in range(30))}  # one final outcome each
    assert (finals["poison"][1], finals["poison"][2]) == ("dead", "crashed")
    assert all(finals[f"ok-{n}"][1] == "ok" for n in range(30))
    # The others were not held up: all done before the poison job's retries (0.3 s, then 0.6 s) ended.
    assert max(finals[f"ok-{n}"][5] for n in range(30)) < finals["poison"][5]
