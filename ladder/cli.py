"""The `ladder` command: enqueue, worker, sink, run, results, report."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ladder.app import App, open_app
from ladder.batches_cmd import add_batches_parser, run_batches
from ladder.calibrate_cmd import add_calibrate_parser, run_calibrate
from ladder.customers_cmd import add_customers_parser, run_budgets, run_customers
from ladder.estimate_cmd import add_estimate_parser, run_estimate
from ladder.eval_cmd import add_eval_parser, run_eval
from ladder.exporter_cmd import add_exporter_parser, add_metrics_port, probes_served, run_exporter
from ladder.feedback_cmd import add_feedback_parser, run_feedback
from ladder.logs import configure_logging
from ladder.messages import Lane
from ladder.output import FORMATS, render
from ladder.rejects import RejectsFile
from ladder.report import Filters, ReportError, Reports
from ladder.report_cmd import add_report_parser, print_tables, run_report
from ladder.results import batch_counts, batch_records, result_line
from ladder.settings import Settings, redacted_url
from ladder.strategy_cmd import add_strategy_parser, run_strategy
from policies.config import CLASSIFY_QUEUE, SHADOW_QUEUE, PolicyError
from producer.submit import SubmitReport
from worker.arq_worker import DEFAULT_GRACE_PERIOD_S
from worker.classifier_worker import classifier_worker
from worker.providers import MissingKeyError
from worker.shadow_worker import shadow_worker
from worker.sink import CLAIM_EVERY_S, CLAIM_IDLE_MS, quiet_client_logs
from worker.tier_worker import tier_worker

log = structlog.get_logger("ladder")
# Piped output gets a fixed, wide page instead of rich's 80 columns, so tables are not truncated.
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
_json = msgspec.json.Encoder()


def _progress(console: Console, *columns: Any) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), *columns, TimeElapsedColumn(), console=console)


async def _enqueue_file(
    app: App, path: Path, batch: str, rejects_path: Path, quiet: bool, lane: Lane | None
) -> SubmitReport:
    if not path.is_file():  # before the rejects file is opened beside it, which would name the wrong file
        raise FileNotFoundError(f"{path}: no such file")
    with RejectsFile(rejects_path, err, show=not quiet) as rejects, _progress(err, DownloadColumn()) as bar:
        task = bar.add_task(f"enqueue {path.name}", total=path.stat().st_size)
        report = await app.producer(lane).submit_file(
            path, batch, rejects.add, lambda done: bar.update(task, completed=done)
        )
        bar.update(task, completed=path.stat().st_size)
    return report


def _print_submit(report: SubmitReport, fmt: str, rejects_path: Path) -> None:
    rows = [(tier, n) for tier, n in sorted(report.routed.items())]
    notes = [
        f"batch {report.batch}: {report.lines:,} lines, {report.accepted:,} accepted, "
        f"{report.duplicates:,} duplicates skipped, {report.rejected:,} rejected"
        + (f" (see {rejects_path})" if report.rejected else "")
    ]
    if fmt == "json":
        out.print_json(_json.encode(report).decode())
        return
    render("jobs queued per tier", ["queue", "jobs"], rows, fmt, out, notes)


async def cmd_enqueue(app: App, args: argparse.Namespace) -> int:
    path = Path(args.file)
    rejects = Path(args.rejects or f"{path}.rejects.jsonl")
    report = await _enqueue_file(app, path, args.batch, rejects, args.format != "table", _lane(app, args))
    _print_submit(report, args.format, rejects)
    return 0


def _lane(app: App, args: argparse.Namespace) -> Lane | None:
    """The lane asked for with --lane (None: chosen per job)."""
    if args.lane is None:
        return None
    lane = Lane(args.lane)
    if lane is Lane.BATCH and not app.settings.policies.batch.enabled:
        raise PolicyError("--lane batch: the batch lane is off in the policies ([batch] enabled = false)")
    return lane


async def cmd_worker(app: App, args: argparse.Namespace) -> int:
    # SIGTERM/SIGINT: no new jobs, those in flight finish within the grace period, the rest go
    # back to the queue for another worker, then exit 0 (worker/arq_worker.py).
    options = {
        "burst": args.burst,
        "max_jobs": args.concurrency,
        "poll_delay": args.poll_delay,
        "grace_period": args.grace_period,
        "gate": app.backlog(),  # no new jobs while the outcome stream is at its bound
    }
    if args.classifier:
        worker = classifier_worker(await app.classifier_runtime(), **options)
    elif args.shadow:
        worker = shadow_worker(app.shadow_runtime(), **options)
    else:
        if args.tier not in app.settings.policies.tier_names:
            err.print(f"--tier: '{args.tier}' is not a tier ({', '.join(app.settings.policies.tier_names)})")
            return 2
        worker = tier_worker(app.tier_runtime(), args.tier, **options)
    app.heartbeats.watch(worker)  # /healthz fails once its arq poll loop goes quiet
    log.info("worker started", queue=worker.queue_name, burst=args.burst)
    await worker.async_run()
    log.info(
        "worker stopped", queue=worker.queue_name, done=worker.jobs_complete, failed=worker.jobs_failed,
        retried=worker.jobs_retried,  # handed back at a graceful stop, among others
    )  # fmt: skip
    return 0


async def cmd_sink(app: App, args: argparse.Namespace) -> int:
    sink = app.sink(args.batch_size, claim_idle_ms=int(args.claim_after * 1000), claim_every_s=args.claim_every)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, ack it, then exit
        loop.add_signal_handler(sig, stop.set)
    log.info("sink started", consumer=sink.consumer, batch_size=args.batch_size)
    stats = await sink.run(burst=args.burst, stop=stop)
    log.info(
        "sink stopped", inserted=stats.inserted, batches=stats.batches, malformed=stats.malformed,
        replayed=stats.replayed, claimed=stats.claimed, retries=stats.retries,
    )  # fmt: skip
    return 0


async def _wait_settled(app: App, batch: str) -> dict[str, int]:
    with _progress(err, MofNCompleteColumn()) as bar:
        task = bar.add_task("jobs settled", total=None)
        while True:
            counts = await batch_counts(app.redis, app.keys, batch)
            bar.update(task, total=counts.get("accepted", 0), completed=counts.get("final", 0))
            if counts.get("final", 0) >= counts.get("accepted", 0):
                return counts
            await asyncio.sleep(0.2)


async def _wait_shadow_drained(app: App) -> None:
    """Every job's settle queued its shadow task in the same transaction, so once the jobs are
    settled the queue only shrinks; arq removes a task from it when the task finishes, not when
    it starts, so an empty queue also means nothing is in flight."""
    if not app.settings.policies.shadow.enabled:
        return  # no shadow worker runs here: tasks left by earlier runs wait for `ladder worker --shadow`
    queue = app.keys.queue(SHADOW_QUEUE)
    if not await app.redis.zcard(queue):
        return
    with _progress(err, TextColumn("{task.completed:,.0f} left")) as bar:
        task = bar.add_task("shadow evaluations", total=None)
        while left := await app.redis.zcard(queue):
            bar.update(task, completed=left)
            await asyncio.sleep(0.2)


async def cmd_run(app: App, args: argparse.Namespace) -> int:
    path = Path(args.file)
    batch = args.batch or path.stem
    rejects = Path(args.rejects or f"{path}.rejects.jsonl")
    started = time.perf_counter()
    report = await _enqueue_file(app, path, batch, rejects, args.format != "table", _lane(app, args))
    if args.format == "table":
        _print_submit(report, "table", rejects)
    sink = app.sink()
    stop_sink = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(stop=stop_sink))
    done = asyncio.Event()
    tiers = app.settings.policies.tier_names
    workers = asyncio.create_task(app.workers_until(done, tiers, classifier=True))
    # The batch lane submits what waits at once: this run ends when its jobs do (hours, for a real
    # provider's batch). With simulated providers a batch ends as it is submitted.
    lane = asyncio.create_task(app.batch_lane().run(done, eager=True, tick_s=0.2))
    counts = await _wait_settled(app, batch)
    await _wait_shadow_drained(app)
    done.set()
    await workers
    await lane
    stop_sink.set()
    await sink_task
    await sink.run(burst=True)  # whatever the workers streamed last
    rows = await asyncio.to_thread(_final_rows, app, batch)
    if rows < counts.get("accepted", 0):
        err.print(f"[red]only {rows} of {counts['accepted']} final outcomes reached ClickHouse[/]")
        return 1
    elapsed = time.perf_counter() - started
    await _print_spend(app, "tier", batch, args.format)
    if args.format == "table":
        out.print(
            f"{counts.get('final', 0):,} jobs settled in {elapsed:.1f}s: {counts.get('ok', 0):,} ok, "
            f"{counts.get('dead', 0):,} dead-lettered, {counts.get('escalations', 0):,} escalations. "
            f"Results: ladder results --batch {batch} -o {batch}.results.jsonl"
        )
    return 0


def _final_rows(app: App, batch: str) -> int:
    rows = app.clickhouse().query(
        "SELECT count() FROM {db}.outcomes FINAL WHERE batch = {batch:String} AND final", {"batch": batch}
    )
    return int(rows[0][0])


async def _print_spend(app: App, by: str, batch: str, fmt: str) -> None:
    reports = Reports(app.clickhouse(), app.settings.policies)
    table = await asyncio.to_thread(reports.spend, Filters(batch=batch), by)
    print_tables([table], fmt)


async def cmd_results(app: App, args: argparse.Namespace) -> int:
    tally: dict[str, int] = {}
    target = Path(args.output)
    with target.open("wb") as f:
        async for record in batch_records(app.redis, app.keys, args.batch):
            f.write(_json.encode(result_line(record)) + b"\n")
            tally[record.status] = tally.get(record.status, 0) + 1
    if not tally:
        err.print(f"batch '{args.batch}' has no jobs (or its records expired)")
        return 1
    render(f"results of batch {args.batch} -> {target}", ["status", "jobs"], sorted(tally.items()), args.format, out)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ladder", description=__doc__)
    p.add_argument("--policies", help="policies file (default: $LADDER_POLICIES, else the packaged default)")
    sub = p.add_subparsers(dest="command", required=True)

    def fmt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--format", choices=FORMATS, default="table")

    def lane_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--lane", choices=[lane.value for lane in Lane],
            help="every job on this lane: sync, or batch (provider batch APIs, about half the price, answered "
            "within 24 h); default: batch for jobs whose deadline is at least batch.min_deadline_s away",
        )  # fmt: skip

    e = sub.add_parser("enqueue", help="stream a JSONL file of jobs into the queues")
    e.add_argument("file")
    e.add_argument("--batch", required=True)
    e.add_argument("--rejects", help="where bad lines go (default: FILE.rejects.jsonl)")
    lane_option(e)
    fmt(e)
    w = sub.add_parser("worker", help="run a tier worker, the classifier worker or the shadow worker")
    g = w.add_mutually_exclusive_group(required=True)
    g.add_argument("--tier")
    g.add_argument("--classifier", action="store_true", help=f"consume the {CLASSIFY_QUEUE} queue")
    g.add_argument("--shadow", action="store_true", help=f"consume the {SHADOW_QUEUE} queue (shadow evaluation)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--concurrency", type=int, default=64, help="jobs in flight in this process")
    w.add_argument("--poll-delay", type=float, default=0.05, help="seconds between queue polls")
    w.add_argument(
        "--grace-period", type=float, default=DEFAULT_GRACE_PERIOD_S, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long jobs in flight may finish before they are handed back to the queue "
        "(set terminationGracePeriodSeconds a few seconds above it)",
    )  # fmt: skip
    add_metrics_port(w)
    s = sub.add_parser("sink", help="move outcome events into ClickHouse")
    s.add_argument("--burst", action="store_true", help="exit when no event is left")
    s.add_argument("--batch-size", type=int, default=5000)
    s.add_argument(
        "--claim-after", type=float, default=CLAIM_IDLE_MS / 1000, metavar="SECONDS",
        help="take over entries another sink has held unacked this long (it died mid-batch)",
    )  # fmt: skip
    s.add_argument(
        "--claim-every", type=float, default=CLAIM_EVERY_S, metavar="SECONDS",
        help="how often a running sink looks for such entries (it also does when it starts)",
    )  # fmt: skip
    add_metrics_port(s)
    add_exporter_parser(sub)
    r = sub.add_parser("run", help="enqueue a file and process it to the end in this one process")
    r.add_argument("file")
    r.add_argument("--batch", help="batch name (default: the file's stem)")
    r.add_argument("--rejects")
    lane_option(r)
    fmt(r)
    res = sub.add_parser("results", help="write one JSON line per job of a batch")
    res.add_argument("--batch", required=True)
    res.add_argument("-o", "--output", required=True)
    fmt(res)
    add_report_parser(sub)
    add_calibrate_parser(sub)
    add_eval_parser(sub)
    add_estimate_parser(sub)
    add_customers_parser(sub)
    add_feedback_parser(sub)
    add_strategy_parser(sub)
    add_batches_parser(sub)
    return p


# Commands that need neither Redis nor ClickHouse run without opening them.
OFFLINE: dict[str, Callable[[argparse.Namespace], int]] = {
    "calibrate": run_calibrate,
    "eval": run_eval,
    "estimate": run_estimate,
    "strategy": run_strategy,  # reads ClickHouse only: no Redis to open
}

COMMANDS: dict[str, Callable[[App, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "enqueue": cmd_enqueue,
    "worker": cmd_worker,
    "sink": cmd_sink,
    "run": cmd_run,
    "results": cmd_results,
    "report": run_report,
    "customers": run_customers,
    "budgets": run_budgets,
    "feedback": run_feedback,
    "batches": run_batches,
}


async def _main(settings: Settings, args: argparse.Namespace) -> int:
    long_running = args.command in ("worker", "sink", "batches") and not getattr(args, "burst", False)
    async with open_app(settings, wait_for_redis=long_running) as app, probes_served(app, args):
        return await COMMANDS[args.command](app, args)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (a dependency on Linux): a tier worker spends much of its CPU on
    small Redis and HTTP round trips, which uvloop makes cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(args.policies)
    except PolicyError as e:
        err.print(f"[red]policies:[/] {e}", highlight=False)
        return 2
    configure_logging(settings.log_format, settings.env)
    if args.command == "sink":
        quiet_client_logs()  # an outage is one line per try, the sink's own (worker/sink.py)
    try:
        if args.command in OFFLINE:
            return OFFLINE[args.command](args)
        if args.command == "exporter":  # Redis only, opened lazily: no App
            return _run_loop(run_exporter(settings, args))
        return _run_loop(_main(settings, args))
    except (MissingKeyError, PolicyError, ReportError, FileNotFoundError) as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return 2
    except RedisConnectionError as e:  # still down after the connection retries
        err.print(f"[red]error:[/] cannot reach Redis at {redacted_url(settings.redis_url)}: {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
