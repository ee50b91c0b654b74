"""Bulk enqueue: `ladder enqueue` against arq's one-call-per-job `enqueue_job`, and its peak memory.

Both are measured in this run against the same Redis. `ladder enqueue` runs as the user runs it
(its own process: file parsing, validation, rules, pipelined Lua enqueue); arq's loop enqueues the
same number of jobs with `await pool.enqueue_job(...)` one after another. Peak memory (max RSS) of
`ladder enqueue` is taken for two file sizes: flat means streaming, not loading the file.
Needs Redis at 127.0.0.1:6379 (db 12, flushed).

    python bench/enqueue.py [--small 100000] [--large 1000000] [--arq-jobs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PROMPTS = [
    "Extract the invoice number and total from: Invoice INV-{i} from Contoso, total 1,2{i} USD.",
    "Classify this ticket as billing, bug or account: my card was charged twice (order {i}).",
    "Summarize in one sentence: the council voted {i} to 3 to extend the tram line north.",
]


def write_jobs(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            prompt = PROMPTS[i % 3].format(i=i)
            f.write(json.dumps({"id": f"job-{i}", "customer": f"c{i % 50}", "prompt": prompt}) + "\n")


def flush() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


def ladder_enqueue(path: Path, batch: str) -> float:
    """Seconds of one `ladder enqueue` process, start-up included."""
    env = dict(os.environ, REDIS_URL=REDIS_URL, PYTHONPATH=str(ROOT), LADDER_LOG_FORMAT="json")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ladder.cli", "enqueue", str(path), "--batch", batch, "--format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out, _ = proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ladder enqueue failed: {out}")
    report = json.loads(out)
    assert report["accepted"] == sum(1 for _ in path.open()), report
    return elapsed


async def arq_loop(n: int) -> float:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    t0 = time.perf_counter()
    for i in range(n):
        await pool.enqueue_job("tier_task", {"id": f"job-{i}", "prompt": PROMPTS[i % 3]}, _job_id=f"job-{i}")
    elapsed = time.perf_counter() - t0
    await pool.aclose()
    return elapsed


def peak_rss_of(path: Path, batch: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB), run from a fresh child so ru_maxrss belongs to this enqueue only."""
    code = (
        f"import sys, resource, json; sys.path.insert(0, {str(ROOT)!r}); import bench.enqueue as b;"
        f"from pathlib import Path; s = b.ladder_enqueue(Path({str(path)!r}), {batch!r});"
        "print(json.dumps([s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds, peak = json.loads(out.stdout)
    return float(seconds), float(peak)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--arq-jobs", type=int, default=20_000)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ladder-bench-enqueue-"))
    small, large = tmp / "small.jsonl", tmp / "large.jsonl"
    write_jobs(small, args.small)
    write_jobs(large, args.large)
    try:
        flush()
        arq_s = asyncio.run(arq_loop(args.arq_jobs))
        flush()
        small_s, small_rss = peak_rss_of(small, "small")
        flush()
        large_s, large_rss = peak_rss_of(large, "large")
        flush()
        arq_again = asyncio.run(arq_loop(args.arq_jobs))  # a second baseline: noise shows as a spread
    finally:
        flush()
        for f in (small, large):
            f.unlink(missing_ok=True)
    arq_rate = args.arq_jobs / min(arq_s, arq_again)
    small_rate, large_rate = args.small / small_s, args.large / large_s
    print(f"arq enqueue_job loop           : {arq_rate:9.0f} jobs/s  ({args.arq_jobs:,} jobs, best of 2)")
    print(f"ladder enqueue {args.small:>9,} lines : {small_rate:9.0f} jobs/s  peak RSS {small_rss:6.0f} MiB")
    print(f"ladder enqueue {args.large:>9,} lines : {large_rate:9.0f} jobs/s  peak RSS {large_rss:6.0f} MiB")
    print(f"speed-up vs enqueue_job (target >= 10x): {small_rate / arq_rate:.1f}x / {large_rate / arq_rate:.1f}x")
    print(f"peak memory ratio large/small (flat ~ 1): {large_rss / small_rss:.2f}")
    print("(`ladder enqueue` times include process start-up, file parsing, validation and the rules pass)")


if __name__ == "__main__":
    main()
