"""The quality loop end to end, as a user runs it, each step its own `ladder` process: a cheap model
that is wrong on one topic is caught by shadow evaluation, `ladder strategy build` turns the verdicts
into a strategy, and with it as the default the topic's new jobs go to the premium tier up front."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, ladder, line

CHEAP, PREMIUM, CLASSIFIER = "gpt-4o-mini", "claude-3-5-sonnet-20241022", "gpt-4.1-nano"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None,
    reason="the rebuilt strategy routes with the packaged local embedder (the 'local' extra)",
)

# Classification jobs reach the undecided band, where v1 has only the classifier model (which calls
# every one of them simple); shadow evaluation re-asks every cheap answer on premium.
POLICIES = (
    'strategy = "v1"\n'
    + THREE_TIERS.replace("min_input_tokens = 300", 'min_input_tokens = 0\ntasks = ["classification"]')
    + "\n[shadow]\nenabled = true\nsample = 1.0\n"
)

TAX = [
    "Does the IRS tax capital gains on inherited stock at the stepped-up basis? Answer up or down.",
    "Is a home office deduction allowed on my federal tax return if I am self-employed? Answer up or down.",
    "Does converting a traditional IRA to a Roth IRA raise my income tax this year? Answer up or down.",
    "Does the alternative minimum tax apply to exercising incentive stock options? Answer up or down.",
    "Is a cash gift to my adult child subject to federal gift tax above the annual exclusion? Answer up or down.",
    "Can I claim the foreign tax credit for income tax paid abroad on my US return? Answer up or down.",
    "Does a 1031 like-kind exchange of rental property defer the capital gains tax? Answer up or down.",
    "Can crypto capital losses offset ordinary income on my tax return? Answer up or down.",
]
WEATHER = [
    "Will it be sunny in Paris this afternoon? Answer up or down.",
    "Is rain expected in Seattle tomorrow morning? Answer up or down.",
    "Will the temperature in Madrid rise this weekend? Answer up or down.",
    "Is snow likely in Denver tonight? Answer up or down.",
    "Will the wind pick up along the coast of Lisbon today? Answer up or down.",
    "Is it going to be foggy in London at dawn? Answer up or down.",
    "Will Tokyo see thunderstorms this evening? Answer up or down.",
    "Is a heat wave coming to Rome next week? Answer up or down.",
]
NEW_TAX = [
    "Are inherited shares taxed on the basis stepped up at death when I sell them? Answer up or down.",
    "As a freelancer can I write off my home office on my income tax return? Answer up or down.",
]
NEW_WEATHER = [
    "Will there be sunshine in Paris tomorrow afternoon? Answer up or down.",
    "Is it going to rain in Seattle later today? Answer up or down.",
]


def _jobs(path: Path, prefix: str, texts: list[str]) -> Path:
    path.write_text(
        "".join(line(id=f"{prefix}{i}", prompt=t, task="classification") + "\n" for i, t in enumerate(texts))
    )
    return path


def _query(env: dict[str, str], sql: str) -> list[list[object]]:
    """ClickHouse read in a process of its own: chdb lets one process hold a data folder at a time."""
    code = (
        "import json, sys; from ladder.settings import Settings; from worker.clickhouse import ClickHouse; "
        "s = Settings.from_env(); c = ClickHouse(s.clickhouse_url, s.clickhouse_database); "
        "print(json.dumps([list(r) for r in c.query(sys.argv[1])], default=str))"
    )
    done = subprocess.run([sys.executable, "-c", code, sql], env=env, capture_output=True, text=True, check=True)
    rows: list[list[object]] = json.loads(done.stdout)
    return rows


def test_a_bad_cheap_model_is_caught_by_shadow_evaluation_and_the_rebuilt_strategy_routes_its_prompts_up(
    cli_env: dict[str, str], policies_file: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    policies_file.write_text(POLICIES)
    fake.reply(CLASSIFIER, '{"complexity": "simple", "confidence": 0.95, "reason": "a yes/no question"}')
    fake.reply(CHEAP, "down")  # always: wrong on the tax questions, right on the weather
    fake.reply_when(PREMIUM, " tax", "up")
    fake.reply(PREMIUM, "down")

    ladder(cli_env, "run", str(_jobs(tmp_path / "round1.jsonl", "r1-", TAX + WEATHER)), "--batch", "round1")
    scores = _query(cli_env, "SELECT job_id, routing, label_tier FROM {db}.scores FINAL WHERE source = 'shadow'")
    caught = {str(job) for job, routing, _ in scores if routing == 0}
    assert caught == {f"r1-{i}" for i in range(len(TAX))}  # every tax answer, and nothing else
    assert {(r[1], r[2]) for r in scores} == {(0, "premium"), (1, "cheap")} and len(scores) == 16

    built = ladder(cli_env, "strategy", "build", "--name", "v2", "--holdout", "0", "--format", "json")
    assert json.loads(built.stdout)["summary"]["added"] == 16
    assert (policies_file.parent / "v2.toml").exists()

    policies_file.write_text('default_strategy = "v2"\n' + POLICIES + '\n[strategies.v2]\nfile = "v2.toml"\n')
    fake.reset()
    fake.reply(CLASSIFIER, '{"complexity": "simple", "confidence": 0.95, "reason": "a yes/no question"}')
    round2 = _jobs(tmp_path / "round2.jsonl", "r2-", NEW_TAX + NEW_WEATHER)
    ladder(cli_env, "run", str(round2), "--batch", "round2")
    first = _query(
        cli_env,
        "SELECT job_id, intended_tier, route_source, strategy FROM {db}.outcomes FINAL "
        "WHERE batch = 'round2' AND final ORDER BY job_id",
    )
    assert first == [
        ["r2-0", "premium", "embedding", "v2"],
        ["r2-1", "premium", "embedding", "v2"],
        ["r2-2", "cheap", "embedding", "v2"],
        ["r2-3", "cheap", "embedding", "v2"],
    ]
    assert not any(c.model == CLASSIFIER for c in fake.calls())  # the examples decided, not the model
