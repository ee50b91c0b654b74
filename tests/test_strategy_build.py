"""The loop: labelled scores -> `ladder strategy build` -> `ladder eval --labelled` against the current
strategy. Label choice and holdout are pure; the build reads a real chdb `scores` table; the
comparison runs the packaged local embedder (skipped without the `local` extra)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ladder.eval_cmd import add_eval_parser, run_eval
from ladder.messages import Outcome, RouteSource, Routing, Score, ScoreSource, Status
from ladder.strategy_cmd import add_strategy_parser, run_strategy
from policies.config import load_policies
from policies.embedding_router import Example, parse_examples
from policies.labels import LabelRow, build_examples, choose_labels, in_holdout, normalized, tally
from worker.clickhouse import ClickHouse

TIERS = ["cheap", "standard", "premium"]
_HAS_LOCAL = importlib.util.find_spec("sentence_transformers") is not None
needs_local_model = pytest.mark.skipif(
    not _HAS_LOCAL, reason="sentence-transformers is not installed (the 'local' extra)"
)

# Every text of the generation task reaches the undecided band; there CURRENT can only send it to the
# classifier, whose offline stand-in is the safe tier (standard here: neither the labels' cheap nor premium).
POLICIES = """
strategy = "current"

[[tiers]]
name = "cheap"
candidates = [{ provider = "openai", model = "gpt-4o-mini" }]

[[tiers]]
name = "standard"
candidates = [{ provider = "gemini", model = "gemini-2.0-flash" }]

[[tiers]]
name = "premium"
candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }]

[rules.classify]
tasks = ["classification", "generation"]
min_input_tokens = 0

[classifier]
provider = "openai"
model = "gpt-4.1-nano"
safe_tier = "standard"

[strategies.strict]
rules = { default_tier = "standard", premium_keywords = ["contract"] }
"""

TAX = [
    "How does the IRS treat capital gains from selling inherited stock under the stepped-up basis rule?",
    "Can I deduct home office expenses on my federal income tax return if I am self-employed?",
    "What are the tax consequences of converting a traditional IRA into a Roth IRA?",
    "Explain how the alternative minimum tax applies to incentive stock options.",
    "Is a gift of money to my adult child subject to federal gift tax, and what is the annual exclusion?",
    "How are foreign earned income and the foreign tax credit handled on a US tax return?",
    "What is the tax treatment of a like-kind exchange of rental property under section 1031?",
    "Can capital losses from cryptocurrency trades offset ordinary income on my tax return?",
]
TAX_PARAPHRASES = [
    "What is the IRS rule for the cost basis of shares I inherited from my father when I sell them?",
    "As a freelancer, am I allowed to write off my home office on my income taxes?",
]
SMALL_TALK = [
    "What's the weather like in Paris today?",
    "Will it rain tomorrow in Seattle?",
    "Is it going to be sunny this weekend?",
    "How cold will it be tonight?",
    "Hello! How are you doing today?",
    "Good morning, nice to meet you.",
    "Hi there, thanks for your help!",
    "Is it snowing in Denver this morning?",
]
SMALL_TALK_PARAPHRASES = ["Hi, good evening, how is it going?", "Will it be rainy in Seattle tomorrow?"]
HOLDOUT = 0.3


def row(job: str, source: str, label: str, text: str = "", routing: int = 0, at: float = 0.0) -> LabelRow:
    return LabelRow(job, source, routing, label, text, at)


def job_ids(prefix: str, count: int, held_out: bool) -> list[str]:
    """Ids whose side of the holdout is known: the hash decides it, so the test picks the ids."""
    ids = (f"{prefix}-{n}" for n in range(10_000))
    return [i for i in ids if in_holdout(i, HOLDOUT) == held_out][:count]


# ---- choosing labels (pure) -------------------------------------------------------------------------


def test_feedback_beats_shadow_beats_escalation_and_the_highest_climb_wins() -> None:
    rows = [
        row("a", "escalation", "standard", "text a"),
        row("a", "shadow", "cheap", "text a", routing=1),
        row("a", "feedback", "premium"),
        row("b", "escalation", "premium", "text b", at=1.0),
        row("b", "escalation", "standard", "text b", at=2.0),  # later, but a lower climb
        row("c", "escalation", "standard", "text c"),
        row("c", "shadow", "premium", "text c"),
        row("d", "feedback", "", "text d", routing=Routing.UNKNOWN),  # low on the top tier: says nothing
        row("d", "escalation", "standard", "text d"),
        row("e", "feedback", "", "text e", routing=Routing.UNKNOWN),
        row("f", "shadow", "platinum", "text f"),  # a tier removed since
    ]
    choice = choose_labels(rows, TIERS)
    chosen = {label.job_id: (label.source, label.tier) for label in choice.labels}
    assert chosen == {
        "a": ("feedback", "premium"),
        "b": ("escalation", "premium"),
        "c": ("shadow", "premium"),
        "d": ("escalation", "standard"),
    }
    assert (choice.rows, choice.ignored) == (11, 3)


def test_texts_come_from_the_row_then_another_row_of_the_job_then_the_job_files() -> None:
    rows = [
        row("a", "feedback", "standard", routing=0),
        row("a", "escalation", "standard", "the job's own text"),
        row("b", "feedback", "cheap", routing=1),
        row("c", "feedback", "premium"),
    ]
    choice = choose_labels(rows, TIERS)
    assert [label.text for label in choice.labels] == ["the job's own text", "", ""]
    assert choice.without_text() == {"b", "c"}
    built = build_examples(choice, [], TIERS, job_texts={"b": "from the job file"}, holdout_share=0.0)
    assert [(e.text, e.tier) for e in built.examples] == [
        ("the job's own text", "standard"),
        ("from the job file", "cheap"),
    ]
    assert built.summary.without_text == 1 and built.summary.by_source == {
        "feedback": {"cheap": 1, "premium": 1, "standard": 1}
    }


def test_a_new_label_wins_over_a_current_example_with_the_same_text() -> None:
    current = [Example("Summarize  this MEMO", "cheap", 1), Example("Say hi", "cheap", 2)]
    rows = [
        row("j1", "shadow", "premium", "summarize this memo"),
        row("j2", "shadow", "cheap", "say HI", routing=1),
        row("j3", "escalation", "standard", "a new text"),
        row("j4", "escalation", "premium", "A new   text"),  # same text, another job: one example
    ]
    built = build_examples(choose_labels(rows, TIERS), current, TIERS, holdout_share=0.0)
    assert [(e.text, e.tier) for e in built.examples] == [
        ("Summarize  this MEMO", "premium"),
        ("Say hi", "cheap"),
        ("A new   text", "premium"),
    ]
    s = built.summary
    assert (s.examples_before, s.examples_after, s.added, s.relabelled, s.same_text) == (2, 3, 1, 1, 1)
    assert normalized("  A\tnew\n TEXT ") == "a new text"


def test_the_holdout_is_fixed_by_the_job_id_and_never_seen_by_the_examples() -> None:
    rows = [row(f"job-{i}", "shadow", TIERS[i % 3], f"text number {i}") for i in range(2000)]
    current = [Example("text number 7", "cheap", 1), Example("an old example", "cheap", 2)]
    first = build_examples(choose_labels(rows, TIERS), current, TIERS, holdout_share=0.2)
    again = build_examples(choose_labels(list(reversed(rows)), TIERS), current, TIERS, holdout_share=0.2)
    assert first.holdout == again.holdout and first.examples == again.examples
    held = {h.job_id for h in first.holdout}
    assert held == {f"job-{i}" for i in range(2000) if in_holdout(f"job-{i}", 0.2)}
    assert abs(len(held) / 2000 - 0.2) < 0.03
    example_texts = {normalized(e.text) for e in first.examples}
    assert not example_texts & {normalized(h.text) for h in first.holdout}
    assert "an old example" in example_texts
    # a current example whose text is held out leaves the examples: the holdout must be unseen
    assert ("job-7" in held) == (first.summary.dropped_for_holdout == 1) == ("text number 7" not in example_texts)


def test_tally_counts_exact_under_and_over_routes() -> None:
    figures = tally(
        "v2",
        labels=["cheap", "premium", "premium", "standard"],
        routed=["cheap", "standard", "premium", "premium"],
        asked=[False, True, False, False],
        tier_names=TIERS,
        cost=Decimal("0.02"),
    )
    assert (figures.exact, figures.under, figures.over, figures.top_tier, figures.asks_classifier) == (2, 1, 1, 2, 1)
    assert figures.cost_per_1000 == Decimal("5") and figures.share(figures.exact) == 0.5
    assert figures.by_label == {
        "cheap": {"cheap": 1},
        "standard": {"premium": 1},
        "premium": {"standard": 1, "premium": 1},
    }


# ---- `ladder strategy build` against chdb --------------------------------------------------------------


def score(job: str, source: ScoreSource, label: str, text: str, routing: Routing = Routing.WRONG) -> Score:
    return Score(
        event_id=f"{job}#{source.value}", job_id=job, batch="b", customer="acme", feature="faq", task="generation",
        strategy="current", experiment="", arm="", tier="cheap", source=source, score=0.0, routing=routing,
        label_tier=label, method="judge", detail="", text=text, correction="", at=time.time(),
    )  # fmt: skip


def final_outcome(job: str, input_tokens: int, output_tokens: int) -> Outcome:
    now = time.time()
    return Outcome(
        event_id=f"{job}#1", job_id=job, batch="b", customer="acme", feature="faq", task="generation",
        route_source=RouteSource.RULE, intended_tier="cheap", tier="cheap", provider="openai", model="gpt-4o-mini",
        attempt=1, status=Status.OK, error_class="", error_message="", input_tokens=input_tokens,
        output_tokens=output_tokens, cost=Decimal("0.001"), counterfactual_cost=Decimal("0.01"), latency_ms=10.0,
        started_at=now, finished_at=now, strategy="current", simulated=False, final=True,
    )  # fmt: skip


def labelled_scores() -> list[Score]:
    """Tax questions the cheap tier got wrong (shadow: premium needed), small talk it got right; the
    paraphrases' ids fall in the holdout, the rest's do not."""
    scores = []
    for ids, texts, label, routing in (
        (job_ids("tax", len(TAX), False), TAX, "premium", Routing.WRONG),
        (job_ids("tax", len(TAX_PARAPHRASES), True), TAX_PARAPHRASES, "premium", Routing.WRONG),
        (job_ids("talk", len(SMALL_TALK), False), SMALL_TALK, "cheap", Routing.RIGHT),
        (job_ids("talk", len(SMALL_TALK_PARAPHRASES), True), SMALL_TALK_PARAPHRASES, "cheap", Routing.RIGHT),
    ):
        scores += [score(i, ScoreSource.SHADOW, label, t, routing) for i, t in zip(ids, texts, strict=True)]
    return scores


@pytest.fixture
def folder(tmp_path: Path, clickhouse: ClickHouse, chdb_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A policies file in its own folder, and the environment of the in-process commands: chdb admits
    one process per folder, so the build runs in this one, on the test's database."""
    (tmp_path / "policies.toml").write_text(POLICIES)
    monkeypatch.setenv("CLICKHOUSE_URL", chdb_url)
    monkeypatch.setenv("CLICKHOUSE_DATABASE", clickhouse.database)
    monkeypatch.setenv("LADDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LADDER_POLICIES", raising=False)
    return tmp_path


def ladder_in_process(folder: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies")
    sub = parser.add_subparsers(dest="command", required=True)
    add_strategy_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(["--policies", str(folder / "policies.toml"), *argv])
    return run_strategy(args) if args.command == "strategy" else run_eval(args)


def register(folder: Path, name: str) -> Path:
    policies = folder / "policies.toml"
    policies.write_text(policies.read_text() + f'\n[strategies."{name}"]\nfile = "{name}.toml"\n')
    return policies


def test_build_writes_the_examples_the_holdout_and_a_strategy_file_that_loads(
    folder: Path, clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = labelled_scores()
    scores.append(score("fb-2", ScoreSource.FEEDBACK, "standard", ""))  # feedback rows carry no text (not held out)
    clickhouse.insert_scores(scores)
    held = [s.job_id for s in scores if in_holdout(s.job_id, HOLDOUT)]
    clickhouse.insert_outcomes([final_outcome(job, 100 + n, 50) for n, job in enumerate(held)])
    jobs = folder / "jobs.jsonl"
    jobs.write_text('{"id": "fb-2", "prompt": "Draft a short note to the landlord"}\nnot json\n')

    code = ladder_in_process(
        folder, "strategy", "build", "--name", "v2", "--holdout", str(HOLDOUT), "--jobs", str(jobs), "--format", "json"
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "jobs.jsonl line 2" in captured.err  # the bad line of the job file, by number
    report = json.loads(captured.out)
    s = report["summary"]
    assert s["labelled_jobs"] == 21 and s["without_text"] == 0 and s["holdout"] == 4
    assert s["by_source"] == {"feedback": {"standard": 1}, "shadow": {"cheap": 10, "premium": 10}}
    assert (s["examples_before"], s["examples_after"]) == (0, 17)
    assert report["policies_lines"] == '[strategies."v2"]\nfile = "v2.toml"\n'
    assert 'strategy = "current", share = 0.9' in report["experiment_lines"]

    examples = parse_examples((folder / "v2.examples.jsonl").read_text(), TIERS)
    assert {e.text for e in examples} == {*TAX, *SMALL_TALK, "Draft a short note to the landlord"}
    holdout = [json.loads(x) for x in (folder / "v2.holdout.jsonl").read_text().splitlines()]
    assert {h["text"] for h in holdout} == {*TAX_PARAPHRASES, *SMALL_TALK_PARAPHRASES}
    assert all(h["job_id"] in held and h["task"] == "generation" and h["output_tokens"] == 50 for h in holdout)

    loaded = load_policies(register(folder, "v2")).for_strategy("v2")
    assert loaded.embedding.enabled and loaded.embedding.examples == str(folder / "v2.examples.jsonl")
    assert (loaded.embedding.k, loaded.embedding.threshold, loaded.embedding.premium_score) == (10, 0.5, None)
    assert loaded.rules == load_policies(folder / "policies.toml").rules  # nothing but [embedding] differs


def test_existing_files_are_refused_unless_forced_and_a_version_keeps_its_own_rules(
    folder: Path, clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str]
) -> None:
    clickhouse.insert_scores(labelled_scores())
    out = folder / "built"
    argv = ("strategy", "build", "--from", "strict", "--name", "strict-2", "--out", str(out))
    assert ladder_in_process(folder, *argv) == 0
    table = capsys.readouterr().out
    assert "labelled jobs by source and label tier" in table and 'file = "built/strict-2.toml"' in table
    before = (out / "strict-2.examples.jsonl").read_bytes()

    assert ladder_in_process(folder, *argv) == 2
    assert "exist already; --force overwrites them" in capsys.readouterr().err
    assert ladder_in_process(folder, *argv, "--force", "--holdout", "0") == 0
    assert (out / "strict-2.examples.jsonl").read_bytes() != before  # rewritten: nothing held out now
    assert (out / "strict-2.holdout.jsonl").read_text() == ""

    policies = folder / "policies.toml"
    policies.write_text(POLICIES + '\n[strategies."strict-2"]\nfile = "built/strict-2.toml"\n')
    rebuilt = load_policies(policies).for_strategy("strict-2")
    assert rebuilt.rules.default_tier == "standard" and rebuilt.rules.premium_keywords == ["contract"]
    assert rebuilt.embedding.examples == str(out / "strict-2.examples.jsonl")

    assert ladder_in_process(folder, "strategy", "build", "--from", "nope", "--name", "x") == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_without_labels_the_build_exits_1(
    folder: Path, clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ladder_in_process(folder, "strategy", "build", "--name", "v2") == 1
    assert "no labelled jobs in the scores" in capsys.readouterr().err
    clickhouse.insert_scores([score("fb-1", ScoreSource.FEEDBACK, "premium", "")])
    assert ladder_in_process(folder, "strategy", "build", "--name", "v2", "--since", "2d") == 1
    message = capsys.readouterr().err
    assert "none with a text" in message and "--jobs FILE.jsonl" in message
    assert not (folder / "v2.toml").exists()


def test_the_command_is_registered_and_says_when_it_can_run(tmp_path: Path) -> None:
    env = dict(os.environ, LADDER_HOME=str(tmp_path / "home"), CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}")
    env.pop("LADDER_POLICIES", None)
    run = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "strategy", "build", "--help"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and "no sink" in " ".join(run.stdout.split())
    empty = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "strategy", "build", "--name", "v2", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert empty.returncode == 1 and "no labelled jobs" in empty.stderr


# ---- the comparison ------------------------------------------------------------------------------------


def compare(folder: Path, capsys: pytest.CaptureFixture[str], labelled: Path, *argv: str) -> dict[str, Any]:
    assert ladder_in_process(folder, "eval", "--labelled", str(labelled), *argv, "--format", "json") == 0
    return dict(json.loads(capsys.readouterr().out))


@needs_local_model
def test_the_new_strategy_sends_held_out_tax_questions_to_premium_and_beats_the_current_one(
    folder: Path, clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = labelled_scores()
    clickhouse.insert_scores(scores)
    held = [s.job_id for s in scores if in_holdout(s.job_id, HOLDOUT)]
    clickhouse.insert_outcomes([final_outcome(job, 40, 200) for job in held])
    assert ladder_in_process(folder, "strategy", "build", "--name", "v2", "--holdout", str(HOLDOUT)) == 0
    capsys.readouterr()
    register(folder, "v2")

    report = compare(folder, capsys, folder / "v2.holdout.jsonl", "--strategy", "v2", "--against", "current")
    rows = {r["strategy"]: r for r in report["rows"]}
    current, new = rows["current"], rows["v2"]
    assert current["examples"] == new["examples"] == 4
    assert current["exact"] == 0 and current["asks_classifier"] == 4  # all at the safe tier, standard
    assert report["by_label"]["v2"]["premium"] == {"premium": 2}  # the tax paraphrases, by their neighbours
    assert new["exact"] > current["exact"] and new["under"] == 0
    assert new["asks_classifier"] < current["asks_classifier"]
    assert Decimal(new["cost_per_1000"]) > 0 and Decimal(current["cost_per_1000"]) > 0
    assert any(n.startswith("v2 against current: exact +") for n in report["notes"])


@needs_local_model
def test_a_premium_share_recalibrates_the_cut_on_the_new_examples(
    folder: Path, clickhouse: ClickHouse, capsys: pytest.CaptureFixture[str]
) -> None:
    clickhouse.insert_scores(labelled_scores())
    argv = ("strategy", "build", "--name", "v3", "--premium-share", "0.5", "--format", "json")
    assert ladder_in_process(folder, *argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 < report["premium_score"] <= 1.0 and report["premium_share"] == pytest.approx(0.5, abs=0.07)
    loaded = load_policies(register(folder, "v3")).for_strategy("v3")
    assert loaded.embedding.premium_score == round(report["premium_score"], 6)
    assert loaded.embedding.premium_share_target == 0.5


def test_the_comparison_names_bad_lines_and_unknown_strategies(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled = folder / "labelled.jsonl"
    labelled.write_text(
        '{"text": "Hello there", "tier": "cheap", "input_tokens": 10, "output_tokens": 20}\n'
        '{"text": "Review this contract", "tier": "premium", "task": "extraction", "input_tokens": 10, "output_tokens": 20}\n'
    )
    report = compare(folder, capsys, labelled, "--strategy", "strict")  # rules only: no model is loaded
    rows = {r["strategy"]: r for r in report["rows"]}
    assert rows["strict"]["exact"] == 0 and rows["strict"]["under"] == 1  # keyword -> standard, not premium
    assert rows["current"]["asks_classifier"] == 1 and Decimal(rows["current"]["cost_per_1000"]) > 0
    assert any("1 texts carry no task" in n for n in report["notes"])

    labelled.write_text('{"text": "x", "tier": "gold"}\n{"text": "y", "tier": "cheap", "task": "poetry"}\nnope\n')
    assert ladder_in_process(folder, "eval", "--labelled", str(labelled)) == 2
    message = capsys.readouterr().err
    assert "line 1: tier: 'gold' is not a tier" in message and "line 2: task: 'poetry'" in message
    assert "line 3" in message
    assert ladder_in_process(folder, "eval", "--labelled", str(labelled), "--strategy", "v9") == 2
    assert "unknown strategy v9" in capsys.readouterr().err
    assert ladder_in_process(folder, "eval") == 2
    assert "give DATASET.jsonl, or --labelled" in capsys.readouterr().err
