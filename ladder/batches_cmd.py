"""`ladder batches run` and `ladder batches list`: the batch lane's process, and what it has in hand.

`run` submits each tier's waiting batch-lane jobs to the provider's batch API and follows the batches
to their end (worker/batch_lane.py); one process works at a time (a lease in Redis), so a second
replica only waits. SIGTERM/SIGINT end the pass in hand, then exit 0: everything is in Redis, and the
next process carries on. `list` shows each tier's waiting jobs and every open or recently done batch.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime

import structlog
from rich.console import Console

from ladder.app import App
from ladder.exporter_cmd import add_metrics_port
from ladder.messages import LaneBatch
from ladder.output import FORMATS
from ladder.report import Table
from ladder.report_cmd import print_tables
from worker.batch_store import LaneStore
from worker.health import LoopBeat

log = structlog.get_logger("ladder")
out = Console(width=None if sys.stdout.isatty() else 140)

# /healthz fails once the loop has gone this long without starting a pass. A pass may upload a batch of
# up to batch.max_bytes or read and settle a large batch's results, or wait out a slow provider's
# timeouts; a restart only costs the pass in hand (state is in Redis).
PASS_MAX_AGE_S = 15 * 60.0

LIST_COLUMNS = [
    "draft", "tier", "model", "state", "requests", "answered", "to_sync", "failed", "submitted", "provider_batch",
]  # fmt: skip


def add_batches_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("batches", help="the batch lane: submit waiting jobs to provider batch APIs, follow them")
    b_sub = b.add_subparsers(dest="batches", required=True)
    r = b_sub.add_parser("run", help="submit and poll batches until stopped")
    r.add_argument("--burst", action="store_true", help="exit once nothing waits and no batch is open")
    r.add_argument(
        "--eager", action="store_true", help="submit whatever waits at once, not after batch.max_wait_s"
    )  # fmt: skip
    add_metrics_port(r)
    ls = b_sub.add_parser("list", help="jobs waiting per tier, and the open and recently done batches")
    ls.add_argument("--format", choices=FORMATS, default="table")


async def run_batches(app: App, args: argparse.Namespace) -> int:
    if args.batches == "list":
        return await _list(app, args.format)
    lane = app.batch_lane()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("batch lane started", burst=args.burst, eager=args.eager)
    beat = app.heartbeats.watch_loop(LoopBeat("batch lane", PASS_MAX_AGE_S))
    await lane.run(stop, burst=args.burst, eager=args.eager, beat=beat)
    log.info("batch lane stopped")
    return 0


async def _list(app: App, fmt: str) -> int:
    store = LaneStore(app.redis, app.keys)
    waiting = [(tier, await store.pending(tier)) for tier in app.settings.policies.tier_names]
    batches = [b for d in await _recent_drafts(app) if (b := await store.record(d)) is not None]
    print_tables(
        [Table("batch lane: jobs waiting to be submitted", ["tier", "jobs"], waiting, []),
         Table("batch lane: batches", LIST_COLUMNS, [_row(b) for b in batches], [])],
        fmt,
    )  # fmt: skip
    return 0


async def _recent_drafts(app: App) -> list[str]:
    """Open batches, then done ones whose records are still kept (worker/batch_store.py DONE_TTL_S)."""
    store = LaneStore(app.redis, app.keys)
    drafts = await store.open_drafts()
    prefix = app.keys.lane_batch("")
    async for key in app.redis.scan_iter(match=prefix + "*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        draft = name.removeprefix(prefix)
        if ":" not in draft and draft not in drafts:  # not a batch's request hash
            drafts.append(draft)
    return drafts


def _row(b: LaneBatch) -> tuple[object, ...]:
    submitted = datetime.fromtimestamp(b.submitted_at, UTC).strftime("%Y-%m-%d %H:%M:%S") if b.submitted_at else ""
    return (b.draft, b.tier, f"{b.provider}/{b.model}", b.state, b.size, b.answered, b.fell_back, b.failed, submitted,
            b.provider_batch_id)  # fmt: skip
