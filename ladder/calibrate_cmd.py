"""`ladder calibrate DATASET.jsonl --premium-share 0.3`: the embedding router's cut for a premium share.

The dataset is a RouteLLM-style benchmark file: one JSON object a line with `prompt`, `weak_score`
and `strong_score` (the quality of the weak and the strong model's answer, e.g. 0/1) and optionally
`contaminated` (rows that leaked into training data are dropped). Each prompt is scored by the
router of the [embedding] section (policies/embedding_router.py: the share of its nearest examples'
vote on the top tier), and the cut is chosen as in policies/calibration.py. No Redis, no ClickHouse;
only the embedder is called, and its vectors are cached under $LADDER_HOME/cache/embeddings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.markup import escape

from ladder.output import FORMATS, render
from ladder.settings import Settings
from policies.calibration import Calibration, calibrate
from policies.config import PolicyError, examples_path
from policies.embedding_router import EmbeddingRouter, ExamplesError, parse_examples
from worker.provider import ProviderError
from worker.vector_cache import cache_dir, cached_vectors

out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class DatasetError(ValueError):
    pass


class _Row(msgspec.Struct):
    prompt: str
    weak_score: float | bool  # graded answers come as numbers or as true/false
    strong_score: float | bool
    contaminated: bool = False


class Dataset(msgspec.Struct, frozen=True):
    prompts: list[str]
    weak: npt.NDArray[np.float64]
    strong: npt.NDArray[np.float64]
    dropped: int  # contaminated rows left out


_row_decoder = msgspec.json.Decoder(_Row)


def read_dataset(path: Path) -> Dataset:
    """A minimal reader of the benchmark format; every bad line is an error naming its number."""
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    dropped = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = _row_decoder.decode(raw)
            except msgspec.DecodeError as e:
                raise DatasetError(f"{path} line {number}: {e}") from None
            if row.contaminated:
                dropped += 1
                continue
            prompts.append(row.prompt)
            weak.append(float(row.weak_score))
            strong.append(float(row.strong_score))
    if not prompts:
        raise DatasetError(f"{path}: no usable rows ({dropped} contaminated)")
    return Dataset(prompts, np.array(weak), np.array(strong), dropped)


def add_calibrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("calibrate", help="choose the embedding router's cut for a premium share")
    c.add_argument("dataset", help="JSONL rows of prompt, weak_score, strong_score[, contaminated]")
    c.add_argument(
        "--premium-share",
        type=float,
        help="share of prompts for the top tier (default: embedding.premium_share_target)",
    )
    c.add_argument("--embedder", help="'local' or PROVIDER:MODEL (default: embedding.embedder)")
    c.add_argument("--examples", help="labelled examples JSONL (default: embedding.examples)")
    c.add_argument("--format", choices=FORMATS, default="table")


async def _scores(
    settings: Settings, spec: str, examples_file: Path, prompts: list[str]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    from worker.embedders import build_embedder  # the SDKs: imported when calibrating, not by every command

    policies = settings.policies
    examples = parse_examples(examples_file.read_text(encoding="utf-8"), policies.tier_names, str(examples_file))
    embedder = build_embedder(spec, policies, settings.env)
    directory = cache_dir(settings.data_dir)
    try:
        example_vectors = await cached_vectors(embedder, [e.text for e in examples], directory)
        prompt_vectors = await cached_vectors(embedder, prompts, directory)
    finally:
        await embedder.aclose()
    e = policies.embedding
    router = EmbeddingRouter.from_examples(examples, example_vectors, policies.tier_names, k=e.k, threshold=e.threshold)
    return router.complex_share(prompt_vectors)


def _print(result: Calibration, ambiguous: float, threshold: float, dataset: Dataset, args: argparse.Namespace) -> None:
    columns = ["cut", "premium share", "expected quality", "weak only", "strong only", "recovered", "rows"]
    values: list[Any] = [
        result.cut,
        result.premium_share,
        result.expected_quality,
        result.weak_quality,
        result.strong_quality,
        result.recovered,
        result.rows,
    ]
    if args.format == "table":  # render's table shows floats with one decimal: too coarse for shares
        values = [f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else v) for v in values]
    notes = [
        f"set premium_score = {result.cut:.6g} in [embedding] to route by this cut",
        f"{ambiguous:.1%} of the prompts are below embedding.threshold = {threshold} (the live router sends "
        "those to the LLM classifier; they are scored here all the same)",
    ]
    if abs(result.premium_share - result.target_share) * result.rows > 1:
        notes.append(
            f"tied scores at the cut: {result.premium_share:.1%} reach the top tier, not {result.target_share:.1%}"
        )
    if dataset.dropped:
        notes.append(f"{dataset.dropped} contaminated rows dropped")
    if args.format == "table":  # the table's notes are rich markup: "[embedding]" would vanish as a tag
        notes = [escape(n) for n in notes]
    render(f"calibration on {args.dataset}", columns, [values], args.format, out, notes)


def run_calibrate(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(getattr(args, "policies", None))
        policies = settings.policies
        share = args.premium_share if args.premium_share is not None else policies.embedding.premium_share_target
        if share is None or not 0.0 < share < 1.0:
            raise PolicyError(f"--premium-share: give a share between 0 and 1 (got {share})")
        dataset = read_dataset(Path(args.dataset))
        examples_file = Path(args.examples) if args.examples else examples_path(policies)
        spec = args.embedder or policies.embedding.embedder
        scores, best = asyncio.run(_scores(settings, spec, examples_file, dataset.prompts))
    except (PolicyError, DatasetError, ExamplesError, ProviderError, OSError, RuntimeError) as e:
        # RuntimeError: a missing key (MissingKeyError) or the local extra not installed
        err.print(f"[red]error:[/] {e}", highlight=False)
        return 2
    threshold = policies.embedding.threshold
    result = calibrate(scores, dataset.weak, dataset.strong, share)
    _print(result, float((best < threshold).mean()), threshold, dataset, args)
    return 0
