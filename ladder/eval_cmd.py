"""`ladder eval DATASET.jsonl`: replay labelled routing data through strategies, offline.

No provider is called and no Redis or ClickHouse is opened. Each strategy (policies/scorers.py) is
fitted on the train split and scored on the split asked for; policies/evaluation.py turns scores
into RouteLLM's figures per source and overall, next to all-weak, all-strong, random and oracle.
Embedding strategies embed with the packaged local model; vectors are cached on disk by text, so a
second run, or a run on a subset, embeds nothing again.

`ladder eval --labelled FILE --strategy NEW --against CURRENT` compares strategies of the policies
file instead, on texts labelled with the tier they should go to (the holdout `ladder strategy build`
writes): each text gets the first tier the live system would give it under each strategy, and the
routes are counted against the labels (policies/labels.py), side by side, before anyone switches.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ladder.messages import Job, TaskKind
from ladder.output import FORMATS, render
from ladder.settings import Settings
from policies.config import CLASSIFY_QUEUE, Candidate, Policies, PolicyError
from policies.datasets import (
    DEFAULT_STRONG_PRICE,
    DEFAULT_TEST_FRACTION,
    DEFAULT_WEAK_PRICE,
    DatasetError,
    LabelledSet,
    Loaded,
    ModelPrice,
    load_dataset,
    split_mask,
)
from policies.embedding import Embedder, Vectors
from policies.embedding_router import ExamplesError
from policies.estimate import CLASSIFIER_ANSWER_TOKENS
from policies.evaluation import (
    USD_PLACES,
    Bootstrap,
    Curve,
    Summary,
    bootstrap_apgr,
    curve,
    fixed_route_summary,
    oracle_scores,
    random_curve,
    summarize,
)
from policies.injection import steering_attempt
from policies.labels import LabelledExample, LabelsError, RoutingFigures, parse_labelled, tally
from policies.prices import PriceBook
from policies.rules import RuleRouter
from policies.scorers import NEEDS_EMBEDDER, REFERENCE_ONLY, SCORERS, ScorerOptions, build_scorer
from policies.tokens import estimate_tokens

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

Floats = npt.NDArray[np.float64]
OVERALL = "overall"
REFERENCES = ("all-weak", "all-strong", "random", "oracle")
CURVE_SHARES = np.linspace(0.0, 1.0, 21)  # the curve's points in --format json: every 5% of strong share
_SHOWN_REJECTS = 20


# ---- vector cache ---------------------------------------------------------------------------------


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class CachedEmbedder:
    """An Embedder that keeps every vector on disk, addressed by the text: a file pair per embedded
    chunk, `<embedder>-<hash of its texts>.npy` and a `.json` index of the texts' hashes in row
    order. Any later set of texts (another split, one source) reads what it can and embeds only the
    rest; chunks are written as they finish, so an interrupted run keeps its progress. Files are
    written to a temporary name and renamed; the index is written last, so a file without one is
    never read. Removing the folder is always safe."""

    def __init__(
        self, inner: Embedder, directory: Path, console: Console | None = None, chunk: int = 256, flush: int = 2048
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.directory = directory
        self.embedded = 0  # texts this process had to embed (not found in the cache)
        self._console = console
        self._chunk = chunk
        self._flush = flush
        self._slug = re.sub(r"[^A-Za-z0-9._-]+", "_", inner.name)
        self._rows: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, Vectors] = {}
        self._scanned = False

    def _scan(self) -> None:
        for index in sorted(self.directory.glob(f"{self._slug}-*.json")):
            try:
                meta = json.loads(index.read_text(encoding="utf-8"))
                keys = meta["texts"]
                vectors = np.load(index.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable pair: its texts are embedded again
            if meta.get("embedder") != self.name or vectors.ndim != 2 or len(vectors) != len(keys):
                continue
            self._arrays[index] = vectors
            for row, key in enumerate(keys):
                self._rows.setdefault(key, (index, row))
        self._scanned = True

    def _write(self, keys: list[str], vectors: Vectors) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.blake2b("".join(keys).encode(), digest_size=16).hexdigest()
        index = self.directory / f"{self._slug}-{digest}.json"
        meta = {"embedder": self.name, "rows": len(keys), "dim": int(vectors.shape[1]), "texts": keys}
        for path, write in (
            (index.with_suffix(".npy"), lambda f: np.save(f, vectors, allow_pickle=False)),
            (index, lambda f: f.write(json.dumps(meta).encode())),
        ):
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the cache from other users of LADDER_HOME
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._arrays[index] = vectors
        for row, key in enumerate(keys):
            self._rows.setdefault(key, (index, row))

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            disable=self._console is None,
        )

    async def _embed_missing(self, texts: dict[str, str]) -> None:
        # similar lengths in one batch: the model pads every text to the batch's longest
        keys = sorted(texts, key=lambda k: len(texts[k]))
        with self._progress() as bar:
            task = bar.add_task(f"embedding with {self.name}", total=len(keys))
            pending_keys: list[str] = []
            pending: list[Vectors] = []
            for start in range(0, len(keys), self._chunk):
                part = keys[start : start + self._chunk]
                pending.append(await self.inner.embed([texts[k] for k in part]))
                pending_keys += part
                bar.update(task, advance=len(part))
                if len(pending_keys) >= self._flush or start + self._chunk >= len(keys):
                    self._write(pending_keys, np.concatenate(pending).astype(np.float32))
                    pending_keys, pending = [], []
        self.embedded += len(keys)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not self._scanned:
            self._scan()
        keys = [_text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._rows}
        if missing:
            await self._embed_missing(missing)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._arrays[p][row] for p, row in (self._rows[k] for k in keys)]).astype(np.float32)

    async def aclose(self) -> None:
        await self.inner.aclose()


def default_cache_dir(settings: Settings) -> Path:
    return settings.data_dir / "cache" / "embeddings"


# ---- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    router: str  # strategy or reference name
    reference: bool
    source: str  # a source, or OVERALL
    summary: Summary
    curve: Curve | None  # None for all-weak / all-strong: a single point
    vs_random: Bootstrap | None


def _groups(rows: LabelledSet) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    sources = sorted({str(s) for s in rows.sources})
    return [(s, rows.sources == s) for s in sources] + [(OVERALL, np.ones(len(rows), dtype=np.bool_))]


def _references(rows: LabelledSet, source: str) -> list[Result]:
    w, s, wc, sc = rows.weak, rows.strong, rows.weak_cost, rows.strong_cost
    rand = random_curve(w, s, wc, sc)
    oracle = curve(oracle_scores(w, s), w, s, wc, sc)
    return [
        Result("all-weak", True, source, fixed_route_summary(False, w, s, wc, sc), None, None),
        Result("all-strong", True, source, fixed_route_summary(True, w, s, wc, sc), None, None),
        Result("random", True, source, summarize(rand, len(rows)), rand, None),
        Result("oracle", True, source, summarize(oracle, len(rows)), oracle, None),
    ]


def evaluate(
    rows: LabelledSet, scores: dict[str, Floats], resamples: int = 1000, seed: int = 0
) -> tuple[list[Result], list[Result]]:
    """(strategy results, reference results), per source and overall."""
    mine: list[Result] = []
    refs: list[Result] = []
    for source, mask in _groups(rows):
        part = rows.take(mask)
        refs += _references(part, source)
        for name, all_scores in scores.items():
            s = all_scores[mask]
            c = curve(s, part.weak, part.strong, part.weak_cost, part.strong_cost)
            boot = bootstrap_apgr(s, part.weak, part.strong, resamples=resamples, seed=seed) if resamples else None
            mine.append(Result(name, name in REFERENCE_ONLY, source, summarize(c, len(part)), c, boot))
    return mine, refs


def best_strategy(results: Sequence[Result]) -> Result | None:
    contenders = [r for r in results if r.source == OVERALL and not r.reference and r.summary.apgr is not None]
    return max(contenders, key=lambda r: r.summary.apgr or 0.0, default=None)


# ---- output ---------------------------------------------------------------------------------------


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100.0, 2)


def _figures(r: Result) -> dict[str, Any]:
    s, at = r.summary, r.summary.at95
    boot = r.vs_random
    return {
        "strategy": r.router,
        "reference": r.reference,
        "source": r.source,
        "rows": s.rows,
        "weak_quality": round(s.weak_quality, 4),
        "strong_quality": round(s.strong_quality, 4),
        "apgr": None if s.apgr is None else round(s.apgr, 4),
        "cpt50": _pct(s.cpt50),
        "cpt80": _pct(s.cpt80),
        "strong_share_at_95": _pct(at.strong_share if at else None),
        "savings_at_95": _pct(at.savings if at else None),
        "savings_at_95_usd": at.savings_usd if at else None,
        "apgr_vs_random": None if boot is None else _round(boot.delta, 4),
        "ci_low": None if boot is None else _round(boot.low, 4),
        "ci_high": None if boot is None else _round(boot.high, 4),
        "significant": None if boot is None else boot.significant,
    }


def _curve_points(c: Curve | None) -> list[dict[str, Any]] | None:
    if c is None:
        return None
    return [
        {
            "threshold": None if not np.isfinite(c.thresholds[i]) else round(float(c.thresholds[i]), 6),
            "strong_share": round(float(c.shares[i]) * 100.0, 2),
            "quality": round(float(c.quality[i]), 4),
            "cost_usd": str(Decimal(repr(float(c.cost[i]))).quantize(USD_PLACES)),  # money as text, as render does
        }
        for i in c.sample(CURVE_SHARES)
    ]


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"${value:,.4f}"
    return f"{value:.{digits}f}"


def _round(value: float, digits: int) -> float:
    return round(value, digits) + 0.0  # + 0.0: no "-0.0" for a difference that is zero


def _vs_random(boot: Bootstrap | None) -> str:
    if boot is None:
        return "-"
    low, delta, high = (_round(v, 3) for v in (boot.low, boot.delta, boot.high))
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]" + (" *" if boot.significant else "")


TABLE_COLUMNS = [
    "source",
    "rows",
    "apgr",
    "cpt50 %",
    "cpt80 %",
    "strong % at 95",
    "savings % at 95",
    "savings $ at 95",
    "apgr - random [95% CI]",
]


def _table_row(r: Result, first: str) -> list[Any]:
    s, at = r.summary, r.summary.at95  # unrounded: rounding _figures' values again would round twice

    def pct(value: float | None) -> str:
        return _cell(None if value is None else value * 100.0)

    return [
        first,
        s.rows,
        _cell(s.apgr, 3),
        pct(s.cpt50),
        pct(s.cpt80),
        pct(at.strong_share if at else None),
        pct(at.savings if at else None),
        _cell(at.savings_usd if at else None),
        _vs_random(r.vs_random),
    ]


def _notes(
    loaded: Loaded, split: str, rows: int, train: int, results: Sequence[Result], refs: Sequence[Result]
) -> list[str]:
    quality = ", ".join(
        f"{r.source} {r.summary.weak_quality:.3f} / {r.summary.strong_quality:.3f}"
        for r in refs
        if r.router == "random"
    )
    notes = [
        f"{rows:,} rows on the {split} split; strategies fitted on {train:,} train rows ({loaded.format} format)",
        f"quality weak / strong ({loaded.data.weak_model} / {loaded.data.strong_model}): {quality}",
        *loaded.notes,
        "cpt, strong share and savings are % of prompts / of the all-strong cost; apgr is 0..1; "
        "'random' is random routing's expected curve (APGR 0.5 exactly); oracle reads the labels (reference only)",
        "apgr - random: bootstrap over prompts; * = significant, the 95% interval excludes 0",
    ]
    if loaded.contaminated:
        notes.append(f"{loaded.contaminated} contaminated rows dropped")
    if loaded.rejects:
        notes.append(f"{len(loaded.rejects)} bad lines rejected")
    if split != "test":
        notes.append(f"evaluated on the {split} split: fitted strategies have seen these rows (optimistic)")
    best = best_strategy(results)
    if best is not None and best.summary.apgr is not None:
        notes.append(f"best strategy overall: {best.router} (APGR {best.summary.apgr:.3f})")
    return notes


def print_results(
    results: Sequence[Result], refs: Sequence[Result], notes: Sequence[str], fmt: str, console: Console
) -> None:
    if fmt in ("json", "csv"):
        rows = []
        for r in [*results, *refs]:
            figures = _figures(r)
            if fmt == "json":
                figures["curve"] = _curve_points(r.curve)
            rows.append(figures)
        columns = list(rows[0]) if rows else []
        render("ladder eval", columns, [list(r.values()) for r in rows], fmt, console, notes)
        return
    for name in dict.fromkeys(r.router for r in results):
        title = f"{name}" + (" (reference only: reads the labels)" if name in REFERENCE_ONLY else "")
        render(title, TABLE_COLUMNS, [_table_row(r, r.source) for r in results if r.router == name], fmt, console)
    ref_rows = [_table_row(r, f"{r.router} / {r.source}") for r in refs]
    render("references", ["reference / source", *TABLE_COLUMNS[1:]], ref_rows, fmt, console)
    for note in notes:
        console.print(escape(note), highlight=False)


# ---- plot -----------------------------------------------------------------------------------------


def plot(path: Path, results: Sequence[Result], refs: Sequence[Result]) -> None:
    """Quality against strong share, one panel per source and one overall."""
    from matplotlib.figure import Figure  # a Figure without pyplot renders with Agg: no display needed

    sources = list(dict.fromkeys(r.source for r in refs))
    columns = min(len(sources), 2)
    lines = (len(sources) + columns - 1) // columns
    fig = Figure(figsize=(6.5 * columns, 4.6 * lines), layout="constrained")
    for i, source in enumerate(sources):
        ax = fig.add_subplot(lines, columns, i + 1)
        ref = {r.router: r for r in refs if r.source == source}
        s = ref["random"].summary
        ax.axhline(s.strong_quality, color="black", linestyle=":", linewidth=1, label="all-strong")
        ax.axhline(s.weak_quality, color="dimgray", linestyle=":", linewidth=1, label="all-weak")
        ax.axhline(0.95 * s.strong_quality, color="tab:red", linestyle=(0, (1, 3)), linewidth=0.8, label="95% strong")
        for name, label, color in (
            ("random", "random (expected)", "gray"),
            ("oracle", "oracle (reads labels)", "silver"),
        ):
            c = ref[name].curve
            if c is not None:
                dashes = "--" if name == "random" else "-"
                ax.plot(c.shares * 100.0, c.quality, color=color, linestyle=dashes, linewidth=1.2, label=label)
        for r in results:
            if r.source == source and r.curve is not None and not r.reference:
                apgr = "-" if r.summary.apgr is None else f"{r.summary.apgr:.3f}"
                ax.plot(r.curve.shares * 100.0, r.curve.quality, linewidth=1.6, label=f"{r.router} (APGR {apgr})")
        ax.set_title(f"{source} ({s.rows:,} prompts)")
        ax.set_xlabel("strong-model share of prompts (%)")
        ax.set_ylabel("quality (mean score, 0..1)")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- the command ----------------------------------------------------------------------------------


def price(text: str) -> ModelPrice:
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise InvalidOperation
        cost_in, cost_out = (Decimal(p) for p in parts)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"'{text}' is not IN/OUT in USD per million tokens, e.g. 1/5") from None
    if cost_in < 0 or cost_out < 0 or not (cost_in.is_finite() and cost_out.is_finite()):
        raise argparse.ArgumentTypeError(f"'{text}': prices must be finite and not negative")
    return ModelPrice(cost_in, cost_out)


def add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("eval", help="replay a labelled dataset through routing strategies, offline")
    e.add_argument(
        "dataset",
        nargs="?",
        help="JSONL: RouteLLM rows (weak_score/strong_score) or N-model rows (correct/cost_usd)",
    )
    e.add_argument(
        "--strategy",
        help=f"comma-separated, from: {', '.join(SCORERS)} (default: the policies file's strategy); "
        "with --labelled: strategies of the policies file",
    )
    e.add_argument(
        "--labelled",
        metavar="FILE.jsonl",
        help='compare policies strategies on labelled texts ({"text", "tier", "task"?, "input_tokens"?, '
        '"output_tokens"?} lines, e.g. NEW.holdout.jsonl from `ladder strategy build`) instead of a dataset',
    )
    e.add_argument("--against", help="with --labelled: the strategy compared with (default: the policies' strategy)")
    e.add_argument("--split", choices=("test", "train", "all"), default="test", help="rows reported on")
    e.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    e.add_argument("--source", help="comma-separated sources to keep (default: all)")
    e.add_argument("--weak", help="N-model: the weak model (default: the cheapest in total)")
    e.add_argument("--strong", help="N-model: the strong model (default: the best mean quality)")
    e.add_argument("--weak-price", type=price, default=DEFAULT_WEAK_PRICE, help="RouteLLM: IN/OUT USD per Mtok")
    e.add_argument("--strong-price", type=price, default=DEFAULT_STRONG_PRICE, help="RouteLLM: IN/OUT USD per Mtok")
    e.add_argument("--k", type=int, default=20, help="embedding-knn: neighbours that vote")
    e.add_argument("--seed", type=int, default=0, help="random strategy and bootstrap")
    e.add_argument("--bootstrap", type=int, default=1000, help="resamples for the interval vs random (0: none)")
    e.add_argument("--cache-dir", help="embedding vectors (default: $LADDER_HOME/cache/embeddings)")
    e.add_argument("--plot", help="write the cost-quality curves to this PNG")
    e.add_argument("--format", choices=FORMATS, default="table")


def _strategies(args: argparse.Namespace, settings: Settings) -> list[str]:
    names = [n.strip() for n in (args.strategy or settings.policies.strategy).split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORERS]
    if unknown or not names:
        raise ValueError(f"unknown strategy {', '.join(unknown) or '(none)'} (known: {', '.join(SCORERS)})")
    return list(dict.fromkeys(names))


def _embedder_factory(settings: Settings, args: argparse.Namespace) -> Callable[[], Embedder]:
    made: list[Embedder] = []

    def make() -> Embedder:
        if not made:
            from worker.embedders import LocalEmbedder  # torch loads only when an embedding strategy runs

            directory = Path(args.cache_dir) if args.cache_dir else default_cache_dir(settings)
            made.append(CachedEmbedder(LocalEmbedder(), directory, err))  # progress on stderr: stdout stays clean
        return made[0]

    return make


def _report_rejects(loaded: Loaded) -> None:
    for r in loaded.rejects[:_SHOWN_REJECTS]:
        err.print(f"[yellow]line {r.line}[/]: {escape(r.reason)}", highlight=False)
    if len(loaded.rejects) > _SHOWN_REJECTS:
        err.print(f"... {len(loaded.rejects) - _SHOWN_REJECTS} more rejected lines")


def _load(args: argparse.Namespace) -> Loaded:
    loaded = load_dataset(
        Path(args.dataset),
        weak=args.weak,
        strong=args.strong,
        weak_price=args.weak_price,
        strong_price=args.strong_price,
    )
    if not args.source:
        return loaded
    wanted = [s.strip() for s in args.source.split(",") if s.strip()]
    data = loaded.data.of_sources(wanted)
    if not len(data):
        raise DatasetError(
            f"no rows of source {', '.join(wanted)} (sources: {', '.join(np.unique(loaded.data.sources))})"
        )
    return Loaded(data, loaded.format, loaded.rejects, loaded.contaminated, loaded.notes)


def score_strategies(
    names: Sequence[str], options: ScorerOptions, train: LabelledSet, rows: LabelledSet
) -> dict[str, Floats]:
    scores: dict[str, Floats] = {}
    for name in names:
        scorer = build_scorer(name, options)
        scorer.fit(train)
        scores[name] = scorer.score(rows)
    return scores


def run_eval(args: argparse.Namespace) -> int:
    if args.labelled:
        return run_comparison(args)
    if not args.dataset:
        err.print("[red]error:[/] give DATASET.jsonl, or --labelled FILE.jsonl to compare strategies", highlight=False)
        return 2
    try:
        settings = Settings.from_env(getattr(args, "policies", None))
        names = _strategies(args, settings)
        if not 0.0 < args.test_fraction < 1.0:
            raise ValueError(f"--test-fraction {args.test_fraction} must be between 0 and 1")
        loaded = _load(args)
        _report_rejects(loaded)
        test = split_mask(loaded.data, args.test_fraction)
        train = loaded.data.take(~test)
        rows = {"test": loaded.data.take(test), "train": train, "all": loaded.data}[args.split]
        if not len(train) or not len(rows):
            raise DatasetError(f"the split leaves {len(train)} train and {len(rows)} {args.split} rows")
        needs = NEEDS_EMBEDDER.intersection(names)
        embedder = _embedder_factory(settings, args) if needs else None
        options = ScorerOptions(seed=args.seed, k=args.k, policies=settings.policies, embedder=embedder)
        scores = score_strategies(names, options, train, rows)
    except (PolicyError, DatasetError, ValueError, OSError, RuntimeError) as e:
        # RuntimeError: the local extra (sentence-transformers) is not installed
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    results, refs = evaluate(rows, scores, args.bootstrap, args.seed)
    print_results(results, refs, _notes(loaded, args.split, len(rows), len(train), results, refs), args.format, out)
    if args.plot:
        plot(Path(args.plot), results, refs)
        if args.format == "table":
            out.print(f"curves written to {args.plot}")
    return 0


# ---- comparing strategies on labelled texts (--labelled) -----------------------------------------


@dataclass
class FirstTiers:
    """One strategy's first tier for each labelled text, as far as can be known offline."""

    tiers: list[str]
    asks: list[bool]  # band texts that would go to the classifier model (placed at the safe tier here)
    band: list[int]  # positions of band texts an embedding router may still place


def first_tiers(policies: Policies, jobs: Sequence[Job]) -> FirstTiers:
    """The rules' tier; in the undecided band the steering guard's safe tier, else, until an embedding
    router says otherwise, the safe tier and a classifier call (as `ladder estimate` prices them)."""
    rules = RuleRouter(policies)
    safe = policies.classifier.safe_tier
    placed = FirstTiers([], [], [])
    for i, job in enumerate(jobs):
        tier = rules.route(job).tier
        in_band = tier == CLASSIFY_QUEUE and steering_attempt(job.text()) is None
        placed.tiers.append(safe if tier == CLASSIFY_QUEUE else tier)
        placed.asks.append(in_band)
        if in_band:
            placed.band.append(i)
    return placed


def _routes_by_embedding(policies: Policies) -> bool:
    return policies.embedding.enabled and policies.embedding.embedder == "local"


async def _place_band(settings: Settings, plans: dict[str, FirstTiers], jobs: Sequence[Job]) -> None:
    """Band texts of strategies that route by local embeddings go to their routers: one embedder, each
    text embedded once whatever the number of strategies (and cached for the next run)."""
    policies = settings.policies
    routed = [n for n, plan in plans.items() if plan.band and _routes_by_embedding(policies.for_strategy(n))]
    if not routed:
        return
    from worker.embedders import LocalEmbedder  # torch: loaded only when a strategy routes by embeddings
    from worker.vector_cache import cache_dir, load_embedding_router

    embedder = CachedEmbedder(LocalEmbedder(), default_cache_dir(settings), err)
    positions = sorted({i for n in routed for i in plans[n].band})
    vectors = await embedder.embed([jobs[i].text() for i in positions])
    row = {position: r for r, position in enumerate(positions)}
    for name in routed:
        router = await load_embedding_router(policies.for_strategy(name), embedder, cache_dir(settings.data_dir))
        plan = plans[name]
        chosen = router.route_many(vectors[[row[i] for i in plan.band]])
        for i, tier in zip(plan.band, chosen, strict=True):
            if tier is not None:
                plan.tiers[i], plan.asks[i] = tier, False


def comparison_cost(policies: Policies, rows: Sequence[LabelledExample], plan: FirstTiers) -> Decimal:
    """Each text's tokens on its tier's first model, plus a classifier call where it would ask one
    (sized as the classifier worker sends it, as `ladder estimate` sizes it)."""
    from worker.classifier_worker import CLASSIFIER_PROMPT, MAX_CLASSIFIED_CHARS

    book = PriceBook(policies)
    classifier = Candidate(policies.classifier.provider, policies.classifier.model)
    prompt = estimate_tokens((policies.classifier.prompt or CLASSIFIER_PROMPT) + "<task>\n\n</task>")
    most = estimate_tokens("x" * MAX_CLASSIFIED_CHARS)
    total = Decimal(0)
    for row, tier, asks in zip(rows, plan.tiers, plan.asks, strict=True):
        seen, answered = row.input_tokens or 0, row.output_tokens or 0
        total += book.cost(policies.tier(tier).candidates[0], seen, answered)
        if asks:
            total += book.cost(classifier, prompt + min(seen, most), CLASSIFIER_ANSWER_TOKENS)
    return total


def _compared(args: argparse.Namespace, policies: Policies) -> list[str]:
    against = args.against or policies.routing_strategy
    names = [against, *(n.strip() for n in (args.strategy or "").split(",") if n.strip())]
    unknown = [n for n in names if n not in policies.strategy_names]
    if unknown:
        raise ValueError(f"unknown strategy {', '.join(unknown)} (strategies: {', '.join(policies.strategy_names)})")
    return list(dict.fromkeys(names))


def _labelled_job(number: int, row: LabelledExample) -> Job:
    return Job(
        id=row.job_id or f"line-{number}",
        prompt=row.text,
        task=TaskKind(row.task) if row.task else TaskKind.GENERATION,
        feature=row.feature or "default",
    )


def compare(settings: Settings, names: Sequence[str], rows: Sequence[LabelledExample]) -> list[RoutingFigures]:
    policies = settings.policies
    jobs = [_labelled_job(n, row) for n, row in enumerate(rows, start=1)]
    plans = {name: first_tiers(policies.for_strategy(name), jobs) for name in names}
    asyncio.run(_place_band(settings, plans, jobs))
    priced = all(r.input_tokens is not None and r.output_tokens is not None for r in rows)
    labels = [r.tier for r in rows]
    return [
        tally(
            name,
            labels,
            plan.tiers,
            plan.asks,
            policies.tier_names,
            comparison_cost(policies.for_strategy(name), rows, plan) if priced else None,
        )
        for name, plan in plans.items()
    ]


def _points(value: float) -> str:
    return f"{_round(value * 100.0, 1):+.1f} points"


def _versus(base: RoutingFigures, other: RoutingFigures) -> str:
    def gap(field: str) -> str:
        return _points(other.share(getattr(other, field)) - base.share(getattr(base, field)))

    text = f"{other.strategy} against {base.strategy}: exact {gap('exact')}, under-routed {gap('under')}, "
    text += f"over-routed {gap('over')}"
    if base.cost_per_1000 and other.cost_per_1000 is not None:
        text += f", cost {float((other.cost_per_1000 - base.cost_per_1000) / base.cost_per_1000):+.1%}"
    return text


def comparison_notes(
    settings: Settings, figures: Sequence[RoutingFigures], rows: Sequence[LabelledExample]
) -> list[str]:
    policies = settings.policies
    notes = [
        "first tier as the live system picks it: the strategy's rules; in the undecided band the steering guard, "
        "then its embedding router (local embedder); band texts left over are placed at its classifier.safe_tier "
        "and counted as asking the classifier",
        "under-routed: below the label (a quality risk); over-routed: above it (money for nothing)",
    ]
    untasked = sum(not r.task for r in rows)
    if untasked:
        notes.append(f"{untasked:,} texts carry no task: routed as generation")
    if any(len(r.text) >= policies.learning.text_chars for r in rows):
        notes.append(
            f"texts kept with labels are cut to learning.text_chars ({policies.learning.text_chars:,}): "
            "the long-input rule sees only that much"
        )
    priced = sum(r.input_tokens is not None and r.output_tokens is not None for r in rows)
    if priced < len(rows):
        notes.append(f"cost skipped: {priced:,} of {len(rows):,} texts carry input_tokens and output_tokens")
    for f in figures:
        spec = policies.for_strategy(f.strategy).embedding
        if spec.enabled and spec.embedder != "local":
            notes.append(
                f"{f.strategy} routes band texts by '{spec.embedder}', a provider call this comparison does not "
                "make: they count as asking the classifier"
            )
    notes += [_versus(figures[0], f) for f in figures[1:]]
    return notes


COMPARISON_COLUMNS = ["strategy", "examples", "exact", "under-routed", "over-routed", "top tier", "asks classifier"]


def _comparison_rows(figures: Sequence[RoutingFigures], fmt: str) -> tuple[list[str], list[list[Any]]]:
    counted = ("exact", "under", "over", "top_tier", "asks_classifier")
    if fmt == "table":
        rows = [
            [f.strategy, f.examples, *(f"{f.share(getattr(f, c)):.1%}" for c in counted), f.cost_per_1000]
            for f in figures
        ]
        return [*COMPARISON_COLUMNS, "cost / 1,000 jobs"], rows
    columns = ["strategy", "examples"] + [n for c in counted for n in (c, f"{c}_share")] + ["cost_per_1000"]
    rows = []
    for f in figures:
        counts: list[Any] = []
        for c in counted:
            counts += [getattr(f, c), round(f.share(getattr(f, c)), 6)]
        rows.append([f.strategy, f.examples, *counts, f.cost_per_1000])
    return columns, rows


def print_comparison(figures: Sequence[RoutingFigures], notes: Sequence[str], tiers: Sequence[str], fmt: str) -> None:
    columns, rows = _comparison_rows(figures, fmt)
    if fmt == "json":
        by_label = {f.strategy: f.by_label for f in figures}
        data = {"title": "first tiers against the labels", "rows": [dict(zip(columns, r, strict=True)) for r in rows]}
        out.print_json(json.dumps({**data, "by_label": by_label, "notes": list(notes)}, default=str))
        return
    render("first tiers against the labels", columns, rows, fmt, out)
    if fmt == "csv":
        return
    matrix = [
        [f.strategy, label, sum(routed.values()), *(routed.get(t, 0) for t in tiers)]
        for f in figures
        for label, routed in f.by_label.items()
    ]
    render("first tier by label tier", ["strategy", "label", "texts", *tiers], matrix, fmt, out)
    for note in notes:
        out.print(escape(note), highlight=False)


def run_comparison(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(getattr(args, "policies", None))
        names = _compared(args, settings.policies)
        path = Path(args.labelled)
        tasks = [t.value for t in TaskKind]
        rows = parse_labelled(path.read_text(encoding="utf-8"), settings.policies.tier_names, tasks, str(path))
        figures = compare(settings, names, rows)
    except (PolicyError, LabelsError, ExamplesError, ValueError, OSError, RuntimeError) as e:
        # RuntimeError: the local extra (sentence-transformers) is not installed
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    print_comparison(figures, comparison_notes(settings, figures, rows), settings.policies.tier_names, args.format)
    return 0
