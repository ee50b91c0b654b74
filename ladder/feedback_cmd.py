"""`ladder feedback JOB_ID --score S [--correction TEXT]`, or `ladder feedback --file FEEDBACK.jsonl`:
scores from 0 to 1 on finished jobs, stored beside their outcomes (producer/feedback.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ladder.app import App
from ladder.rejects import RejectsFile
from producer.feedback import FeedbackError, give_feedback_file

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def add_feedback_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser(
        "feedback",
        help="score finished jobs from 0 to 1 (low scores on lower tiers label jobs for the next strategy)",
    )
    f.add_argument("job_id", nargs="?", help="the job's id, as submitted")
    f.add_argument("--score", type=float, help="0 (useless) to 1 (perfect)")
    f.add_argument("--correction", default="", help="what the answer should have been")
    f.add_argument("--file", help='JSONL of {"job_id": ..., "score": ..., "correction": ...} lines')
    f.add_argument("--rejects", help="where bad lines of --file go (default: FILE.rejects.jsonl)")


async def run_feedback(app: App, args: argparse.Namespace) -> int:
    if args.file:
        if args.job_id or args.score is not None:
            err.print("[red]error:[/] give either JOB_ID --score or --file, not both")
            return 2
        return await _from_file(app, Path(args.file), Path(args.rejects or f"{args.file}.rejects.jsonl"))
    if not args.job_id or args.score is None:
        err.print("[red]error:[/] give JOB_ID and --score (or --file)")
        return 2
    try:
        scored = await app.feedback(args.job_id, args.score, args.correction)
    except FeedbackError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    mark = {1: "; routing right", 0: f"; routing wrong: labelled for {scored.label_tier}"}.get(int(scored.routing), "")
    stored = f"feedback {scored.score:g} stored on job {escape(scored.job_id)} ({scored.tier} tier)"
    out.print(stored + mark, highlight=False)
    return 0


async def _from_file(app: App, path: Path, rejects_path: Path) -> int:
    with RejectsFile(rejects_path, err) as rejects:
        report = await give_feedback_file(app.redis, app.keys, app.settings.policies, path, rejects.add)
    out.print(
        f"{report.lines:,} lines: {report.stored:,} scores stored, {report.rejected:,} rejected"
        + (f" (see {rejects_path})" if report.rejected else ""),
        highlight=False,
    )
    return 0
