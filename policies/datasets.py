"""Labelled routing data for `ladder eval`: reading it, and the deterministic train/test split.

Two line formats, told apart by the first usable line (a `correct` field means N-model):

- RouteLLM: id, source, task_label, prompt, weak_model, weak_score, strong_model, strong_score,
  score_scale, contaminated (MT-Bench rows also carry turns and per-turn scores). Contaminated rows
  are dropped. Scores are put on 0..1 per row by `score_scale`: "0/1 correct" as is, a 1-10 grade
  as (s - 1) / 9. The file carries no cost: each prompt's cost comes from per-model prices, its
  input tokens estimated from the prompt and its output assumed to be ASSUMED_OUTPUT_TOKENS.
- N-model: id, prompt, source (optional), correct (model -> 0/1 or a 0..1 score) and cost_usd
  (model -> what the prompt cost on that model). A weak and a strong model are chosen from them.

A bad line is rejected with its number and the reason; the good lines go through, as with jobs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from ladder.messages import Rejection
from policies.tokens import estimate_tokens

Floats = npt.NDArray[np.float64]
Strings = npt.NDArray[np.str_]

ASSUMED_OUTPUT_TOKENS = 200  # RouteLLM files record no answer lengths; the same guess for both models
DEFAULT_TEST_FRACTION = 0.2
_EXCERPT = 200


class DatasetError(ValueError):
    """The dataset cannot be used at all (no usable row, no model pair); bad lines are Rejections."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def prompt_cost(self, input_tokens: int, output_tokens: int = ASSUMED_OUTPUT_TOKENS) -> Decimal:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


# The article's pair: Claude Haiku 3.5 as the weak model, Claude Sonnet 3.5 as the strong one.
DEFAULT_WEAK_PRICE = ModelPrice(Decimal(1), Decimal(5))
DEFAULT_STRONG_PRICE = ModelPrice(Decimal(3), Decimal(15))


@dataclass(frozen=True)
class LabelledSet:
    """Prompts with the weak and the strong model's quality (0..1) and cost (USD) on each."""

    ids: list[str]
    texts: list[str]
    sources: Strings
    task_labels: Strings
    weak: Floats
    strong: Floats
    weak_cost: Floats
    strong_cost: Floats
    weak_model: str = "weak"
    strong_model: str = "strong"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def strong_wins(self) -> npt.NDArray[np.bool_]:
        """The prompts that needed the strong model: its answer was strictly better."""
        return self.strong > self.weak

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> LabelledSet:
        positions = np.flatnonzero(index) if index.dtype == np.bool_ else index
        return LabelledSet(
            ids=[self.ids[i] for i in positions],
            texts=[self.texts[i] for i in positions],
            sources=self.sources[positions],
            task_labels=self.task_labels[positions],
            weak=self.weak[positions],
            strong=self.strong[positions],
            weak_cost=self.weak_cost[positions],
            strong_cost=self.strong_cost[positions],
            weak_model=self.weak_model,
            strong_model=self.strong_model,
        )

    def of_sources(self, sources: Sequence[str]) -> LabelledSet:
        return self.take(np.isin(self.sources, list(sources)))


@dataclass(frozen=True)
class Loaded:
    data: LabelledSet
    format: str  # "routellm" | "n-model"
    rejects: list[Rejection]
    contaminated: int = 0  # rows dropped as contaminated
    notes: list[str] = field(default_factory=list)


# ---- split ----------------------------------------------------------------------------------------


def in_test_split(row_id: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> bool:
    """A row's side depends on its id alone: the same on every run and machine, and a row keeps its
    side when others are added to or removed from the file."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def split_mask(data: LabelledSet, test_fraction: float = DEFAULT_TEST_FRACTION) -> npt.NDArray[np.bool_]:
    """True for the test rows."""
    return np.array([in_test_split(i, test_fraction) for i in data.ids], dtype=np.bool_)


# ---- line formats ---------------------------------------------------------------------------------


class _RouteLLMLine(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    prompt: str
    weak_score: float
    strong_score: float
    score_scale: str
    source: str = "unknown"
    task_label: str = ""
    weak_model: str = "weak"
    strong_model: str = "strong"
    contaminated: bool = False
    # MT-Bench's two turns; the prompt field holds the first, which is what gets routed
    turns: list[str] | None = None
    weak_turn_scores: list[float] | None = None
    strong_turn_scores: list[float] | None = None


class _NModelLine(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    prompt: str
    correct: dict[str, float | bool]
    cost_usd: dict[str, float]
    source: str = "unknown"
    task_label: str = ""


_routellm = msgspec.json.Decoder(_RouteLLMLine)
_nmodel = msgspec.json.Decoder(_NModelLine)
_GRADE_1_10 = re.compile(r"\b1\s*(-|to|\.\.)\s*10\b")


def normalize_score(score: float, scale: str) -> float:
    """A score on 0..1 from its row's scale; ValueError for a scale or a score out of it."""
    if scale in ("0/1 correct", "0-1"):
        value = score
    elif _GRADE_1_10.search(scale):
        if not 1.0 <= score <= 10.0:
            raise ValueError(f"score {score} is outside its scale '{scale}'")
        value = (score - 1.0) / 9.0
    else:
        raise ValueError(f"unknown score_scale '{scale}' (known: '0/1 correct', a 1-10 grade)")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"score {score} is outside its scale '{scale}'")
    return value


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw.strip()


def _decode_error(e: msgspec.DecodeError) -> str:
    return f"invalid row: {e}" if isinstance(e, msgspec.ValidationError) else f"not valid JSON: {e}"


def _reject(number: int, reason: str, raw: bytes) -> Rejection:
    return Rejection(number, reason, raw[:_EXCERPT].decode("utf-8", errors="replace"))


def detect_format(path: Path) -> str:
    for _, raw in _lines(path):
        if not raw:
            continue
        try:
            first = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if isinstance(first, dict):
            return "n-model" if "correct" in first else "routellm"
    raise DatasetError(f"{path}: no JSON object on any line")


class _Columns:
    """Rows as they are accepted, kept as Python lists until the file is read."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.sources: list[str] = []
        self.labels: list[str] = []
        self.weak: list[float] = []
        self.strong: list[float] = []
        self.weak_cost: list[float] = []
        self.strong_cost: list[float] = []
        self.seen: dict[str, int] = {}  # id -> line, so a repeated id is named with its first line

    def duplicate(self, row_id: str, number: int) -> str | None:
        first = self.seen.setdefault(row_id, number)
        return None if first == number else f"duplicate id '{row_id}' (first on line {first})"

    def freeze(self, weak_model: str, strong_model: str) -> LabelledSet:
        return LabelledSet(
            ids=self.ids,
            texts=self.texts,
            sources=np.array(self.sources, dtype=np.str_),
            task_labels=np.array(self.labels, dtype=np.str_),
            weak=np.array(self.weak, dtype=np.float64),
            strong=np.array(self.strong, dtype=np.float64),
            weak_cost=np.array(self.weak_cost, dtype=np.float64),
            strong_cost=np.array(self.strong_cost, dtype=np.float64),
            weak_model=weak_model,
            strong_model=strong_model,
        )


def read_routellm(
    path: Path, weak_price: ModelPrice = DEFAULT_WEAK_PRICE, strong_price: ModelPrice = DEFAULT_STRONG_PRICE
) -> Loaded:
    cols = _Columns()
    rejects: list[Rejection] = []
    contaminated = graded = 0
    models: set[tuple[str, str]] = set()
    for number, raw in _lines(path):
        if not raw:
            rejects.append(_reject(number, "empty line", raw))
            continue
        try:
            row = _routellm.decode(raw)
            weak = normalize_score(row.weak_score, row.score_scale)
            strong = normalize_score(row.strong_score, row.score_scale)
        except msgspec.DecodeError as e:
            rejects.append(_reject(number, _decode_error(e), raw))
            continue
        except ValueError as e:
            rejects.append(_reject(number, str(e), raw))
            continue
        problem = cols.duplicate(row.id, number)
        if problem is not None:
            rejects.append(_reject(number, problem, raw))
            continue
        if row.contaminated:
            contaminated += 1
            continue
        graded += row.score_scale != "0/1 correct"
        models.add((row.weak_model, row.strong_model))
        tokens = estimate_tokens(row.prompt)
        cols.ids.append(row.id)
        cols.texts.append(row.prompt)
        cols.sources.append(row.source)
        cols.labels.append(row.task_label)
        cols.weak.append(weak)
        cols.strong.append(strong)
        cols.weak_cost.append(float(weak_price.prompt_cost(tokens)))
        cols.strong_cost.append(float(strong_price.prompt_cost(tokens)))
    if not cols.ids:
        raise DatasetError(f"{path}: no usable rows ({len(rejects)} rejected, {contaminated} contaminated)")
    weak_model, strong_model = ("/".join(sorted(s)) for s in zip(*models, strict=True))
    notes = [
        f"costs: input tokens estimated at 4 characters a token, {ASSUMED_OUTPUT_TOKENS} output tokens assumed; "
        f"weak at ${weak_price.input_per_mtok}/${weak_price.output_per_mtok}, strong at "
        f"${strong_price.input_per_mtok}/${strong_price.output_per_mtok} per million tokens"
    ]
    if graded:
        notes.append(f"{graded} rows graded 1-10 (MT-Bench) were put on 0..1 as (score - 1) / 9")
    return Loaded(cols.freeze(weak_model, strong_model), "routellm", rejects, contaminated, notes)


@dataclass
class _NModelRows:
    rows: list[tuple[int, bytes, _NModelLine]] = field(default_factory=list)
    rejects: list[Rejection] = field(default_factory=list)


def _read_nmodel_lines(path: Path) -> _NModelRows:
    out = _NModelRows()
    seen: dict[str, int] = {}
    for number, raw in _lines(path):
        if not raw:
            out.rejects.append(_reject(number, "empty line", raw))
            continue
        try:
            row = _nmodel.decode(raw)
        except msgspec.DecodeError as e:
            out.rejects.append(_reject(number, _decode_error(e), raw))
            continue
        bad = [m for m, v in row.correct.items() if not 0.0 <= float(v) <= 1.0]
        bad += [m for m, v in row.cost_usd.items() if v < 0]
        first = seen.setdefault(row.id, number)
        if bad:
            out.rejects.append(_reject(number, f"score outside 0..1 or negative cost for {', '.join(bad)}", raw))
        elif first != number:
            out.rejects.append(_reject(number, f"duplicate id '{row.id}' (first on line {first})", raw))
        else:
            out.rows.append((number, raw, row))
    return out


def choose_pair(rows: Sequence[_NModelLine], weak: str | None, strong: str | None) -> tuple[str, str]:
    """The models given, else the cheapest by total cost as weak and the best by mean quality as
    strong, among the models every row has both a score and a cost for."""
    common = set.intersection(*({m for m in r.correct if m in r.cost_usd} for r in rows))
    if weak is None:
        if not common:
            raise DatasetError("no model has a score and a cost on every row: name them with --weak/--strong")
        weak = min(sorted(common), key=lambda m: sum(r.cost_usd[m] for r in rows))
    if strong is None:
        others = sorted(common - {weak})
        if not others:
            raise DatasetError(f"no model besides '{weak}' on every row: name the strong one with --strong")
        strong = max(others, key=lambda m: sum(float(r.correct[m]) for r in rows))
    if weak == strong:
        raise DatasetError(f"weak and strong are the same model '{weak}'")
    return weak, strong


def read_nmodel(path: Path, weak: str | None = None, strong: str | None = None) -> Loaded:
    read = _read_nmodel_lines(path)
    if not read.rows:
        raise DatasetError(f"{path}: no usable rows ({len(read.rejects)} rejected)")
    weak, strong = choose_pair([r for _, _, r in read.rows], weak, strong)
    cols = _Columns()
    rejects = list(read.rejects)
    for number, raw, row in read.rows:
        missing = [m for m in (weak, strong) if m not in row.correct or m not in row.cost_usd]
        if missing:
            rejects.append(_reject(number, f"no score or cost for {', '.join(missing)}", raw))
            continue
        cols.ids.append(row.id)
        cols.texts.append(row.prompt)
        cols.sources.append(row.source)
        cols.labels.append(row.task_label)
        cols.weak.append(float(row.correct[weak]))
        cols.strong.append(float(row.correct[strong]))
        cols.weak_cost.append(row.cost_usd[weak])
        cols.strong_cost.append(row.cost_usd[strong])
    rejects.sort(key=lambda r: r.line)
    if not cols.ids:
        raise DatasetError(f"{path}: no row has both '{weak}' and '{strong}'")
    notes = [f"weak model {weak}, strong model {strong}; costs from cost_usd"]
    return Loaded(cols.freeze(weak, strong), "n-model", rejects, 0, notes)


def load_dataset(
    path: Path,
    *,
    weak: str | None = None,
    strong: str | None = None,
    weak_price: ModelPrice = DEFAULT_WEAK_PRICE,
    strong_price: ModelPrice = DEFAULT_STRONG_PRICE,
) -> Loaded:
    if detect_format(path) == "n-model":
        return read_nmodel(path, weak, strong)
    if weak is not None or strong is not None:
        raise DatasetError(f"{path}: --weak/--strong choose among the models of an N-model file; this one has a pair")
    return read_routellm(path, weak_price, strong_price)
