"""The batch lane as a user runs it, `ladder` processes: one SIGKILLed while it settles a batch's
results, then started again (every job ends once, each billed request has exactly one row, and no
budget money is counted twice), `ladder batches list`, and `--lane batch` refused when the lane is off."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ladder.keys import Keys
from ladder.messages import JOB_RECORD_DECODER, OUTCOME_DECODER, Lane
from tests.fake_provider import FakeProvider
from tests.helpers import ladder, line
from tests.processes import Process, wait_for
from tests.test_batch_lane import BATCH_TIERS, SONNET_DISCOUNT
from worker.budget import from_nano

KEYS = Keys("ladder")
JOBS = 6000


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    lane = "poll_interval_s = 0.2\nlease_s = 3  # the killed process's lease: what its successor waits"
    path.write_text(BATCH_TIERS.replace("poll_interval_s = 3600", lane) + SONNET_DISCOUNT)
    return path


def test_a_lane_process_killed_mid_results_and_restarted_settles_every_request_once(
    cli_env: dict[str, str], fake: FakeProvider, db: redis.Redis, processes: Callable[..., Process], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(line(id=f"k{i:05d}", prompt=f"summarize record {i}") + "\n" for i in range(JOBS)))
    ladder(cli_env, "enqueue", str(path), "--batch", "crash", "--lane", "batch")
    assert db.llen(KEYS.lane_pending("cheap")) == JOBS
    first: Process = processes(cli_env, tmp_path / "first.log", "batches", "run", "--eager")
    wait_for(lambda: len(fake.batches.submitted()) == 1 and db.zcard(KEYS.lane_open) == 1, 90, "the batch submitted")
    wait_for(lambda: db.get(KEYS.lane_batch(_only_draft(db))) is not None, 30, "the batch recorded")
    wait_for(lambda: b"submitted" in (db.get(KEYS.lane_batch(_only_draft(db))) or b""), 30, "its provider id recorded")
    fake.batches.end()
    wait_for(lambda: db.xlen(KEYS.outcomes) > 300, 90, "the first results settled")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    settled_before = db.xlen(KEYS.outcomes)
    assert settled_before < JOBS, "the process finished before it was killed: the test proves nothing"
    assert "Traceback" not in first.output()

    second = ladder(cli_env, "batches", "run", "--burst")
    assert "batch done" in second.stdout + second.stderr
    rows = [OUTCOME_DECODER.decode(f[b"e"]) for _, f in db.xrange(KEYS.outcomes) if b"e" in f]
    assert len(rows) == JOBS and len({r.event_id for r in rows}) == JOBS
    assert Counter(r.final for r in rows) == Counter({True: JOBS}) and all(r.lane is Lane.BATCH for r in rows)
    records = [JOB_RECORD_DECODER.decode(r) for r in db.mget([KEYS.job(f"k{i:05d}") for i in range(JOBS)])]
    assert Counter(r.status for r in records) == Counter({"ok": JOBS})
    assert int(db.hget(KEYS.batch_counts("crash"), "final") or 0) == JOBS
    # The provider billed each request once; the rows and the budget's spend say the same, exactly.
    billed = [c for c in fake.calls() if c.batch]
    assert len(billed) == JOBS and fake.batches.submitted()[0].results_reads == 2
    month = next(k for k in db.scan_iter(match=KEYS.budget_spent("*")))
    spent = from_nano(int(db.hget(month, "default") or 0))
    total = sum((r.cost for r in rows), start=type(rows[0].cost)(0))
    assert total <= spent < total + JOBS * type(total)("1e-9")  # each cost rounded up to a nano-dollar
    assert not db.hlen(KEYS.budget_holds)  # every hold settled (none left to expire in a day)
    assert not db.zcard(KEYS.lane_open) and not db.exists(KEYS.lane_batch_tasks(_done_draft(db)))
    waiting, listed = json.loads(ladder(cli_env, "batches", "list", "--format", "json").stdout)["tables"]
    assert waiting["rows"] == [{"tier": t, "jobs": 0} for t in ("cheap", "standard", "premium")]
    [done] = listed["rows"]
    assert done["state"] == "done" and done["requests"] == JOBS and done["answered"] == JOBS and done["to_sync"] == 0


def _only_draft(db: redis.Redis) -> str:
    drafts = db.zrange(KEYS.lane_open, 0, -1)
    return drafts[0].decode() if drafts else ""


def _done_draft(db: redis.Redis) -> str:
    prefix = KEYS.lane_batch("")
    names = [k.decode().removeprefix(prefix) for k in db.scan_iter(match=prefix + "*")]
    return next(n for n in names if ":" not in n)


def test_lane_batch_on_a_policies_file_that_turned_the_lane_off_is_refused_with_why(
    cli_env: dict[str, str], tmp_path: Path, db: redis.Redis
) -> None:
    policies = tmp_path / "off.toml"
    policies.write_text(BATCH_TIERS.replace("[batch]\n", "[batch]\nenabled = false\n") + SONNET_DISCOUNT)
    path = tmp_path / "jobs.jsonl"
    path.write_text(line(id="a", prompt="p") + "\n")
    env = dict(cli_env, LADDER_POLICIES=str(policies))
    result = ladder(env, "enqueue", str(path), "--batch", "off", "--lane", "batch", check=False)
    assert result.returncode == 2 and "the batch lane is off in the policies" in result.stderr
    assert not db.exists(KEYS.job("a"))  # nothing queued
