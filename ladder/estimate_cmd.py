"""`ladder estimate FILE`: what a file of jobs would cost under the current policies, before spending.

The file is read as `ladder enqueue` reads it (producer/intake.py: streamed, bad lines named and
written to FILE.rejects.jsonl) and every good job is routed by the rules, offline
(policies/estimate.py). The undecided band is split by the embedding router when [embedding] is on
with the local embedder; a provider embedder would be a provider call, so then (and with embeddings
off) band jobs are undecided and priced at the classifier's safe tier. No provider is called and
neither Redis nor ClickHouse is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from ladder.messages import Rejection
from ladder.output import FORMATS, render
from ladder.rejects import RejectsFile
from ladder.settings import Settings
from policies.config import PolicyError
from policies.embedding_router import ExamplesError
from policies.estimate import BandRouter, Estimate, Estimator, TierSplit
from policies.tokens import estimate_tokens
from producer.intake import JobValidator, read_lines

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
_json = msgspec.json.Encoder()
_PROGRESS_EVERY = 4096  # lines between progress-bar updates


class FileEstimate(msgspec.Struct, frozen=True):
    """The JSON output: the file's lines and rejects, the estimate, and the notes of the table."""

    file: str
    lines: int
    rejected: int
    rejects_file: str | None
    estimate: Estimate
    notes: list[str]


def add_estimate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("estimate", help="projected cost of a JSONL job file under the policies, no provider call")
    e.add_argument("file")
    e.add_argument("--rejects", help="where bad lines go (default: FILE.rejects.jsonl)")
    e.add_argument("--format", choices=FORMATS, default="table")


def band_router(settings: Settings) -> tuple[BandRouter | None, str]:
    """The embedding router over the local embedder when [embedding] asks for it, with a note."""
    e = settings.policies.embedding
    if not e.enabled:
        return None, "embedding routing is off: undecided band jobs would all be sent to the classifier model"
    if e.embedder != "local":
        return None, (
            f"embedding routing uses '{e.embedder}', a provider call this estimate does not make: "
            "band jobs are counted as undecided"
        )
    from worker.embedders import LocalEmbedder  # torch: loaded only when the local embedder is asked for
    from worker.vector_cache import cache_dir, load_embedding_router

    embedder = LocalEmbedder()
    router = asyncio.run(load_embedding_router(settings.policies, embedder, cache_dir(settings.data_dir)))

    def route(texts: Sequence[str]) -> list[str | None]:
        return router.route_many(embedder.embed_sync(texts))

    return route, "band jobs are split by the embedding router (local embedder) before the classifier"


def estimator(settings: Settings, band: BandRouter | None) -> Estimator:
    """An Estimator whose classifier calls are sized as the classifier worker makes them."""
    from worker.classifier_worker import CLASSIFIER_PROMPT, MAX_CLASSIFIED_CHARS

    return Estimator(
        settings.policies,
        band_router=band,
        classifier_prompt_tokens=estimate_tokens(CLASSIFIER_PROMPT + "<task>\n\n</task>"),
        classifier_text_chars=MAX_CLASSIFIED_CHARS,
    )


def _read(path: Path, validator: JobValidator, est: Estimator, rejects_path: Path) -> tuple[int, int]:
    """Every line of the file into the estimator or the rejects file: (lines, rejected)."""
    lines = 0
    size = path.stat().st_size
    with (
        RejectsFile(rejects_path, err) as rejects,
        Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err
        ) as bar,
    ):
        task = bar.add_task(f"estimate {path.name}", total=size)
        for number, raw, done in read_lines(path):
            lines += 1
            parsed = validator.parse_line(number, raw)
            if isinstance(parsed, Rejection):
                rejects.add(parsed)
            else:
                est.add(parsed)
            if lines % _PROGRESS_EVERY == 0:
                bar.update(task, completed=done)
        bar.update(task, completed=size)
    return lines, rejects.count


def _notes(e: Estimate, band_note: str, lines: int, rejected: int, rejects_path: Path) -> list[str]:
    notes = [
        f"{e.jobs:,} jobs from {lines:,} lines"
        + (f"; {rejected:,} lines rejected (see {rejects_path})" if rejected else ""),
        "output tokens are each job's max_output_tokens, an upper bound; input tokens are ~4 characters a token",
        f"{e.undecided:,} jobs of the undecided band are priced at classifier.safe_tier '{e.safe_tier}' "
        f"(the conservative choice); their {e.classifier_calls:,} classifier calls on {e.classifier_model} "
        f"would cost ${e.classifier_cost:,.4f} (one a job: repeated prompts share a decision, so fewer may be made)",
        band_note,
    ]
    if e.embedded:
        notes.append(f"{e.embedded:,} band jobs were decided by the embedding router")
    if e.guarded:
        notes.append(f"{e.guarded:,} band jobs address the classifier: safe tier '{e.safe_tier}', no classifier call")
    return notes


def _tokens_and_cost(t: TierSplit) -> tuple[int, int, Decimal]:
    return t.input_tokens, t.output_tokens, t.cost


def _print(e: Estimate, notes: list[str], fmt: str) -> None:
    pct = fmt == "table"  # shares as percentages for people, plain fractions for machines
    tier_rows = [
        (t.tier, t.model, t.jobs, f"{t.share:.1%}" if pct else t.share, t.undecided, *_tokens_and_cost(t))
        for t in e.tiers
    ]
    tier_columns = ["tier", "model", "jobs", "share", "undecided", "input tokens", "max output tokens", "cost"]
    scenario_rows = [
        [s.name, s.jobs_cost, s.routing_cost, s.cost, s.saving, f"{s.saving_pct:.1f}%" if pct else s.saving_pct]
        for s in e.scenarios
    ]
    top = e.tiers[-1].tier
    scenario_columns = [
        "scenario",
        "model calls cost",
        "classifier calls cost",
        "total",
        f"saving vs all on {top}",
        "saving %",
    ]
    render("projected cost by tier (current policies)", tier_columns, tier_rows, fmt, out)
    if fmt == "csv":
        out.file.write("\n")
    render("scenarios", scenario_columns, scenario_rows, fmt, out, [escape(n) for n in notes] if pct else ())


def run_estimate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    rejects_path = Path(args.rejects or f"{path}.rejects.jsonl")
    try:
        settings = Settings.from_env(getattr(args, "policies", None))
        band, band_note = band_router(settings)
        est = estimator(settings, band)
        lines, rejected = _read(path, JobValidator(settings.policies), est, rejects_path)
    except (PolicyError, ExamplesError, OSError, RuntimeError) as e:
        # RuntimeError: the local extra not installed
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    result = est.result()
    notes = _notes(result, band_note, lines, rejected, rejects_path)
    if args.format == "json":
        rejects_file = str(rejects_path) if rejected else None
        report = FileEstimate(str(path), lines, rejected, rejects_file, result, notes)
        out.print_json(_json.encode(report).decode())
        return 0
    _print(result, notes, args.format)
    return 0
