"""Strategies and experiments: versions parsed and merged, a deterministic split, and every row on its arm."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ladder.app import open_app
from ladder.messages import Job
from ladder.results import batch_records, result_line
from ladder.settings import Settings
from policies.config import PolicyError, parse_policies
from policies.experiments import Arm, Experiment, assign, bucket
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, line
from tests.pipeline import process

EXPERIMENT = """
[strategies."rules-v2"]
rules = { default_tier = "standard" }

[[experiments]]
name = "standard-default"
arms = [
  { name = "control", strategy = "rules-v1", share = 0.9 },
  { name = "treatment", strategy = "rules-v2", share = 0.1 },
]
"""


def _split(split_by: str = "job", share: float = 0.1) -> Experiment:
    arms = [Arm("control", "a", 1 - share), Arm("treatment", "b", share)]
    return Experiment("exp", arms, split_by=split_by)  # type: ignore[arg-type]


def test_the_same_job_always_lands_in_the_same_arm_and_shares_hold_over_10000_ids() -> None:
    experiment = _split()
    jobs = [Job(id=f"job-{i}", prompt="x") for i in range(10_000)]
    first = [experiment.arm_for(j).name for j in jobs]
    assert first == [experiment.arm_for(j).name for j in jobs]
    share = Counter(first)["treatment"] / len(jobs)
    assert abs(share - 0.1) < 0.01  # 3 standard deviations of a 10% share over 10,000 draws is 0.9 points
    three = Experiment("three", [Arm("a", "a", 0.5), Arm("b", "b", 0.3), Arm("c", "c", 0.2)])
    counts = Counter(three.arm_for(j).name for j in jobs)
    assert [round(counts[n] / 10_000, 2) for n in "abc"] == pytest.approx([0.5, 0.3, 0.2], abs=0.015)


def test_the_split_does_not_depend_on_the_process() -> None:
    """Python's own hash() is salted per process; a worker elsewhere must compute the same arm."""
    code = "from policies.experiments import bucket; print(repr(bucket('exp', 'job-42')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout) == bucket("exp", "job-42")


def test_a_customer_split_keeps_every_job_of_a_customer_in_one_arm() -> None:
    experiment = _split("customer", share=0.5)
    arms = {c: {experiment.arm_for(Job(id=f"{c}-{i}", prompt="x", customer=c)).name for i in range(50)}
            for c in ("acme", "globex", "initech", "umbrella")}  # fmt: skip
    assert all(len(a) == 1 for a in arms.values())


def test_scope_and_the_default_strategy() -> None:
    scoped = Experiment("exp", [Arm("a", "v2", 0.5), Arm("b", "v3", 0.5)], features=["extract"])
    outside = Job(id="1", prompt="x", feature="chat")
    inside = Job(id="1", prompt="x", feature="extract")
    assert assign([scoped], "v1", outside).strategy == "v1" and assign([scoped], "v1", outside).arm == ""
    chosen = assign([scoped], "v1", inside)
    assert chosen.experiment == "exp" and chosen.strategy in ("v2", "v3") and chosen.arm in ("a", "b")


def test_a_strategy_changes_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "v3.toml").write_text(
        '[classifier]\nsimple_confidence = 0.95\nprompt = "rate it"\n[embedding]\nexamples = "v3.jsonl"\n'
    )
    text = THREE_TIERS + EXPERIMENT + '\n[strategies."rules-v3"]\nfile = "v3.toml"\n'
    p = parse_policies(text, "p.toml", tmp_path)
    v2 = p.for_strategy("rules-v2")
    assert v2.rules.default_tier == "standard" and v2.strategy == "rules-v2"
    assert v2.rules.premium_keywords == p.rules.premium_keywords == ["analyze", "compare"]
    v3 = p.for_strategy("rules-v3")
    assert v3.classifier.simple_confidence == 0.95 and v3.classifier.prompt == "rate it"
    assert v3.classifier.model == p.classifier.model  # inherited from the top-level section
    assert v3.embedding.examples == str(tmp_path / "v3.jsonl")  # relative to the strategy file
    assert p.for_strategy("rules-v1") is p and p.strategy_names == ["rules-v1", "rules-v2", "rules-v3"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (EXPERIMENT.replace('strategy = "rules-v2"', 'strategy = "v9"'), "arms.treatment.strategy: unknown strategy"),
        (EXPERIMENT.replace("share = 0.1", "share = 0.2"), "shares add up to 1.1"),
        (EXPERIMENT.replace('name = "treatment"', 'name = "control"'), "duplicate arm names"),
        (
            EXPERIMENT.replace('default_tier = "standard"', 'default_tier = "gold"'),
            "strategies.rules-v2.rules.default_tier",
        ),
        ('[strategies."rules-v2"]\nrules = { default_tier = "cheap" }\nlimits = {}\n', "unknown field(s) ['limits']"),
        ('[strategies."rules-v1"]\nrules = {}\n', "the top-level sections already are strategy"),
        ('[strategies.x]\nfile = "missing.toml"\n', "strategies.x.file: cannot read"),
        ("[shadow]\nsample = 1.5\n", "shadow.sample"),
        ('[shadow]\nfrom_tiers = ["premium"]\n', "not a tier below the shadow tier"),
    ],
)
def test_bad_strategies_and_experiments_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policies(THREE_TIERS + extra, "p.toml", tmp_path)
    assert message in str(caught.value)


async def test_every_row_carries_its_strategy_and_arm_and_each_arm_routes_by_its_own_rules(
    settings: Settings, policies_file: Path, tmp_path: Path, fake: FakeProvider
) -> None:
    policies_file.write_text(THREE_TIERS + EXPERIMENT)
    settings = Settings.from_env(str(policies_file), settings.env)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(line(id=f"j{i}", prompt="Say hello") + "\n" for i in range(300)))
    expected = {f"j{i}": settings.policies.experiments[0].arm_for(Job(id=f"j{i}", prompt="x")).name for i in range(300)}
    async with open_app(settings) as app:
        await process(app, jobs, "exp")
        rows = app.clickhouse().query(
            "SELECT job_id, experiment, arm, strategy, tier FROM {db}.outcomes FINAL WHERE final ORDER BY job_id"
        )
        results = {r.id: result_line(r) async for r in batch_records(app.redis, app.keys, "exp")}
    assert {i: (r.experiment, r.arm) for i, r in results.items()} == {
        i: ("standard-default", arm) for i, arm in expected.items()
    }
    assert len(rows) == 300
    assert {r[0]: r[2] for r in rows} == expected
    assert {(r[1], r[2], r[3], r[4]) for r in rows} == {
        ("standard-default", "control", "rules-v1", "cheap"),
        ("standard-default", "treatment", "rules-v2", "standard"),
    }
    assert 10 <= Counter(expected.values())["treatment"] <= 55  # 10% of 300, loosely


async def test_the_classifier_decides_with_the_jobs_strategy(
    settings: Settings, policies_file: Path, tmp_path: Path, fake: FakeProvider
) -> None:
    """Two strategies with different classifier prompts and thresholds: each job's classification
    uses its own strategy's, and one strategy's cached decision does not answer for the other."""
    strategies = """
[strategies.strict]
classifier = { simple_confidence = 0.99, prompt = "STRICT RATER" }

[[experiments]]
name = "thresholds"
arms = [{ name = "control", strategy = "rules-v1", share = 0.5 }, { name = "strict", strategy = "strict", share = 0.5 }]
"""
    policies_file.write_text(THREE_TIERS + strategies)
    settings = Settings.from_env(str(policies_file), settings.env)
    fake.reply("gpt-4.1-nano", '{"complexity": "simple", "confidence": 0.9, "reason": "lookup"}')
    long_prompt = "Tell me about the history of the city and its buildings. " * 40  # in the classify band
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(line(id=f"j{i}", prompt=long_prompt) + "\n" for i in range(40)))
    async with open_app(settings) as app:
        await process(app, jobs, "cls")
        rows = app.clickhouse().query(
            "SELECT arm, tier, count() FROM {db}.outcomes FINAL WHERE final GROUP BY arm, tier ORDER BY arm"
        )
    # 0.9 clears the default 0.8 for the cheapest tier, not the strict 0.99 (the middle tier then).
    assert {(r[0], r[1]) for r in rows} == {("control", "cheap"), ("strict", "standard")}
    # One model call per strategy: the rest waited for, or found, their own strategy's decision.
    assert sum(1 for c in fake.calls() if c.model == "gpt-4.1-nano") == 2
