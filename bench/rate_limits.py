"""Fleet-wide rate limits against a provider that enforces them: how close to the limit Ladder runs,
and how many 429s it draws.

The fake provider runs as its own process with gpt-4o-mini limited to R requests and T tokens per
minute (token buckets holding a minute's worth, refilling continuously, as OpenAI and Anthropic
describe theirs). Ladder's policies carry the same figures (`[rate_limits."openai/gpt-4o-mini"]`, as a
user copies them from the provider's console). Tier-worker processes (`ladder worker --tier cheap
--concurrency 16`) share the limit through Redis; the sink moves outcomes into chdb.

  run 1   four workers, R binds (T far above what the jobs use)
  run 1t  four workers, T binds (long prompts; T is OpenAI's single "TPM" figure, Ladder's `tpm`)
  run 2   four workers, a fifth started halfway: before and after it joined
  run 3   20% of calls fail at random (529 on OpenAI and Anthropic, 503 on Gemini), the cheap tier has
          two candidates, cooldown 2 s: every job must end ok or dead-lettered with a reason

Rates come from the fake's own counters (GET /_fake/stats), sampled every 0.5 s. The steady window
leaves out the first --warmup seconds after the first enqueue (both buckets start full, so about R
requests go through in the first second or two; the window starts once the buckets are in steady
refill) and the last 3 s before the last job settles. Needs Redis at 127.0.0.1:6379 (db 12, flushed).

    python bench/rate_limits.py [--rpm 600] [--seconds 70] [--runs 1,1t,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
MODEL = "gpt-4o-mini"
CONCURRENCY = 16
SAMPLE_S = 0.5
TAIL_S = 3.0

POLICIES = """
[[tiers]]
name = "cheap"
candidates = [{cheap}]

[[tiers]]
name = "standard"
candidates = [{{ provider = "anthropic", model = "claude-3-5-haiku-20241022" }}]

[[tiers]]
name = "premium"
candidates = [{{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }}]

[rules]
default_tier = "cheap"
[rules.classify]
enabled = false
[classifier]
safe_tier = "premium"

[prices."claude-3-5-sonnet-20241022"]
input_per_mtok = "3"
output_per_mtok = "15"
[prices."claude-3-5-haiku-20241022"]
input_per_mtok = "1"
output_per_mtok = "5"

[rate_limits."openai/gpt-4o-mini"]
rpm = {rpm}
tpm = {tpm}

[faults]
cooldown_s = 2
"""
ONE_CANDIDATE = '{ provider = "openai", model = "gpt-4o-mini" }'
TWO_CANDIDATES = ONE_CANDIDATE + ', { provider = "gemini", model = "gemini-2.0-flash" }'
FAILURES = {  # run 3: 20% of every model's calls
    "gpt-4o-mini": 529,
    "gemini-2.0-flash": 503,
    "claude-3-5-haiku-20241022": 529,
    "claude-3-5-sonnet-20241022": 529,
}


@dataclass
class Sample:
    t: float  # seconds since the first enqueue
    stats: dict[str, dict[str, int]]
    final: int

    def count(self, key: str, model: str = MODEL) -> int:
        return self.stats.get(model, {}).get(key, 0)

    def sent(self, model: str = MODEL) -> int:
        """Requests the fake let through (answered ok or failed on purpose): what counts against R."""
        return self.count("ok", model) + self.count("5xx", model)


@dataclass
class Run:
    name: str
    jobs: int
    samples: list[Sample] = field(default_factory=list)
    joined_at: float | None = None  # run 2: when the fifth worker's process started
    done_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    deadletters: list[str] = field(default_factory=list)
    outcome_split: list[tuple[Any, ...]] = field(default_factory=list)
    final_split: list[tuple[Any, ...]] = field(default_factory=list)

    def at(self, t: float) -> Sample:
        """The last sample taken at or before t."""
        best = self.samples[0]
        for s in self.samples:
            if s.t <= t:
                best = s
        return best

    def window(self, start: float, end: float, rpm: int, allowed: float) -> dict[str, float]:
        """Requests a minute the fake let through between start and end, as a share of R and of what
        the binding limit allows (`allowed` requests a minute), and the share answered 429."""
        a, b = self.at(start), self.at(end)
        minutes = (b.t - a.t) / 60
        sent, limited = b.sent() - a.sent(), b.count("429") - a.count("429")
        return {
            "from": a.t,
            "to": b.t,
            "rpm": sent / minutes if minutes > 0 else 0.0,
            "share": sent / minutes / rpm if minutes > 0 else 0.0,
            "binding": sent / minutes / allowed if minutes > 0 else 0.0,
            "429": limited / (sent + limited) if sent + limited else 0.0,
            "n429": limited,
            "sent": sent,
        }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        r.read()


def start_fake(limits: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_provider", "--port", "0", "--limit", f"{MODEL}:{limits}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[-1]


def flush() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def prompt(i: int, long: bool) -> str:
    # short: ~4 input tokens + ~7 output; long: 100 input tokens + 34 output (the fake's reply is
    # "[gpt-4o-mini] " + the first 120 characters of the prompt)
    text = f"question {i}?"
    return (text + " " + "x" * 400)[:400] if long else text


class Fleet:
    """The processes of one run: the fake provider, tier workers and the sink, with their environment."""

    def __init__(self, name: str, tmp: Path, policies: str, limits: str) -> None:
        self.policies_path = tmp / f"{name}.toml"
        self.policies_path.write_text(policies)
        self.fake, self.url = start_fake(limits)
        key = "sk-bench-not-a-real-key"
        self.env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            REDIS_URL=REDIS_URL,
            CLICKHOUSE_URL=f"chdb://{tmp / f'ch-{name}'}",
            LADDER_POLICIES=str(self.policies_path),
            LADDER_LOG_FORMAT="json",
            OPENAI_API_KEY=key,
            OPENAI_BASE_URL=f"{self.url}/v1",
            GEMINI_API_KEY=key,
            GOOGLE_GEMINI_BASE_URL=self.url,
            ANTHROPIC_API_KEY=key,
            ANTHROPIC_BASE_URL=self.url,
        )
        self.logs = tmp / f"{name}-logs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers = 0

    def start(self, *command: str, log: str) -> None:
        with (self.logs / f"{log}.log").open("wb") as out:
            cmd = [sys.executable, "-m", "ladder.cli", *command]
            self.procs.append(subprocess.Popen(cmd, env=self.env, stderr=out, stdout=out))

    def worker(self, tier: str) -> None:
        self.workers += 1
        self.start("worker", "--tier", tier, "--concurrency", str(CONCURRENCY), log=f"{tier}-{self.workers}")

    def wait_ready(self) -> None:
        import redis

        from ladder.keys import Keys

        keys = Keys("ladder")
        sync = redis.Redis.from_url(REDIS_URL)
        deadline = time.time() + 60
        while not (sync.exists(f"{keys.queue('cheap')}:health-check") and sync.exists(keys.outcomes)):
            if time.time() > deadline:
                raise RuntimeError(f"workers or sink did not start (logs in {self.logs})")
            time.sleep(0.1)
        time.sleep(3)  # the other worker processes finish importing

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)
        self.fake.terminate()
        self.fake.wait(timeout=10)


async def drive(run: Run, fleet: Fleet, policies: str, long: bool, fifth_at: float | None) -> None:
    """Enqueue the jobs, then sample the fake's counters until every job is final and in the sink."""
    import msgspec
    from redis.asyncio import Redis

    from ladder.keys import Keys
    from ladder.messages import DeadLetter, Job
    from ladder.results import batch_counts
    from policies.config import parse_policies
    from producer.submit import Producer

    keys = Keys("ladder")
    r = Redis.from_url(REDIS_URL)
    producer = Producer(r, parse_policies(policies), keys)
    batch = (Job(id=f"{run.name}-{i}", prompt=prompt(i, long), max_output_tokens=64) for i in range(run.jobs))
    t0 = time.perf_counter()
    report = await producer.submit(batch, run.name)
    if report.accepted != run.jobs:
        raise RuntimeError(f"{report.accepted} of {run.jobs} jobs accepted")
    while True:
        t = time.perf_counter() - t0
        stats = await asyncio.to_thread(get_json, f"{fleet.url}/_fake/stats")
        counts = await batch_counts(r, keys, run.name)
        run.samples.append(Sample(t, stats, counts.get("final", 0)))
        if fifth_at is not None and run.joined_at is None and t >= fifth_at:
            fleet.worker("cheap")
            run.joined_at = t
        if counts.get("final", 0) >= run.jobs:
            run.done_at = run.done_at or t
            pending = await r.xpending(keys.outcomes, keys.sink_group)
            if await r.xlen(keys.outcomes) == 0 and pending["pending"] == 0:
                break
        await asyncio.sleep(SAMPLE_S)
    run.counts = counts
    for _, entry in await r.xrange(keys.deadletter):
        run.deadletters.append(msgspec.msgpack.decode(entry[b"d"], type=DeadLetter).reason)
    await r.aclose()


def query_outcomes(clickhouse_url: str, batch: str) -> dict[str, list[list[Any]]]:
    """Outcome rows by status and error class, and each job's final row (run once the sink has
    stopped, in a child process: chdb opens one data folder per process, once)."""
    from worker.clickhouse import ClickHouse

    ch = ClickHouse(clickhouse_url, "ladder")
    where = "FROM {db}.outcomes FINAL WHERE batch = {batch:String}"
    split = ch.query(
        f"SELECT status, error_class, count() {where} GROUP BY status, error_class ORDER BY count() DESC",
        {"batch": batch},
    )
    final = ch.query(
        f"SELECT status, tier, concat(provider, '/', model), error_class, count() {where} AND final "
        "GROUP BY status, tier, provider, model, error_class ORDER BY count() DESC",
        {"batch": batch},
    )
    return {"split": [list(r) for r in split], "final": [list(r) for r in final]}


def query_in_child(run: Run, clickhouse_url: str) -> None:
    out = subprocess.run(
        [sys.executable, __file__, "--query", clickhouse_url, run.name],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
        text=True,
    )
    rows = json.loads(out.stdout)
    run.outcome_split = [tuple(r) for r in rows["split"]]
    run.final_split = [tuple(r) for r in rows["final"]]


def run_once(name: str, args: argparse.Namespace, tmp: Path, *, tpm: int, long: bool, fifth: bool, fail: bool) -> Run:
    flush()
    rpm = args.rpm
    policies = POLICIES.format(cheap=TWO_CANDIDATES if fail else ONE_CANDIDATE, rpm=rpm, tpm=tpm)
    fleet = Fleet(name, tmp, policies, f"rpm={rpm},tpm={tpm}")
    per_job = 134 if long else 11  # tokens the fake counts per answer (input + output)
    run = Run(name, args.jobs or int(min(rpm, tpm / per_job) * (1 + args.seconds / 60)))
    try:
        if fail:
            for model, status in FAILURES.items():
                post_json(f"{fleet.url}/_fake/fail", {"model": model, "status": status, "rate": 0.2, "seed": 7})
        for _ in range(4):
            fleet.worker("cheap")
        fleet.worker("standard")  # a job that runs out of retries on the cheap tier climbs
        fleet.worker("premium")
        fleet.start("sink", log="sink")
        fleet.wait_ready()
        asyncio.run(drive(run, fleet, policies, long, args.seconds / 2 if fifth else None))
    finally:
        fleet.stop()
    query_in_child(run, fleet.env["CLICKHOUSE_URL"])
    return run


def line(label: str, w: dict[str, float]) -> str:
    return (
        f"  {label:<28} {w['from']:5.1f}-{w['to']:5.1f}s  {w['rpm']:7.1f} rpm  {100 * w['share']:6.1f}% of R"
        f"  {100 * w['binding']:6.1f}% of the binding limit"
        f"  429s {w['n429']:5.0f} ({100 * w['429']:.2f}% of requests)"
    )


def report(run: Run, args: argparse.Namespace, tpm: int, long: bool) -> dict[str, Any]:
    rpm, warm = args.rpm, args.warmup
    end = run.done_at - TAIL_S
    last = run.samples[-1]
    print(f"\n== run {run.name}: {run.jobs} jobs, R = {rpm} rpm, T = {tpm} tpm, settled in {run.done_at:.1f}s")
    binding = "T (tokens)" if long else "R (requests)"
    per_job = 134 if long else 11
    allowed = min(rpm, tpm / per_job)
    print(f"  limit that binds: {binding}; ~{per_job} tokens a request -> T allows {tpm / per_job:.0f} requests/min")
    whole = run.window(0, last.t, rpm, allowed)
    print(line("whole run (burst included)", whole))
    result: dict[str, Any] = {"whole": whole}
    if run.joined_at is not None:
        before = run.window(warm, run.joined_at, rpm, allowed)
        after = run.window(run.joined_at + warm / 2, end, rpm, allowed)
        print(line("steady, 4 workers", before))
        print(line("steady, 5th worker joined", after))
        result.update(before=before, after=after)
    else:
        steady = run.window(warm, end, rpm, allowed)
        print(line(f"steady (from {warm:.0f}s)", steady))
        result["steady"] = steady
    for model, c in sorted(last.stats.items()):
        print(f"  fake answered {model:<28} ok {c['ok']:6}  429 {c['429']:5}  5xx {c['5xx']:5}  other {c['other']}")
    c = run.counts
    accepted, final = run.jobs, c.get("final", 0)
    print(
        f"  batch counters: accepted {accepted}  final {final}  ok {c.get('ok', 0)}  dead {c.get('dead', 0)}"
        f"  escalations {c.get('escalations', 0)}  -> {'none lost' if final == accepted else 'JOBS LOST'}"
    )
    if run.deadletters:
        reasons: dict[str, int] = {}
        for r in run.deadletters:
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        print(f"  dead-letter stream: {len(run.deadletters)} entries, reasons: {reasons}")
    print("  outcome rows by status / error class (ClickHouse):")
    for status, error_class, n in run.outcome_split:
        print(f"    {status:<9} {error_class or '-':<16} {n:6}")
    print("  final outcome of each job (ClickHouse, final = true):")
    for status, tier, model, error_class, n in run.final_split:
        print(f"    {status:<6} {tier:<9} {model:<40} {error_class or '-':<14} {n:6}")
    result["counts"] = c
    result["final_split"] = [list(map(str, r)) for r in run.final_split]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--tpm", type=int, default=200_000, help="T for the runs where R binds")
    p.add_argument("--tpm-binding", type=int, default=40_000, help="T for run 1t")
    p.add_argument("--seconds", type=float, default=70, help="how long the steady part of a run should last")
    p.add_argument("--jobs", type=int, default=0, help="jobs per run (default: from --seconds and the limits)")
    p.add_argument("--warmup", type=float, default=10, help="seconds left out at the start of the steady window")
    p.add_argument("--runs", default="1,1t,2,3")
    p.add_argument("--json", help="write the figures here as well")
    p.add_argument("--query", nargs=2, metavar=("CLICKHOUSE_URL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.query:
        print(json.dumps(query_outcomes(*args.query)))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the child processes on the way out
    tmp = Path(tempfile.mkdtemp(prefix="ladder-bench-rl-"))
    print(f"{os.cpu_count()} cores; worker logs, policies and chdb folders under {tmp}")
    plans = {
        "1": {"tpm": args.tpm, "long": False, "fifth": False, "fail": False},
        "1t": {"tpm": args.tpm_binding, "long": True, "fifth": False, "fail": False},
        "2": {"tpm": args.tpm, "long": False, "fifth": True, "fail": False},
        "3": {"tpm": args.tpm, "long": False, "fifth": False, "fail": True},
    }
    results: dict[str, Any] = {}
    try:
        for name in args.runs.split(","):
            plan = plans[name]
            run = run_once(name, args, tmp, **plan)  # type: ignore[arg-type]
            results[name] = report(run, args, int(plan["tpm"]), bool(plan["long"]))
    finally:
        flush()
    print("\n== summary (targets: >= 95% of R, <= 1% 429s, every job final)")
    for name, r in results.items():
        windows = [(k, r[k]) for k in ("steady", "before", "after") if k in r]
        c = r["counts"]
        text = "  ".join(
            f"{k}: {100 * w['share']:.1f}% of R ({100 * w['binding']:.1f}% of binding), {100 * w['429']:.2f}% 429"
            for k, w in windows
        )
        print(f"  run {name:<3} {text}  | final {c.get('final', 0)} (ok {c.get('ok', 0)}, dead {c.get('dead', 0)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
