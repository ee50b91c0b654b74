"""The offline routing strategies of `ladder eval` on small sets built here (no model is loaded)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.config import parse_policies
from policies.datasets import LabelledSet
from policies.embedding import Embedder
from policies.evaluation import apgr, bootstrap_apgr, curve
from policies.scorers import (
    NEEDS_EMBEDDER,
    REFERENCE_ONLY,
    SCORERS,
    KnnScorer,
    RulesScorer,
    ScorerOptions,
    TaskPriorScorer,
    build_scorer,
)
from tests.helpers import THREE_TIERS
from tests.test_evaluation import BagEmbedder


def labelled(
    texts: list[str], weak: list[float], strong: list[float], labels: list[str] | None = None, source: str = "mmlu"
) -> LabelledSet:
    n = len(texts)
    return LabelledSet(
        ids=[f"r{i}" for i in range(n)],
        texts=texts,
        sources=np.array([source] * n, dtype=np.str_),
        task_labels=np.array(labels or [""] * n, dtype=np.str_),
        weak=np.array(weak, dtype=np.float64),
        strong=np.array(strong, dtype=np.float64),
        weak_cost=np.ones(n),
        strong_cost=np.full(n, 3.0),
    )


def one_label_needs_strong(n: int, seed: int) -> LabelledSet:
    """'algebra' always needs the strong model; elsewhere both models are right or wrong together."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["algebra", "history", "biology", "law"], size=n).tolist()
    weak = [0.0 if lab == "algebra" else float(rng.random() < 0.7) for lab in labels]
    strong = [1.0 if lab == "algebra" else w for lab, w in zip(labels, weak, strict=True)]
    texts = [f"{lab} question {i}" for i, lab in enumerate(labels)]
    return labelled(texts, weak, strong, labels)


def figure(scores: np.ndarray, rows: LabelledSet) -> float:
    value = apgr(curve(scores, rows.weak, rows.strong, rows.weak_cost, rows.strong_cost))
    assert value is not None
    return value


def test_task_prior_beats_random_when_one_label_always_needs_strong() -> None:
    train, test = one_label_needs_strong(800, 1), one_label_needs_strong(300, 2)
    prior = build_scorer("task-prior", ScorerOptions())
    prior.fit(train)
    rand = build_scorer("random", ScorerOptions(seed=5))
    rand.fit(train)
    prior_scores = prior.score(test)
    assert figure(prior_scores, test) > figure(rand.score(test), test) + 0.2
    boot = bootstrap_apgr(prior_scores, test.weak, test.strong, resamples=300)
    assert boot is not None and boot.significant
    algebra = test.task_labels == "algebra"
    assert prior_scores[algebra].min() > 0.9 > 0.1 > prior_scores[~algebra].max()


def test_task_prior_shrinks_and_falls_back() -> None:
    train = labelled(["a", "b", "c", "d"], [0, 0, 1, 1], [1, 1, 1, 1], ["hard", "hard", "easy", "easy"])
    scorer = TaskPriorScorer(strength=2.0)
    scorer.fit(train)
    # global rate 0.5; source mmlu (4 rows, 2 wins): (2 + 2 * 0.5) / 6 = 0.5
    # hard (2 rows, 2 wins): (2 + 2 * 0.5) / 4 = 0.75; easy: (0 + 1) / 4 = 0.25
    rows = labelled(["x", "y"], [0, 0], [1, 1], ["hard", "unseen"])
    assert scorer.score(rows).tolist() == pytest.approx([0.75, 0.5])
    other = labelled(["z"], [0], [1], ["hard"], source="gsm8k")  # same label, unseen source: global
    assert scorer.score(other).tolist() == [0.5]


def test_embedding_knn_with_a_fake_embedder_learns_from_train_only() -> None:
    hard = [f"prove theorem lemma {i}" for i in range(30)]
    easy = [f"capital city river {i}" for i in range(30)]
    train = labelled(hard + easy, [0.0] * 30 + [1.0] * 30, [1.0] * 30 + [1.0] * 30)
    embedder = BagEmbedder()
    made: list[Embedder] = []

    def make() -> Embedder:
        made.append(embedder)
        return embedder

    scorer = build_scorer("embedding-knn", ScorerOptions(k=5, embedder=make))
    assert made == []  # the embedder is built when first needed, not with the scorer
    scorer.fit(train)
    assert embedder.texts_embedded == 60
    test = labelled(["prove theorem lemma 99", "capital city river 99"], [0, 1], [1, 1])
    scores = scorer.score(test)
    assert scores[0] > 0.9 and scores[1] < 0.1
    assert len(made) == 1 and embedder.texts_embedded == 62
    # with k larger than train, every example votes: still ordered by similarity weight
    wide = KnnScorer(lambda: BagEmbedder(), k=1000)
    wide.fit(train)
    first, second = wide.score(test)
    assert first > second
    with pytest.raises(RuntimeError, match="fit"):
        KnnScorer(lambda: BagEmbedder()).score(test)


def test_knn_plus_prior_blends_both() -> None:
    train = one_label_needs_strong(200, 3)
    test = one_label_needs_strong(50, 4)
    blend = build_scorer("knn+prior", ScorerOptions(k=5, embedder=BagEmbedder, knn_weight=0.5))
    knn = build_scorer("embedding-knn", ScorerOptions(k=5, embedder=BagEmbedder))
    prior = build_scorer("task-prior", ScorerOptions())
    for s in (blend, knn, prior):
        s.fit(train)
    assert blend.score(test) == pytest.approx(0.5 * knn.score(test) + 0.5 * prior.score(test))


def test_length_scores_are_train_percentiles() -> None:
    scorer = build_scorer("length", ScorerOptions())
    scorer.fit(labelled(["a", "bb", "ccc", "dddd"], [0] * 4, [1] * 4))
    assert scorer.score(labelled(["", "xx", "yyyyyyy"], [0] * 3, [1] * 3)).tolist() == [0.0, 0.5, 1.0]


def test_rules_v1_scores_by_the_tier_the_live_rules_choose() -> None:
    policies = parse_policies(THREE_TIERS)  # keywords and long inputs: standard; 300+ tokens: classify band
    scorer = RulesScorer(policies)
    rows = labelled(["please analyze this", "x" * 1300, "x" * 8004, "hi"], [0] * 4, [1] * 4)
    assert scorer.score(rows).tolist() == [0.75, 0.5, 0.75, 0.0]
    assert build_scorer("rules-v1", ScorerOptions(policies=policies)).name == "rules-v1"


def test_the_registry() -> None:
    assert {"random", "oracle", "length", "task-prior", "embedding-knn", "knn+prior", "rules-v1"} <= set(SCORERS)
    assert {"oracle"} == REFERENCE_ONLY
    assert set(SCORERS) >= NEEDS_EMBEDDER
    with pytest.raises(ValueError, match="unknown strategy 'x'"):
        build_scorer("x", ScorerOptions())
    with pytest.raises(ValueError, match="need an embedder"):
        build_scorer("embedding-knn", ScorerOptions())
    rows = one_label_needs_strong(100, 9)
    oracle = build_scorer("oracle", ScorerOptions())
    oracle.fit(rows)
    assert figure(oracle.score(rows), rows) >= figure(np.full(100, 0.5), rows)
    rand = build_scorer("random", ScorerOptions(seed=1))
    assert rand.score(rows).tolist() == rand.score(rows).tolist()  # seeded: the same every call
