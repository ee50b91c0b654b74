"""`ladder eval`: the dataset readers and split, RouteLLM's figures on hand-made arrays, the vector
cache, and the command end to end. No Redis, no ClickHouse, no model: datasets are written here."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladder.eval_cmd import CachedEmbedder, add_eval_parser, run_eval
from policies.datasets import (
    DEFAULT_STRONG_PRICE,
    DEFAULT_WEAK_PRICE,
    DatasetError,
    ModelPrice,
    in_test_split,
    load_dataset,
    normalize_score,
    split_mask,
)
from policies.embedding import Vectors, normalize
from policies.evaluation import (
    apgr,
    at_quality,
    bootstrap_apgr,
    cpt,
    curve,
    fixed_route_summary,
    oracle_scores,
    random_curve,
)


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def routellm_row(i: int, weak: float, strong: float, **extra: Any) -> dict[str, Any]:
    row = {
        "id": f"mmlu/x/{i}",
        "source": "mmlu",
        "task_label": "x",
        "prompt": f"question {i}",
        "weak_model": "mixtral",
        "weak_score": weak,
        "strong_model": "gpt-4",
        "strong_score": strong,
        "score_scale": "0/1 correct",
        "contaminated": False,
    }
    return {**row, **extra}


class BagEmbedder:
    """Words hashed into 16 buckets: texts sharing words are near, others far. Counts its calls."""

    name = "fake/bag-of-words"

    def __init__(self) -> None:
        self.texts_embedded = 0

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts_embedded += len(texts)
        rows = np.zeros((len(texts), 16), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, hashlib.blake2b(word.encode(), digest_size=2).digest()[0] % 16] += 1.0
        return normalize(rows)

    async def aclose(self) -> None:
        return None


# ---- split ----------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_near_the_fraction(tmp_path: Path) -> None:
    ids = [f"row-{i}" for i in range(4000)]
    first = [in_test_split(i) for i in ids]
    assert first == [in_test_split(i) for i in ids]  # same answer on every call
    assert 0.18 < sum(first) / len(ids) < 0.22
    # a row's side depends on its id alone: removing other rows moves nothing
    assert [in_test_split(i) for i in ids[::7]] == first[::7]
    assert sum(in_test_split(i, 0.5) for i in ids) > sum(first)  # a larger fraction takes more rows

    path = write_jsonl(tmp_path / "d.jsonl", [routellm_row(i, 0, 1) | {"id": ids[i]} for i in range(300)])
    data = load_dataset(path).data
    test = split_mask(data)
    train_ids, test_ids = set(data.take(~test).ids), set(data.take(test).ids)
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(data.ids)
    assert test.tolist() == first[:300]


# ---- reading --------------------------------------------------------------------------------------


def test_contaminated_rows_are_dropped(tmp_path: Path) -> None:
    rows = [routellm_row(i, 0, 1, contaminated=i % 3 == 0) for i in range(9)]
    loaded = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert loaded.contaminated == 3
    assert loaded.data.ids == [f"mmlu/x/{i}" for i in (1, 2, 4, 5, 7, 8)]
    assert loaded.rejects == []


def test_bad_lines_are_rejected_with_their_number_and_the_rest_go_through(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [
        routellm_row(0, 1, 1),
        "{not json",
        {k: v for k, v in routellm_row(2, 0, 1).items() if k != "strong_score"},
        routellm_row(3, 0, 1, score_scale="stars out of 5"),
        routellm_row(4, 0, 1, colour="blue"),
        routellm_row(0, 0, 1),  # the id of line 1 again
        "",
        routellm_row(7, 2.0, 1),  # 2 is no 0/1 score
        routellm_row(8, 0, 1),
    ]
    loaded = load_dataset(write_jsonl(tmp_path / "d.jsonl", lines))
    assert loaded.data.ids == ["mmlu/x/0", "mmlu/x/8"]
    reasons = {r.line: r.reason for r in loaded.rejects}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert reasons[2].startswith("not valid JSON")
    assert "strong_score" in reasons[3]
    assert "unknown score_scale 'stars out of 5'" in reasons[4]
    assert "colour" in reasons[5]
    assert reasons[6] == "duplicate id 'mmlu/x/0' (first on line 1)"
    assert reasons[7] == "empty line"
    assert "outside" in reasons[8]


def test_a_file_without_a_usable_row_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", [routellm_row(0, 0, 1, contaminated=True), "{}"]))


def test_mt_bench_grades_are_put_on_zero_to_one(tmp_path: Path) -> None:
    scale = "GPT-4 grade 1-10, mean of 2 turns"
    assert normalize_score(1.0, scale) == 0.0
    assert normalize_score(10.0, scale) == 1.0
    assert normalize_score(5.5, scale) == pytest.approx(0.5)
    assert normalize_score(1.0, "0/1 correct") == 1.0
    with pytest.raises(ValueError, match="outside"):
        normalize_score(0.0, scale)
    rows = [
        routellm_row(0, 9.5, 10.0, source="mt_bench", score_scale=scale, turns=["a", "b"], weak_turn_scores=[10, 9]),
        routellm_row(1, 0.0, 1.0),
    ]
    loaded = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert loaded.data.weak.tolist() == pytest.approx([8.5 / 9, 0.0])
    assert loaded.data.strong.tolist() == [1.0, 1.0]
    assert any("(score - 1) / 9" in n for n in loaded.notes)


def test_routellm_costs_come_from_the_prices_and_estimated_tokens(tmp_path: Path) -> None:
    row = routellm_row(0, 0, 1) | {"prompt": "x" * 400}  # 100 tokens in, 200 assumed out
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row])).data
    assert data.weak_cost[0] == pytest.approx((100 * 1 + 200 * 5) / 1e6)
    assert data.strong_cost[0] == pytest.approx((100 * 3 + 200 * 15) / 1e6)
    assert DEFAULT_WEAK_PRICE.prompt_cost(100) == Decimal("0.0011")
    assert ModelPrice(Decimal(3), Decimal(15)) == DEFAULT_STRONG_PRICE
    cheap = load_dataset(tmp_path / "d.jsonl", weak_price=ModelPrice(Decimal(0), Decimal(0))).data
    assert cheap.weak_cost[0] == 0.0


def nmodel_row(i: int, correct: dict[str, Any], cost: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"id": f"q{i}", "prompt": f"question {i}", "correct": correct, "cost_usd": cost, **extra}


def test_n_model_format_chooses_the_cheapest_and_the_best(tmp_path: Path) -> None:
    rows = [
        nmodel_row(0, {"small": 1, "mid": 1, "big": 1}, {"small": 0.001, "mid": 0.002, "big": 0.01}, source="a"),
        nmodel_row(1, {"small": 0, "mid": 1, "big": 1}, {"small": 0.001, "mid": 0.002, "big": 0.01}),
        nmodel_row(2, {"small": 0, "mid": 0, "big": True}, {"small": 0.001, "mid": 0.002, "big": 0.01}),
        nmodel_row(3, {"small": 0.5, "big": 0}, {"small": 0.001, "big": 0.01}),  # no mid
        nmodel_row(4, {"small": 1.5}, {"small": 0.001}),  # not a 0..1 score
    ]
    path = write_jsonl(tmp_path / "n.jsonl", rows)
    loaded = load_dataset(path)
    assert loaded.format == "n-model"
    assert (loaded.data.weak_model, loaded.data.strong_model) == ("small", "big")
    assert loaded.data.ids == ["q0", "q1", "q2", "q3"]
    assert loaded.data.weak.tolist() == [1.0, 0.0, 0.0, 0.5]
    assert loaded.data.strong.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert loaded.data.strong_cost.tolist() == [0.01, 0.01, 0.01, 0.01]
    assert loaded.data.sources.tolist() == ["a", "unknown", "unknown", "unknown"]
    assert [(r.line, r.reason) for r in loaded.rejects] == [(5, "score outside 0..1 or negative cost for small")]
    chosen = load_dataset(path, weak="small", strong="mid")
    assert chosen.data.ids == ["q0", "q1", "q2"]
    assert chosen.data.strong.tolist() == [1.0, 1.0, 0.0]
    assert next((r.line, r.reason) for r in chosen.rejects) == (4, "no score or cost for mid")
    with pytest.raises(DatasetError, match="same model"):
        load_dataset(path, weak="mid", strong="mid")
    with pytest.raises(DatasetError, match="--weak/--strong"):
        load_dataset(write_jsonl(tmp_path / "r.jsonl", [routellm_row(0, 0, 1)]), weak="small")


# ---- figures --------------------------------------------------------------------------------------

# Four prompts: the strong model gains on a and b, ties on c, loses on d.
WEAK = arr(0, 0, 1, 1)
STRONG = arr(1, 1, 1, 0)
WEAK_COST = arr(1, 1, 1, 1)
STRONG_COST = arr(3, 3, 3, 3)


def test_oracle_on_four_prompts() -> None:
    c = curve(oracle_scores(WEAK, STRONG), WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert c.shares.tolist() == [0.0, 0.5, 0.75, 1.0]  # a and b tie at the top: one step
    assert c.quality.tolist() == [0.5, 1.0, 1.0, 0.75]
    assert c.cost.tolist() == [4.0, 8.0, 10.0, 12.0]
    assert c.pgr is not None and c.pgr.tolist() == [0.0, 2.0, 2.0, 1.0]
    # trapezoids: 0.5 * (0 + 2) / 2 + 0.25 * 2 + 0.25 * (2 + 1) / 2
    assert apgr(c) == pytest.approx(1.375)
    assert cpt(c, 0.5) == pytest.approx(0.125)  # a quarter of the way to PGR 2 at share 0.5
    assert cpt(c, 0.8) == pytest.approx(0.2)
    at = at_quality(c)  # 0.95 * 0.75 = 0.7125, reached 0.2125 / 0.5 along the first segment
    assert at is not None
    assert at.strong_share == pytest.approx(0.2125)
    assert at.cost == pytest.approx(4.0 + 0.425 * 4.0)
    assert at.savings == pytest.approx((12.0 - 5.7) / 12.0)
    assert at.savings_usd == Decimal("6.300000")


def test_a_constant_scorer_and_the_random_expectation_are_the_diagonal() -> None:
    constant = curve(np.full(4, 0.3), WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert constant.shares.tolist() == [0.0, 1.0]
    assert apgr(constant) == pytest.approx(0.5)
    expected = random_curve(WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert apgr(expected) == pytest.approx(0.5)
    assert cpt(expected, 0.5) == pytest.approx(0.5)
    assert cpt(expected, 0.8) == pytest.approx(0.8)
    # many random scorings average to the same 0.5
    rng = np.random.default_rng(7)
    weak = rng.integers(0, 2, 400).astype(float)
    strong = np.maximum(weak, rng.integers(0, 2, 400))  # strong better on about a quarter
    free = np.zeros(400)
    values = [apgr(curve(rng.random(400), weak, strong, free, free)) for _ in range(300)]
    assert None not in values
    assert np.mean(values) == pytest.approx(0.5, abs=0.02)


def test_cpt_is_the_first_crossing_of_a_constructed_curve() -> None:
    # scores rank the prompts d, a, b, c: the curve dips below zero before it climbs
    scores = arr(0.8, 0.6, 0.4, 0.9)
    c = curve(scores, WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert c.pgr is not None and c.pgr.tolist() == [0.0, -1.0, 0.0, 1.0, 1.0]
    assert cpt(c, 0.5) == pytest.approx(0.625)  # halfway from share 0.5 (PGR 0) to 0.75 (PGR 1)
    assert cpt(c, 1.0) == pytest.approx(0.75)
    assert cpt(c, 1.5) is None  # never reached
    assert apgr(c) == pytest.approx(-0.125 - 0.125 + 0.125 + 0.25)


def test_figures_are_undefined_when_strong_is_no_better() -> None:
    c = curve(arr(0.1, 0.9), arr(1, 0), arr(0, 1), arr(1, 1), arr(2, 2))
    assert c.pgr is None and apgr(c) is None and cpt(c, 0.5) is None
    at = at_quality(c)  # quality itself is fine: all-weak already reaches 95% of strong
    assert at is not None and at.strong_share == 0.0 and at.savings == pytest.approx(0.5)


def test_fixed_routes() -> None:
    strong_only = fixed_route_summary(True, WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert strong_only.apgr is None and strong_only.at95 is not None
    assert strong_only.at95.strong_share == 1.0 and strong_only.at95.savings == 0.0
    weak_only = fixed_route_summary(False, WEAK, STRONG, WEAK_COST, STRONG_COST)
    assert weak_only.at95 is None  # 0.5 < 0.95 * 0.75
    reaches = fixed_route_summary(False, arr(1, 1), arr(1, 1), arr(1, 1), arr(4, 4))
    assert reaches.at95 is not None and reaches.at95.savings == pytest.approx(0.75)


def test_bootstrap_against_random() -> None:
    rng = np.random.default_rng(3)
    weak = rng.integers(0, 2, 300).astype(float)
    strong = np.maximum(weak, rng.integers(0, 2, 300))
    good = bootstrap_apgr(oracle_scores(weak, strong), weak, strong, resamples=300)
    assert good is not None and good.significant and good.low > 0.2
    flat = bootstrap_apgr(np.full(300, 0.5), weak, strong, resamples=300)
    assert flat is not None and not flat.significant
    assert flat.delta == pytest.approx(0.0) and flat.low == pytest.approx(0.0) and flat.high == pytest.approx(0.0)
    noise = bootstrap_apgr(rng.random(300), weak, strong, resamples=300)
    assert noise is not None and noise.low < noise.delta < noise.high
    again = bootstrap_apgr(rng.random(300), weak, strong, resamples=300, seed=0)
    same = bootstrap_apgr(oracle_scores(weak, strong), weak, strong, resamples=300)
    assert same == good and again is not None  # a fixed seed: the same interval
    paired = bootstrap_apgr(oracle_scores(weak, strong), weak, strong, baseline=oracle_scores(weak, strong))
    assert paired is not None and paired.delta == 0.0 and paired.low == paired.high == 0.0


# ---- the vector cache -----------------------------------------------------------------------------


def test_vectors_are_cached_by_text_and_reused_for_any_subset(tmp_path: Path) -> None:
    inner = BagEmbedder()
    texts = [f"prompt number {i}" for i in range(10)]
    first = asyncio.run(CachedEmbedder(inner, tmp_path, chunk=3, flush=4).embed(texts))
    assert inner.texts_embedded == 10
    assert (
        len(list(tmp_path.glob("*.npy"))) == len(list(tmp_path.glob("*.json"))) == 2
    )  # written at 6 (>= flush) and at the end
    again = CachedEmbedder(inner, tmp_path)  # a new process: reads the files
    subset = asyncio.run(again.embed([texts[7], texts[2], texts[7]]))
    assert inner.texts_embedded == 10 and again.embedded == 0
    assert np.array_equal(subset, first[[7, 2, 7]])
    more = asyncio.run(again.embed([*texts[:2], "a new prompt"]))
    assert inner.texts_embedded == 11 and again.embedded == 1
    assert np.array_equal(more[:2], first[:2])
    index = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert index["embedder"] == "fake/bag-of-words" and index["dim"] == 16


# ---- the command ----------------------------------------------------------------------------------


def eval_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def synthetic_benchmark(path: Path, rows: int = 1000) -> Path:
    """Proofs always need the strong model, trivia never; a few MT-Bench grades, one contaminated row."""
    rng = np.random.default_rng(11)
    lines: list[dict[str, Any]] = []
    for i in range(rows):
        hard = i % 4 == 0
        weak = 0.0 if hard else float(rng.random() < 0.8)
        strong = 1.0 if hard else weak
        label = "proofs" if hard else "trivia"
        words = "prove the lemma about groups rings" if hard else "name the capital river city"
        lines.append(routellm_row(i, weak, strong, task_label=label, prompt=f"{words} {i}"))
    for i in range(40):
        lines.append(
            routellm_row(
                rows + i,
                float(rng.integers(1, 11)),
                10.0,
                source="mt_bench",
                task_label="writing",
                score_scale="GPT-4 grade 1-10, mean of 2 turns",
            )
        )
    lines.append(routellm_row(rows + 99, 0, 1, contaminated=True))
    return write_jsonl(path, lines)


class FakeLocalEmbedder(BagEmbedder):
    """Stands in for worker.embedders.LocalEmbedder: no model is loaded in the tests."""


def test_eval_command_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LADDER_POLICIES", raising=False)
    monkeypatch.setattr("worker.embedders.LocalEmbedder", FakeLocalEmbedder)
    data = synthetic_benchmark(tmp_path / "bench.jsonl")
    plot = tmp_path / "curves.png"
    args = eval_args(
        str(data), "--strategy", "random,task-prior,embedding-knn,oracle", "--format", "json", "--plot", str(plot)
    )
    assert run_eval(args) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = {(r["strategy"], r["source"], r["reference"]): r for r in payload["rows"]}
    figures = ("apgr", "cpt50", "cpt80", "strong_share_at_95", "savings_at_95")
    for strategy in ("random", "task-prior", "embedding-knn"):
        for source in ("mmlu", "mt_bench", "overall"):
            row = rows[(strategy, source, False)]
            assert all(name in row for name in figures)
            assert {"apgr_vs_random", "ci_low", "ci_high", "significant"} <= set(row)
    prior = rows[("task-prior", "mmlu", False)]
    oracle = rows[("oracle", "mmlu", True)]["apgr"]
    assert oracle == pytest.approx(0.875, abs=0.03)  # all the gain in the first quarter: 0.25 / 2 + 0.75
    assert prior["apgr"] == pytest.approx(oracle, abs=0.01)  # the proofs label is the whole story
    assert prior["significant"] is True and prior["ci_low"] > 0
    assert prior["cpt80"] == pytest.approx(20.0, abs=6)  # a quarter of the rows are proofs
    assert rows[("embedding-knn", "mmlu", False)]["apgr"] == pytest.approx(oracle, abs=0.02)
    assert rows[("random", "overall", True)]["apgr"] == 0.5
    assert rows[("oracle", "overall", True)]["apgr"] >= rows[("task-prior", "overall", False)]["apgr"]
    assert rows[("all-strong", "overall", True)]["strong_share_at_95"] == 100.0
    assert Decimal(rows[("task-prior", "overall", False)]["savings_at_95_usd"]) > 0
    curve_points = rows[("task-prior", "overall", False)]["curve"]
    assert curve_points[0]["strong_share"] == 0.0 and curve_points[-1]["strong_share"] == 100.0
    mmlu_rows = rows[("task-prior", "mmlu", False)]["rows"]
    assert rows[("task-prior", "overall", False)]["rows"] == mmlu_rows + rows[("task-prior", "mt_bench", False)]["rows"]
    assert 150 < mmlu_rows < 250  # the 20% test split of 1000
    assert any("1 contaminated rows dropped" in n for n in payload["notes"])
    assert any("best strategy overall" in n and "oracle" not in n for n in payload["notes"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = list((tmp_path / "home" / "cache" / "embeddings").glob("fake_bag-of-words-*.npy"))
    assert cached  # the vectors went to $LADDER_HOME/cache/embeddings


def test_eval_command_defaults_to_the_policies_strategy_and_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LADDER_POLICIES", raising=False)
    data = synthetic_benchmark(tmp_path / "bench.jsonl", rows=200)
    with data.open("a") as f:
        f.write("oops\n")
    assert run_eval(eval_args(str(data), "--format", "csv", "--source", "mmlu", "--bootstrap", "0")) == 0
    captured = capsys.readouterr()
    header, *lines = captured.out.strip().splitlines()
    assert header.startswith("strategy,reference,source,rows,weak_quality,strong_quality,apgr,cpt50,cpt80")
    assert {line.split(",")[0] for line in lines} == {"rules-v1", "all-weak", "all-strong", "random", "oracle"}
    assert "line 242" in captured.err and "not valid JSON" in captured.err
    assert run_eval(eval_args(str(data), "--strategy", "nope")) == 2
    assert "unknown strategy nope" in capsys.readouterr().err
    assert run_eval(eval_args(str(tmp_path / "missing.jsonl"))) == 2
    assert run_eval(eval_args(str(data), "--source", "gsm8k")) == 2
    assert "no rows of source gsm8k" in capsys.readouterr().err


def test_eval_command_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_HOME", str(tmp_path / "home"))
    data = synthetic_benchmark(tmp_path / "bench.jsonl", rows=200)
    assert run_eval(eval_args(str(data), "--strategy", "length,task-prior", "--bootstrap", "200")) == 0
    text = capsys.readouterr().out
    assert "task-prior" in text and "references" in text and "oracle / overall" in text
    assert "best strategy overall: task-prior" in text
    with pytest.raises(SystemExit):
        eval_args(str(data), "--weak-price", "1-5")
