"""Graceful shutdown with real processes and real signals: `ladder worker` stops taking jobs at once,
lets the ones in flight finish for up to --grace-period, hands the rest back to the queue for another
worker, and exits 0; `ladder sink` acks the batch it inserted and exits 0.

The provider is a tiny OpenAI-compatible server started here whose answers take as long as a test
needs (the shared fake provider answers at once), and which records when each call arrived.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from arq.connections import ArqRedis
from arq.worker import func

from ladder.keys import Keys
from ladder.messages import ENCODER, OUTCOME_DECODER, Outcome
from ladder.queueing import deserialize_arq
from tests.helpers import ladder, line
from tests.processes import wait_for
from tests.slow_provider import SLOW_POLICIES, SlowServer
from tests.test_sink import outcome
from worker.arq_worker import LadderWorker

KEYS = Keys("ladder")
QUEUE = KEYS.queue("cheap")
IN_PROGRESS = "arq:in-progress:"  # arq.constants.in_progress_key_prefix
RETRY = "arq:retry:"  # arq.constants.retry_key_prefix


@pytest.fixture
def env(cli_env: dict[str, str], slow: SlowServer, tmp_path: Path) -> dict[str, str]:
    policies = tmp_path / "slow.toml"
    policies.write_text(SLOW_POLICIES.format(url=slow.url))
    return dict(cli_env, LADDER_POLICIES=str(policies))


def enqueue(env: dict[str, str], tmp_path: Path, n: int, batch: str = "b") -> list[str]:
    ids = [f"{batch}-{i}" for i in range(n)]
    path = tmp_path / f"{batch}.jsonl"
    path.write_text("".join(line(id=i, customer="acme", prompt=f"question {i}?") + "\n" for i in ids))
    ladder(env, "enqueue", str(path), "--batch", batch)
    return ids


def outcomes(db: redis.Redis) -> list[Outcome]:
    return [OUTCOME_DECODER.decode(fields[b"e"]) for _, fields in db.xrange(KEYS.outcomes) if b"e" in fields]


def counts(db: redis.Redis, batch: str = "b") -> dict[str, int]:
    """The batch's accepted, ok and final counts."""
    found = {k.decode(): int(v) for k, v in db.hgetall(KEYS.batch_counts(batch)).items()}
    return {k: found.get(k, 0) for k in ("accepted", "ok", "final")}


def in_progress(db: redis.Redis) -> list[bytes]:
    return list(db.scan_iter(match=f"{IN_PROGRESS}*"))


def worker_args(grace: float, concurrency: int, *extra: str) -> tuple[str, ...]:
    return ("worker", "--tier", "cheap", "--grace-period", str(grace), "--concurrency", str(concurrency), *extra)


def job_id(prompt: str) -> str:
    return prompt.removeprefix("question ").removesuffix("?")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_jobs_in_flight_finish_within_the_grace_period_and_no_job_starts_after_the_signal(
    sig: signal.Signals, env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis, processes: Any
) -> None:
    slow.delay = 2.0
    enqueue(env, tmp_path, 6)
    worker = processes(env, tmp_path / "worker.log", *worker_args(20, 4))
    wait_for(lambda: len(slow.prompts()) == 4, 60, "four calls in flight")
    signalled = time.monotonic()
    code, took = worker.stop(sig, timeout=30)

    assert code == 0, worker.output()
    assert took < 15  # it left when its jobs were done, not at the end of the grace period
    assert slow.calls_after(signalled) == 0 and len(slow.prompts()) == 4  # nothing new was started
    in_flight = sorted(job_id(p) for p in slow.prompts())
    assert counts(db) == {"accepted": 6, "ok": 4, "final": 4}
    settled = outcomes(db)
    assert sorted(o.job_id for o in settled) == in_flight and all(o.final and o.status == "ok" for o in settled)
    assert db.zcard(QUEUE) == 2 and in_progress(db) == []  # the two never started wait for another worker
    assert "stopping: no new jobs" in worker.output() and "Traceback" not in worker.output()


def test_jobs_past_the_grace_period_go_back_to_the_queue_and_another_worker_finishes_them_once(
    env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis, processes: Any
) -> None:
    slow.delay = 120.0  # far past the grace period
    ids = enqueue(env, tmp_path, 3)
    worker = processes(env, tmp_path / "worker.log", *worker_args(1, 3))
    wait_for(lambda: len(slow.prompts()) == 3, 60, "three calls in flight")
    code, took = worker.stop(signal.SIGTERM, timeout=30)

    assert code == 0, worker.output()
    assert 1 <= took < 10
    assert "Traceback" not in worker.output()
    # Handed back: still queued, not held in progress, nothing settled or streamed for them.
    assert db.zcard(QUEUE) == 3 and in_progress(db) == []
    assert counts(db)["final"] == 0 and outcomes(db) == []
    assert [db.get(RETRY + f"{i}~cheap~0") for i in ids] == [b"1"] * 3  # the next run is try 2: it checks its mark

    slow.delay = 0.2
    started = time.monotonic()
    ladder(env, *worker_args(5, 3, "--burst"))
    assert (
        time.monotonic() - started < 30
    )  # not after the in-progress key's expiry (job_timeout_s + settle_margin_s + 10 s)

    assert counts(db) == {"accepted": 3, "ok": 3, "final": 3}
    settled = outcomes(db)
    assert sorted(o.job_id for o in settled) == ids  # exactly one outcome each: one attempt billed once
    assert all(o.final and o.status == "ok" and o.attempt == 1 and o.cost > 0 for o in settled)
    assert sorted(job_id(p) for p in slow.prompts()) == sorted(ids * 2)  # the cancelled call, then the re-run
    assert db.zcard(QUEUE) == 0 and in_progress(db) == []


def test_a_re_run_whose_attempt_was_already_settled_does_not_call_the_provider(
    env: dict[str, str], tmp_path: Path, slow: SlowServer, db: redis.Redis
) -> None:
    """A hand-back cancelled just after the settle's MULTI/EXEC: the attempt is streamed and marked,
    arq's entry is still queued with its try counted."""
    [only] = enqueue(env, tmp_path, 1)
    task_id = f"{only}~cheap~0"
    db.set(KEYS.settled(task_id), b"1")
    db.set(RETRY + task_id, b"1")
    ladder(env, *worker_args(5, 1, "--burst"))
    assert slow.prompts() == [] and db.zcard(QUEUE) == 0 and in_progress(db) == []


async def test_a_job_handed_back_again_and_again_is_not_dropped_by_max_tries(arq_redis: ArqRedis) -> None:
    """arq counts a cancelled run as a try and drops a job past max_tries with nothing recorded; a
    hand-back at every scale-down must not use the tries up (nor bring job_try back to 1)."""
    queue = "ladder:queue:test"
    tries: list[int] = []
    release = asyncio.Event()

    async def slow_job(ctx: dict[str, Any]) -> str:
        tries.append(ctx["job_try"])
        await release.wait()
        return "done"

    await arq_redis.enqueue_job("slow_job", _job_id="j", _queue_name=queue)

    def new_worker() -> LadderWorker:
        return LadderWorker([func(slow_job, name="slow_job")], queue_name=queue, redis_pool=arq_redis, max_jobs=2,
                            poll_delay=0.01, handle_signals=False, keep_result=0, max_tries=3, grace_period=0.2,
                            job_deserializer=deserialize_arq)  # fmt: skip

    for round_ in range(1, 5):  # more hand-backs than max_tries
        worker = new_worker()
        running = asyncio.create_task(worker.async_run())
        for _ in range(500):  # arq drops a job past max_tries: it would never start
            if len(tries) == round_:
                break
            await asyncio.sleep(0.01)
        assert len(tries) == round_, f"run {round_} never started (tries: {tries})"
        worker.handle_sig(signal.SIGTERM)
        await asyncio.wait_for(running, 5)  # ends quietly, no CancelledError
        assert worker.jobs_handed_back == 1
        assert await arq_redis.zcard(queue) == 1 and not await arq_redis.exists(IN_PROGRESS + "j")
    release.set()
    worker = new_worker()
    worker.burst = True
    await asyncio.wait_for(worker.async_run(), 5)
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0
    assert tries == [1, 2, 2, 2, 2]  # a re-run always has job_try > 1, so it checks its settled mark
    assert await arq_redis.zcard(queue) == 0


async def test_a_second_signal_ends_the_grace_period_at_once(arq_redis: ArqRedis) -> None:
    queue = "ladder:queue:test"
    started = asyncio.Event()

    async def stuck(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(3600)

    await arq_redis.enqueue_job("stuck", _job_id="s", _queue_name=queue)
    worker = LadderWorker([func(stuck, name="stuck")], queue_name=queue, redis_pool=arq_redis, poll_delay=0.01,
                          handle_signals=False, keep_result=0, grace_period=600, job_deserializer=deserialize_arq)  # fmt: skip
    running = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(started.wait(), 5)
    worker.handle_sig(signal.SIGINT)
    await asyncio.sleep(0.2)
    assert not running.done()  # waiting out the grace period
    worker.handle_sig(signal.SIGINT)
    await asyncio.wait_for(running, 5)
    assert worker.jobs_handed_back == 1 and await arq_redis.zcard(queue) == 1
    assert not await arq_redis.exists(IN_PROGRESS + "s")


def test_the_sink_acks_what_it_inserted_and_exits_0_on_sigterm(
    cli_env: dict[str, str], tmp_path: Path, db: redis.Redis, processes: Any
) -> None:
    total = 20_000
    pipe = db.pipeline(transaction=False)
    for n in range(total):
        pipe.xadd(KEYS.outcomes, {"e": ENCODER.encode(outcome(n))})
    pipe.execute()
    sink = processes(cli_env, tmp_path / "sink.log", "sink", "--batch-size", "1000")

    def reading() -> bool:
        groups = db.xinfo_groups(KEYS.outcomes) if db.exists(KEYS.outcomes) else []
        return any(g["pending"] or g["entries-read"] for g in groups)

    wait_for(reading, 60, "the sink to read")
    code, _ = sink.stop(signal.SIGTERM, timeout=60)
    assert code == 0, sink.output()
    stopped = [json.loads(x) for x in sink.output().splitlines() if '"sink stopped"' in x]
    inserted = stopped[0]["inserted"]
    assert 0 < inserted < total  # stopped mid-stream, not after draining it
    assert db.xpending(KEYS.outcomes, KEYS.sink_group)["pending"] == 0  # all it read, it inserted and acked
    assert db.xlen(KEYS.outcomes) == total - inserted  # acked entries are deleted; the rest wait, unread

    ladder(cli_env, "sink", "--burst")
    spend = json.loads(ladder(cli_env, "report", "spend", "--by", "tier", "--format", "json").stdout)
    assert {r["key"]: r["requests"] for r in spend["rows"]}["TOTAL"] == total  # none lost, none twice
