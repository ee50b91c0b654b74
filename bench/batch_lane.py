"""The batch lane's own cost: jobs per second through the batch lane against the sync lane, same run.

  (a) sync lane: enqueue N jobs, one tier worker (concurrency 64) calls the fake provider for each
      through the OpenAI SDK, settles each; timed from the first enqueue to the last settle
  (b) batch lane: enqueue the same N jobs with --lane batch, draft and submit them (one OpenAI batch
      per 10,000: upload, create), the fake ends the batches, the lane reads the results and settles
      each request once (guarded transactions, budget holds); timed the same way

The fake provider answers at once, so (b)/(a) compares Ladder's work per job on the two lanes: a
batch's hours at the provider are not in it. Both run in this process against the same fake (in a
thread) and Redis (db 12, flushed). Budgets are on (holds are part of the lane's work).

    python bench/batch_lane.py [--jobs 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import POLICIES  # noqa: E402  (one tier, one model: the same as the overhead bench)
from ladder.app import App, open_app  # noqa: E402
from ladder.messages import Job, Lane  # noqa: E402
from ladder.results import batch_counts  # noqa: E402
from ladder.settings import Settings  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402
from worker.tier_worker import tier_worker  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def jobs(n: int, run: str) -> list[Job]:
    return [Job(id=f"{run}-{i}", customer=f"c{i % 50}", prompt=f"Summarize ticket {i}: the card was charged twice.")
            for i in range(n)]  # fmt: skip


async def settled(app: App, batch: str, n: int) -> None:
    while (await batch_counts(app.redis, app.keys, batch)).get("final", 0) < n:
        await asyncio.sleep(0.01)


async def sync_lane(app: App, n: int, run: str) -> float:
    t0 = time.perf_counter()
    await app.producer(Lane.SYNC).submit(jobs(n, run), run)
    worker = tier_worker(app.tier_runtime(), "cheap", burst=True, poll_delay=0, max_jobs=64, handle_signals=False)
    await worker.async_run()
    await settled(app, run, n)
    return n / (time.perf_counter() - t0)


async def batch_lane(app: App, fake: FakeProvider, n: int, run: str) -> float:
    t0 = time.perf_counter()
    await app.producer(Lane.BATCH).submit(jobs(n, run), run)
    lane = app.batch_lane()
    await lane.submit_due(eager=True)
    fake.batches.end()
    await lane.poll(force=True)
    await settled(app, run, n)
    return n / (time.perf_counter() - t0)


async def main(n: int, repeat: int) -> None:
    import redis

    fake = FakeProvider().start()
    env = dict(os.environ, REDIS_URL=REDIS_URL, LADDER_LOG_FORMAT="json", **fake.env())
    with tempfile.TemporaryDirectory() as home:
        policies = Path(home) / "policies.toml"
        policies.write_text(POLICIES)
        settings = Settings.from_env(str(policies), dict(env, LADDER_HOME=home))
        os.environ.update(fake.env())  # the SDKs read their base URLs and keys from the environment
        sync_rates, batch_rates = [], []
        for r in range(repeat):
            redis.Redis.from_url(REDIS_URL).flushdb()
            async with open_app(settings) as app:
                sync_rates.append(await sync_lane(app, n, f"sync{r}"))
                batch_rates.append(await batch_lane(app, fake, n, f"batch{r}"))
            print(f"run {r + 1}: sync {sync_rates[-1]:,.0f} jobs/s, batch {batch_rates[-1]:,.0f} jobs/s", flush=True)
    fake.stop()
    a, b = statistics.median(sync_rates), statistics.median(batch_rates)
    print(f"\n{n:,} jobs, median of {repeat}: (a) sync lane {a:,.0f} jobs/s, (b) batch lane {b:,.0f} jobs/s")
    print(f"b/a = {b / a:.2f}  (Ladder's work per job on the batch lane against the sync lane; > 1: cheaper)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.repeat))
