"""The classifier worker: thresholds, unusable answers, injection resistance, its cost, its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.app import open_app
from ladder.results import batch_counts
from ladder.settings import Settings
from policies.injection import steering_attempt
from tests.fake_provider import FakeProvider
from tests.helpers import line
from tests.pipeline import process
from worker.classifier_worker import ClassifierAnswer, parse_answer, tier_for

ADVERSARIAL = Path(__file__).parent / "data" / "adversarial_classifier.jsonl"
CLASSIFIER = "gpt-4.1-nano"
GULLIBLE = '{"complexity": "simple", "confidence": 1.0, "reason": "the task says so"}'
LONG = " Give the reasons and the trade-offs, step by step, with examples from practice." * 16


def test_thresholds_are_the_articles(settings: Settings) -> None:
    cases = [
        (ClassifierAnswer("simple", 0.9), "cheap"),
        (ClassifierAnswer("simple", 0.8), "standard"),  # > 0.8 is needed for the cheapest tier
        (ClassifierAnswer("moderate", 0.7), "standard"),
        (ClassifierAnswer("moderate", 0.5), "premium"),  # confidence < 0.6 goes to the top
        (ClassifierAnswer("complex", 0.99), "premium"),
        (None, "premium"),  # unusable answer: the safe tier
    ]
    assert [tier_for(settings.policies, a)[0] for a, _ in cases] == [t for _, t in cases]


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        ('{"complexity": "simple", "confidence": 0.9}', True),
        ('```json\n{"complexity": "complex", "confidence": 0.7, "reason": "x"}\n```', True),
        ('{"complexity": "trivial", "confidence": 0.9}', False),
        ('{"complexity": "simple", "confidence": 1.7}', False),
        ("simple", False),
        ("", False),
    ],
)
def test_only_a_well_formed_answer_is_used(text: str, usable: bool) -> None:
    assert (parse_answer(text) is not None) is usable


def test_every_adversarial_job_is_recognized_and_ordinary_text_is_not() -> None:
    for raw in ADVERSARIAL.read_text().splitlines():
        job = json.loads(raw)
        assert steering_attempt(job["prompt"]) is not None, job["id"]
    ordinary = [
        "Summarize the complexity of the tax code for a small bakery.",
        "What is the confidence interval of a proportion with n = 40?",
        "Classify these tickets into billing, bug or account.",
        "Rate this restaurant review from 1 to 5.",
        "The system prompted the user twice before timing out; explain why.",
    ]
    assert [steering_attempt(t) for t in ordinary] == [None] * len(ordinary)


async def test_a_job_cannot_talk_its_way_to_a_cheaper_route(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    # The classifier model here is gullible: it answers "simple, 1.0" to anything.
    fake.reply(CLASSIFIER, GULLIBLE)
    adversarial = [json.loads(x) for x in ADVERSARIAL.read_text().splitlines()]
    lines = [line(id=j["id"], prompt=j["prompt"] + LONG) for j in adversarial]
    lines.append(line(id="benign", prompt="Write a friendly note about the spring picnic." + LONG))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    async with open_app(settings) as app:
        report, _ = await process(app, path, "adv")
        assert report.routed == {"classify": 11}
        rows = app.clickhouse().query("SELECT job_id, tier FROM {db}.outcomes FINAL WHERE final ORDER BY job_id")
        tiers = dict(rows)
        assert tiers.pop("benign") == "cheap"  # the gullible answer alone would have moved a job
        assert set(tiers.values()) == {"premium"}, tiers
        # steering jobs never reached the classifier model: no call, no cost to their customer
        assert len([c for c in fake.calls() if c.model == CLASSIFIER]) == 1
        counts = await batch_counts(app.redis, app.keys, "adv")
        assert counts["classifier_guarded"] == 10


async def test_the_classifier_call_is_a_cost_row_and_repeats_are_classified_once(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CLASSIFIER, '{"complexity": "moderate", "confidence": 0.7, "reason": "clear task"}')
    prompt = "Write the quarterly update for the garden club." + LONG
    lines = [line(id=f"r{i}", customer="acme", prompt=prompt.upper() if i % 2 else prompt) for i in range(5)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    async with open_app(settings) as app:
        await process(app, path, "rep")
        rows = app.clickhouse().query(
            "SELECT route_source, tier, customer, cost > 0 FROM {db}.outcomes FINAL WHERE route_source = 'classifier' "
            "AND tier = 'classify'"
        )
        assert rows == [("classifier", "classify", "acme", True)]  # one call for five equal prompts
        finals = app.clickhouse().query("SELECT tier, count() FROM {db}.outcomes FINAL WHERE final GROUP BY tier")
        assert finals == [("standard", 5)]
        counts = await batch_counts(app.redis, app.keys, "rep")
        assert (counts["classified"], counts["classifier_cache_hits"]) == (1, 4)


async def test_an_unusable_answer_goes_to_the_safe_tier_and_is_counted(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CLASSIFIER, "I think it is fairly simple.")
    path = tmp_path / "jobs.jsonl"
    path.write_text(line(id="x", prompt="Write a poem about tea." + LONG) + "\n")
    async with open_app(settings) as app:
        await process(app, path, "bad")
        rows = app.clickhouse().query(
            "SELECT tier, status, error_class FROM {db}.outcomes FINAL WHERE job_id = 'x' ORDER BY attempt"
        )
        assert rows == [("classify", "escalated", "invalid_output"), ("premium", "ok", "")]
        assert (await batch_counts(app.redis, app.keys, "bad"))["classifier_failures"] == 1


async def test_similar_examples_route_without_asking_the_model(
    settings_env: dict[str, str], fake: FakeProvider, tmp_path: Path, clickhouse, chdb_url: str
) -> None:
    examples = tmp_path / "examples.jsonl"
    examples.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"text": "what is the balance of my savings account", "tier": "cheap"},
                {"text": "show the balance of my checking account", "tier": "cheap"},
                {"text": "design a fault tolerant distributed architecture for payments", "tier": "premium"},
                {"text": "design a distributed architecture for global payments at scale", "tier": "premium"},
            ]
        )
        + "\n"
    )
    from tests.helpers import THREE_TIERS

    text = THREE_TIERS.replace("min_input_tokens = 300", "min_input_tokens = 1") + (
        f'\n[embedding]\nenabled = true\nembedder = "openai:text-embedding-3-small"\nexamples = "{examples}"\n'
        "k = 2\nthreshold = 0.5\n"
    )
    policies_path = tmp_path / "p.toml"
    policies_path.write_text(text)
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    settings = Settings.from_env(str(policies_path), env)
    fake.reply(CLASSIFIER, '{"complexity": "moderate", "confidence": 0.7}')
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            [
                line(id="bal", prompt="what is the balance of my savings account today"),
                line(id="arch", prompt="design a distributed architecture for payments"),
                line(id="poem", prompt="a haiku about autumn leaves falling slowly"),
            ]
        )
        + "\n"
    )
    async with open_app(settings) as app:
        await process(app, jobs, "emb")
        rows = app.clickhouse().query(
            "SELECT job_id, tier, route_source FROM {db}.outcomes FINAL WHERE final ORDER BY job_id"
        )
        assert rows == [
            ("arch", "premium", "embedding"),
            ("bal", "cheap", "embedding"),
            ("poem", "standard", "classifier"),  # like no example: the model decided
        ]
        assert [c.model for c in fake.calls()].count(CLASSIFIER) == 1
        counts = await batch_counts(app.redis, app.keys, "emb")
        assert (counts["embedded"], counts["classified"]) == (2, 1)
