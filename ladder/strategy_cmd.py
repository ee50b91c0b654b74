"""`ladder strategy build --from CURRENT --name NEW`: the next strategy version, from scored jobs.

Reads the labelled scores of past jobs from ClickHouse (escalations, shadow comparisons, feedback:
worker/clickhouse.py's `scores`), turns them into one label per job (policies/labels.py), merges
them over the current strategy's examples and writes three files beside the policies file:

- NEW.examples.jsonl: {"text", "tier"} lines, the embedding router's examples;
- NEW.holdout.jsonl: the held-out labels ({"text", "tier", "job_id", ...}, with the job's token
  counts when its final outcome is stored), for `ladder eval --labelled ... --against CURRENT`;
- NEW.toml: a strategy file holding only what differs from the top-level sections: the source
  strategy's own rules and classifier changes, and [embedding] on with the new examples (and a
  `premium_score` recalibrated on them when a premium share is asked for).

It then prints the lines that make NEW a strategy of the policies file, and an experiment block to
try it on a tenth of the traffic once the comparison says it is better. Nothing is switched here.

This module plans the build, runs its steps and prints the result; the reads are in
strategy_inputs.py, the files and the lines for the policies file in strategy_file.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from rich.console import Console
from rich.markup import escape

from ladder.output import render
from ladder.report import ReportError, parse_day
from ladder.settings import Settings, redacted_url
from ladder.strategy_file import (
    EXPERIMENT_SHARE,
    BuildError,
    Plan,
    check_loads,
    experiment_lines,
    policies_lines,
    strategy_sections,
    strategy_toml,
    toml_value,
    write_files,
)
from ladder.strategy_inputs import current_examples, job_texts, read_scores, token_counts
from policies.calibration import cut_for_share
from policies.config import Policies, PolicyError
from policies.embedding import Vectors, knn_vote
from policies.embedding_router import ExamplesError
from policies.labels import Built, LabelledExample, LabelSummary, build_examples, choose_labels
from worker.clickhouse import ClickHouse
from worker.provider import ProviderError

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

OUTPUT_FORMATS = ("table", "json")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a TOML key and a file name alike
_CALIBRATION_FOLDS = 5
_QUERY_CHUNK = 1024  # examples scored at once: a chunk's similarity matrix stays small

HELP = """Build the next strategy version from the labelled scores of past jobs (escalations, shadow
comparisons, feedback) and write NEW.examples.jsonl, NEW.holdout.jsonl and NEW.toml. Nothing is
switched: the command prints the lines to add to the policies file. It reads ClickHouse; with the
embedded chdb (CLICKHOUSE_URL unset or chdb://) only one process may open its folder, so run it
while no sink or `ladder run` is running."""


class NoLabels(BuildError):
    """Nothing to build from: exit 1."""


def add_strategy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("strategy", help="build the next routing strategy version from scored jobs")
    s_sub = s.add_subparsers(dest="strategy_command", required=True)
    b = s_sub.add_parser("build", help="labelled scores -> a new strategy's examples and file", description=HELP)
    b.add_argument("--from", dest="source", help="the strategy to start from (default: the policies' strategy)")
    b.add_argument("--name", required=True, help="the new strategy's name (also its files' names)")
    b.add_argument("--since", help="first day of scores, YYYY-MM-DD or 30d (days back); UTC")
    b.add_argument("--until", help="last day of scores, inclusive, YYYY-MM-DD or 1d")
    b.add_argument(
        "--jobs",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE.jsonl",
        help="job files to take texts from for labels whose scores carry none (feedback)",
    )
    b.add_argument("--out", help="folder for the files (default: the policies file's folder, else .)")
    b.add_argument("--holdout", type=float, default=0.2, help="share of labelled jobs held out (default 0.2)")
    b.add_argument(
        "--premium-share",
        type=float,
        help="recalibrate premium_score on the new examples for this top-tier share "
        "(default: the source's embedding.premium_share_target; unset: no cut)",
    )
    b.add_argument("--force", action="store_true", help="overwrite files left by an earlier build")
    b.add_argument("--format", choices=OUTPUT_FORMATS, default="table")


def _policies_file(args: argparse.Namespace) -> Path | None:
    chosen = getattr(args, "policies", None) or os.environ.get("LADDER_POLICIES")
    return Path(chosen) if chosen else None


def _day(text: str | None, option: str) -> date | None:
    return parse_day(text, option, datetime.now(UTC).date()) if text else None


def _share(args: argparse.Namespace, chosen: Policies) -> float | None:
    share = args.premium_share if args.premium_share is not None else chosen.embedding.premium_share_target
    if share is not None and not 0.0 < share < 1.0:
        raise BuildError(f"--premium-share: {share} must be between 0 and 1")
    return share


def plan_build(args: argparse.Namespace) -> Plan:
    settings = Settings.from_env(getattr(args, "policies", None))
    policies = settings.policies
    source = args.source or policies.routing_strategy
    if source not in policies.strategy_names:
        raise BuildError(f"--from: unknown strategy '{source}' (strategies: {', '.join(policies.strategy_names)})")
    if not _NAME.match(args.name) or args.name == source:
        raise BuildError(f"--name: '{args.name}' must be letters, digits, '_', '-' or '.', and not the source")
    if args.name in policies.strategy_names and not args.force:
        raise BuildError(f"--name: '{args.name}' is a strategy of the policies file already (--force to rebuild it)")
    if not 0.0 <= args.holdout < 1.0:
        raise BuildError(f"--holdout: {args.holdout} must be from 0 up to (not including) 1")
    policies_file = _policies_file(args)
    out_dir = Path(args.out) if args.out else (policies_file.parent if policies_file else Path.cwd())
    plan = Plan(
        settings,
        policies_file,
        source,
        args.name,
        out_dir,
        _day(args.since, "--since"),
        _day(args.until, "--until"),
        args.holdout,
        _share(args, policies.for_strategy(source)),
    )
    existing = [str(p) for p in plan.files.values() if p.exists()]
    if existing and not args.force:
        raise BuildError(f"{', '.join(existing)} exist already; --force overwrites them")
    return plan


# ---- opening ClickHouse (the reads themselves: strategy_inputs.py) -------------------------------


def open_clickhouse(settings: Settings) -> ClickHouse:
    try:
        clickhouse = ClickHouse.from_settings(settings)
        clickhouse.migrate()
    except ClickHouseError as e:
        hint = (
            " (the embedded chdb lets one process open its folder: stop the sink or `ladder run` first)"
            if settings.embedded_clickhouse
            else ""
        )
        raise BuildError(f"cannot open ClickHouse at {redacted_url(settings.clickhouse_url)}{hint}: {e}") from None
    return clickhouse


# ---- calibrating the cut --------------------------------------------------------------------------


def cross_fold_top_shares(vectors: Vectors, top: npt.NDArray[np.bool_], k: int) -> npt.NDArray[np.float64]:
    """Each example's top-tier share of the vote among the k nearest examples of the other folds: an
    example never votes for itself, which would put every top-tier example at a share near 1."""
    n = len(vectors)
    folds = np.arange(n) % min(_CALIBRATION_FOLDS, n)
    shares = np.zeros(n, dtype=np.float64)
    for fold in np.unique(folds):
        inside = np.flatnonzero(folds == fold)
        others = folds != fold
        for start in range(0, len(inside), _QUERY_CHUNK):
            rows = inside[start : start + _QUERY_CHUNK]
            shares[rows], _ = knn_vote(vectors[rows], vectors[others], top[others], k)
    return shares


async def _example_vectors(plan: Plan, texts: Sequence[str]) -> Vectors:
    from ladder.eval_cmd import CachedEmbedder  # progress bar per chunk
    from worker.embedders import build_embedder  # the SDKs and torch: only when calibrating
    from worker.vector_cache import cache_dir, cached_vectors

    directory = cache_dir(plan.settings.data_dir)
    chosen = plan.chosen
    embedder = CachedEmbedder(build_embedder(chosen.embedding.embedder, chosen, plan.settings.env), directory, err)
    try:
        # the live router's own cache key: the workers starting on NEW find these vectors ready
        return await cached_vectors(embedder, texts, directory)
    finally:
        await embedder.aclose()


def calibrated_cut(plan: Plan, examples: Sequence[LabelledExample], share: float) -> tuple[float, float]:
    """(premium_score, the share of the examples it sends to the top tier)."""
    top_tier = plan.chosen.tier_names[-1]
    top = np.array([e.tier == top_tier for e in examples], dtype=np.bool_)
    if not top.any() or top.all() or len(examples) < 2:
        raise BuildError(f"--premium-share: cannot calibrate on examples that are all or none '{top_tier}'")
    vectors = asyncio.run(_example_vectors(plan, [e.text for e in examples]))
    scores = cross_fold_top_shares(vectors, top, plan.chosen.embedding.k)
    cut = cut_for_share(scores, share)
    return cut, float((scores >= cut).mean())


# ---- the command ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    plan: Plan
    built: Built
    holdout: list[LabelledExample]
    cut: float | None
    cut_share: float | None


def _labels(plan: Plan, clickhouse: ClickHouse, jobs: Sequence[Path]) -> Built:
    policies = plan.settings.policies
    with err.status("reading scores from ClickHouse"):
        rows = read_scores(clickhouse, plan.since, plan.until)
    choice = choose_labels(rows, policies.tier_names)
    if not choice.labels:
        window = f" from {plan.since or 'the start'} to {plan.until or 'today'}"
        raise NoLabels(
            f"no labelled jobs in the scores{window} ({choice.rows:,} score rows, {choice.ignored:,} without a "
            "label): nothing to build. Labels come from escalations, shadow comparisons and `ladder feedback`."
        )
    missing = choice.without_text()
    texts = job_texts(jobs, missing, policies, err) if jobs and missing else {}
    current = current_examples(plan.chosen)
    built = build_examples(choice, current, policies.tier_names, job_texts=texts, holdout_share=plan.holdout_share)
    if built.summary.without_text == built.summary.labelled_jobs:
        raise NoLabels(
            f"{len(choice.labels):,} labelled jobs, none with a text (feedback rows carry none): "
            "give the job files with --jobs FILE.jsonl"
        )
    return built


def build(plan: Plan, jobs: Sequence[Path]) -> Result:
    clickhouse = open_clickhouse(plan.settings)
    built = _labels(plan, clickhouse, jobs)
    counts = token_counts(clickhouse, [h.job_id for h in built.holdout])
    holdout = [
        msgspec.structs.replace(h, input_tokens=counts[h.job_id][0], output_tokens=counts[h.job_id][1])
        if h.job_id in counts
        else h
        for h in built.holdout
    ]
    cut = cut_share = None
    if plan.share is not None:
        cut, cut_share = calibrated_cut(plan, built.examples, plan.share)
    write_files(plan, built, holdout, strategy_toml(plan, strategy_sections(plan, cut), built.summary))
    check_loads(plan)
    return Result(plan, built, holdout, cut, cut_share)


def run_strategy(args: argparse.Namespace) -> int:
    try:
        plan = plan_build(args)
        result = build(plan, [Path(p) for p in args.jobs])
    except NoLabels as e:
        err.print(f"[red]no labels:[/] {escape(str(e))}", highlight=False)
        return 1
    except (BuildError, PolicyError, ReportError, ExamplesError, ProviderError, OSError, RuntimeError) as e:
        # RuntimeError: a missing embedder key (MissingKeyError) or the local extra not installed
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    print_result(result, args.format)
    return 0


# ---- output ---------------------------------------------------------------------------------------


def _notes(result: Result) -> list[str]:
    plan, s = result.plan, result.built.summary
    notes = []
    if s.without_text:
        notes.append(
            f"{s.without_text:,} labelled jobs skipped: no text in their scores or the --jobs files "
            "(feedback rows carry none)"
        )
    if result.cut is not None:
        notes.append(
            f"premium_score = {result.cut:.6g}: sends {result.cut_share:.1%} of the examples to the top tier "
            f"(asked {plan.share:.1%}; each example scored by the examples of the other folds)"
        )
    elif plan.settings.policies.embedding.premium_score is not None:
        notes.append(
            "no premium share given: NEW inherits the top-level premium_score, calibrated on other examples "
            "(--premium-share recalibrates it)"
        )
    with_tokens = sum(h.output_tokens is not None for h in result.holdout)
    notes.append(f"{with_tokens:,} of {len(result.holdout):,} held-out jobs carry token counts (for costs)")
    return notes


def _summary_rows(s: LabelSummary) -> list[tuple[str, int]]:
    return [
        ("score rows read", s.rows),
        ("rows without a usable label", s.ignored),
        ("labelled jobs", s.labelled_jobs),
        ("skipped: no text", s.without_text),
        ("same text as another labelled job", s.same_text),
        ("held out", s.holdout),
        ("examples before", s.examples_before),
        ("new texts added", s.added),
        ("relabelled", s.relabelled),
        ("dropped: text held out", s.dropped_for_holdout),
        ("examples after", s.examples_after),
    ]


def _source_rows(s: LabelSummary, tiers: Sequence[str]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [source, *(by_tier.get(t, 0) for t in tiers), sum(by_tier.values())] for source, by_tier in s.by_source.items()
    ]
    totals = [sum(r[i + 1] for r in rows) for i in range(len(tiers) + 1)]
    return [*rows, ["TOTAL", *totals]]


def _next_steps(plan: Plan) -> str:
    where = plan.policies_file or "your policies file (a copy of policies/default.toml)"
    holdout = plan.files["holdout"]
    return (
        f"Add to {where}:\n\n{policies_lines(plan)}\n"
        f"Compare before switching:\n\n  ladder eval --labelled {holdout} --strategy {plan.name} "
        f"--against {plan.source}\n\n"
        f"Then try it on {EXPERIMENT_SHARE:.0%} of the traffic:\n\n{experiment_lines(plan)}\n"
        f"and once `ladder report experiment {plan.name}-trial` says it wins, route every job by it:\n\n"
        f"default_strategy = {toml_value(plan.name)}   # a top-level key, above the first [section]\n"
    )


def print_result(result: Result, fmt: str) -> None:
    plan, s = result.plan, result.built.summary
    tiers = plan.settings.policies.tier_names
    if fmt == "json":
        payload = {
            "strategy": plan.name,
            "from": plan.source,
            "files": {k: str(p) for k, p in plan.files.items()},
            "summary": msgspec.to_builtins(s),
            "premium_score": result.cut,
            "premium_share": result.cut_share,
            "policies_lines": policies_lines(plan),
            "experiment_lines": experiment_lines(plan),
            "notes": _notes(result),
        }
        out.print_json(json.dumps(payload))
        return
    render("labelled jobs by source and label tier", ["source", *tiers, "total"], _source_rows(s, tiers), fmt, out)
    render(f"strategy {plan.name} from {plan.source}", ["", "count"], _summary_rows(s), fmt, out)
    for note in _notes(result):
        out.print(escape(note), highlight=False)
    out.print("wrote " + ", ".join(str(p) for p in plan.files.values()), highlight=False)
    out.print(escape(_next_steps(plan)), highlight=False)
