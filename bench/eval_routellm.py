"""Every `ladder eval` strategy on RouteLLM's open benchmark: MMLU, GSM8K, and both together.

Each run fits on the train split of its rows and reports on the test split (blake2b of the row id,
20%). Per strategy: APGR, CPT(50%), CPT(80%), strong share and savings at 95% of the strong model's
quality, and APGR minus random's with a bootstrap interval; then the best strategy against the
runner-up, paired on the same resamples. embedding-knn uses the packaged local model; its vectors
are cached under $LADDER_HOME/cache/embeddings (the first run embeds ~15k prompts: minutes).

    python bench/eval_routellm.py [DATASET] [--resamples 1000] [--k 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ladder.eval_cmd import (
    OVERALL,
    CachedEmbedder,
    Result,
    default_cache_dir,
    evaluate,
    print_results,
)
from ladder.output import render
from ladder.settings import Settings
from policies.datasets import LabelledSet, load_dataset, split_mask
from policies.embedding import Embedder
from policies.evaluation import bootstrap_apgr
from policies.scorers import REFERENCE_ONLY, SCORERS, ScorerOptions, build_scorer

DEFAULT_DATASET = "/work/shared/data/routellm/routellm_open_benchmark.jsonl"
RUNS = (("MMLU", ["mmlu"]), ("GSM8K", ["gsm8k"]), ("MMLU + GSM8K", ["mmlu", "gsm8k"]))
out = Console(width=170)
err = Console(stderr=True)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _summary_row(run: str, r: Result) -> list[Any]:
    s, at, b = r.summary, r.summary.at95, r.vs_random
    interval = "-" if b is None else f"{b.delta:+.3f} [{b.low:+.3f}, {b.high:+.3f}]" + (" *" if b.significant else "")
    return [
        run,
        r.router + (" (ref)" if r.reference else ""),
        "-" if s.apgr is None else f"{s.apgr:.3f}",
        _pct(s.cpt50),
        _pct(s.cpt80),
        _pct(at.strong_share if at else None),
        _pct(at.savings if at else None),
        interval,
    ]


def _run(title: str, data: LabelledSet, names: list[str], options: ScorerOptions, resamples: int) -> list[list[Any]]:
    test = split_mask(data)
    train, rows = data.take(~test), data.take(test)
    scores = {}
    for name in names:
        started = time.perf_counter()
        scorer = build_scorer(name, options)
        scorer.fit(train)
        scores[name] = scorer.score(rows)
        err.print(
            f"{title}: {name} fitted on {len(train):,} and scored {len(rows):,} in {time.perf_counter() - started:.1f}s"
        )
    results, refs = evaluate(rows, scores, resamples)
    notes = [f"{title}: {len(rows):,} test rows, strategies fitted on {len(train):,} train rows"]
    out.rule(title)
    print_results(results, refs, notes, "table", out)
    overall = sorted(
        (r for r in results if r.source == OVERALL and not r.reference and r.summary.apgr is not None),
        key=lambda r: r.summary.apgr or 0.0,
        reverse=True,
    )
    if len(overall) >= 2:
        best, second = overall[0], overall[1]
        paired = bootstrap_apgr(
            scores[best.router], rows.weak, rows.strong, baseline=scores[second.router], resamples=resamples
        )
        if paired is not None:
            verdict = "significant" if paired.significant else "not significant"
            out.print(
                f"{title}: best {best.router} - runner-up {second.router}: APGR {paired.delta:+.3f} "
                f"[{paired.low:+.3f}, {paired.high:+.3f}] ({verdict})"
            )
    refs_overall = [r for r in refs if r.source == OVERALL and r.router in ("random", "oracle")]
    return [_summary_row(title, r) for r in [*(r for r in results if r.source == OVERALL), *refs_overall]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", default=DEFAULT_DATASET)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    settings = Settings.from_env()
    loaded = load_dataset(Path(args.dataset))
    err.print(f"{len(loaded.data):,} rows, {loaded.contaminated} contaminated dropped, {len(loaded.rejects)} rejected")
    made: list[Embedder] = []

    def embedder() -> Embedder:
        if not made:
            from worker.embedders import LocalEmbedder

            made.append(CachedEmbedder(LocalEmbedder(), default_cache_dir(settings), err))
        return made[0]

    names = [n for n in SCORERS if n not in REFERENCE_ONLY]
    options = ScorerOptions(k=args.k, policies=settings.policies, embedder=embedder)
    summary: list[list[Any]] = []
    for title, sources in RUNS:
        summary += _run(title, loaded.data.of_sources(sources), names, options, args.resamples)
    out.rule("summary (overall of each run; test split)")
    columns = ["run", "strategy", "apgr", "cpt50 %", "cpt80 %", "strong % at 95", "savings % at 95", "apgr - random"]
    render("ladder eval on RouteLLM's benchmark", columns, summary, "table", out)
    out.print("* = the 95% bootstrap interval excludes 0; costs: Haiku 3.5 $1/$5 weak, Sonnet 3.5 $3/$15 strong")
    return 0


if __name__ == "__main__":
    sys.exit(main())
