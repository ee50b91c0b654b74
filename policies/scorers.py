"""Routing strategies for offline replay (`ladder eval`): each scores a prompt in [0, 1], its
estimated need for the strong model, after fitting on the train split only.

"strong was needed" means strictly: the strong model's answer scored higher than the weak one's.
`oracle` reads the labels of the very rows it scores: it is the ceiling, never a contender.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ladder.messages import Job
from policies.config import CLASSIFY_QUEUE, Policies, load_policies
from policies.datasets import LabelledSet
from policies.embedding import Embedder, Vectors, knn_vote
from policies.evaluation import oracle_scores
from policies.rules import RuleRouter

Floats = npt.NDArray[np.float64]


class Scorer(Protocol):
    name: str

    def fit(self, train: LabelledSet) -> None: ...

    def score(self, rows: LabelledSet) -> Floats: ...


@dataclass(frozen=True)
class ScorerOptions:
    seed: int = 0
    k: int = 20  # neighbours that vote in embedding-knn
    prior_strength: float = 10.0  # pseudo-rows pulling a task label's rate toward its source's
    knn_weight: float = 0.5  # knn+prior: the knn score's share of the blend
    policies: Policies | None = None  # rules-v1: None is the packaged default
    embedder: Callable[[], Embedder] | None = None  # built when first needed: loading a model takes seconds


class RandomScorer:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    def fit(self, train: LabelledSet) -> None:
        return None

    def score(self, rows: LabelledSet) -> Floats:
        return np.random.default_rng(self._seed).random(len(rows))


class OracleScorer:
    """Reference only: routes by the labels themselves."""

    name = "oracle"

    def fit(self, train: LabelledSet) -> None:
        return None

    def score(self, rows: LabelledSet) -> Floats:
        return oracle_scores(rows.weak, rows.strong)


class LengthScorer:
    """Longer prompts to the strong model: the score is the prompt's length percentile in train."""

    name = "length"

    def __init__(self) -> None:
        self._lengths: Floats = np.zeros(0)

    def fit(self, train: LabelledSet) -> None:
        self._lengths = np.sort(np.array([len(t) for t in train.texts], dtype=np.float64))

    def score(self, rows: LabelledSet) -> Floats:
        if self._lengths.size == 0:
            raise RuntimeError("length: fit() first")
        lengths = np.array([len(t) for t in rows.texts], dtype=np.float64)
        return np.searchsorted(self._lengths, lengths, side="right") / len(self._lengths)


class TaskPriorScorer:
    """The train rate at which strong beat weak for the prompt's task label, shrunk toward its
    source's rate, itself shrunk toward the global rate; an unseen label falls back to its source,
    an unseen source to the global rate. Labels are taken per source: 'math' in two sources is two."""

    name = "task-prior"

    def __init__(self, strength: float = 10.0) -> None:
        self._m = strength
        self._global = 0.5
        self._sources: dict[str, float] = {}
        self._labels: dict[tuple[str, str], float] = {}

    def _rate(self, wins: float, rows: int, prior: float) -> float:
        return (wins + self._m * prior) / (rows + self._m)

    def fit(self, train: LabelledSet) -> None:
        wins = train.strong_wins
        self._global = float(wins.mean()) if len(train) else 0.5
        self._sources, self._labels = {}, {}
        for source in np.unique(train.sources):
            in_source = train.sources == source
            rate = self._rate(float(wins[in_source].sum()), int(in_source.sum()), self._global)
            self._sources[str(source)] = rate
            for label in np.unique(train.task_labels[in_source]):
                mask = in_source & (train.task_labels == label)
                self._labels[(str(source), str(label))] = self._rate(float(wins[mask].sum()), int(mask.sum()), rate)

    def score(self, rows: LabelledSet) -> Floats:
        out = np.empty(len(rows))
        for i, (source, label) in enumerate(zip(rows.sources, rows.task_labels, strict=True)):
            key = (str(source), str(label))
            out[i] = self._labels.get(key, self._sources.get(key[0], self._global))
        return out


def _embed(embedder: Embedder, texts: list[str]) -> Vectors:
    return asyncio.run(embedder.embed(texts))


class KnnScorer:
    """The similarity-weighted share of 'strong was needed' among a prompt's k nearest train prompts
    (policies.embedding.knn_vote)."""

    name = "embedding-knn"

    def __init__(self, embedder: Callable[[], Embedder], k: int = 20, chunk: int = 1024) -> None:
        self._make_embedder = embedder
        self._embedder: Embedder | None = None
        self._k = k
        self._chunk = chunk  # queries per similarity matrix: bounds memory on large sets
        self._vectors: Vectors | None = None
        self._labels: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)

    def _embed(self, texts: list[str]) -> Vectors:
        if self._embedder is None:
            self._embedder = self._make_embedder()
        return _embed(self._embedder, texts)

    def fit(self, train: LabelledSet) -> None:
        self._vectors = self._embed(train.texts)
        self._labels = train.strong_wins

    def score(self, rows: LabelledSet) -> Floats:
        if self._vectors is None:
            raise RuntimeError("embedding-knn: fit() first")
        queries = self._embed(rows.texts)
        parts = [
            knn_vote(queries[i : i + self._chunk], self._vectors, self._labels, self._k)[0]
            for i in range(0, len(queries), self._chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)


class BlendScorer:
    """knn+prior: a weighted mean of two scorers' scores."""

    def __init__(self, name: str, first: Scorer, second: Scorer, first_weight: float) -> None:
        self.name = name
        self._parts = (first, second)
        self._weight = first_weight

    def fit(self, train: LabelledSet) -> None:
        for part in self._parts:
            part.fit(train)

    def score(self, rows: LabelledSet) -> Floats:
        first, second = (part.score(rows) for part in self._parts)
        return self._weight * first + (1.0 - self._weight) * second


class RulesScorer:
    """Ladder's live rules (policies.rules.RuleRouter) on each prompt as a plain job: the cheapest
    tier scores 0, the undecided band (the classifier is not replayed) 0.5, higher tiers 0.5 to 1."""

    def __init__(self, policies: Policies, name: str = "rules-v1") -> None:
        self.name = name
        self._router = RuleRouter(policies)
        tiers = policies.tier_names
        self._tier_score = {t: 0.0 if i == 0 else 0.5 + 0.5 * i / (len(tiers) - 1) for i, t in enumerate(tiers)}
        self._tier_score[CLASSIFY_QUEUE] = 0.5

    def fit(self, train: LabelledSet) -> None:
        return None

    def score(self, rows: LabelledSet) -> Floats:
        tiers = (self._router.route(Job(id=i, prompt=t)).tier for i, t in zip(rows.ids, rows.texts, strict=True))
        return np.array([self._tier_score[t] for t in tiers], dtype=np.float64)


def _embedder(o: ScorerOptions) -> Callable[[], Embedder]:
    if o.embedder is None:
        raise ValueError("embedding strategies need an embedder")
    return o.embedder


SCORERS: dict[str, Callable[[ScorerOptions], Scorer]] = {
    "random": lambda o: RandomScorer(o.seed),
    "oracle": lambda o: OracleScorer(),
    "length": lambda o: LengthScorer(),
    "task-prior": lambda o: TaskPriorScorer(o.prior_strength),
    "embedding-knn": lambda o: KnnScorer(_embedder(o), o.k),
    "knn+prior": lambda o: BlendScorer(
        "knn+prior", KnnScorer(_embedder(o), o.k), TaskPriorScorer(o.prior_strength), o.knn_weight
    ),
    "rules-v1": lambda o: RulesScorer(o.policies or load_policies()),
}
REFERENCE_ONLY = frozenset({"oracle"})  # reads the labels it is scored on: shown, never ranked
NEEDS_EMBEDDER = frozenset({"embedding-knn", "knn+prior"})


def build_scorer(name: str, options: ScorerOptions) -> Scorer:
    factory = SCORERS.get(name)
    if factory is None:
        raise ValueError(f"unknown strategy '{name}' (known: {', '.join(SCORERS)})")
    return factory(options)
