"""Scores beside the outcomes: escalation labels from the tier worker, feedback from people."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ladder.app import open_app
from ladder.messages import JobRecord, Routing, ScoreSource
from ladder.settings import Settings
from policies.config import parse_policies
from producer.feedback import FeedbackError, feedback_score
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, ladder, line
from tests.pipeline import process

CHEAP = "gpt-4o-mini"
SCORE_COLUMNS = "job_id, source, tier, score, routing, label_tier, method, text, correction, customer"


async def test_an_answer_that_fails_the_checks_labels_its_job_one_tier_up(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CHEAP, "I'm not sure what the answer is.")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line(id="u", prompt="What is the capital of Mongolia?", customer="acme") + "\n")
    async with open_app(settings) as app:
        await process(app, jobs, "esc")
        rows = app.clickhouse().query(f"SELECT {SCORE_COLUMNS} FROM {{db}}.scores FINAL")
    assert rows == [
        ("u", "escalation", "cheap", 0.0, 0, "standard", "uncertain", "What is the capital of Mongolia?", "", "acme")
    ]


async def test_a_provider_error_is_not_a_routing_label(settings: Settings, fake: FakeProvider, tmp_path: Path) -> None:
    """A 500 says nothing about how hard the job was: it escalates, but labels nothing."""
    fake.fail(CHEAP, 500)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line(id="e", prompt="Say hi") + "\n")
    async with open_app(settings) as app:
        await process(app, jobs, "err")
        assert app.clickhouse().query("SELECT count() FROM {db}.scores") == [(0,)]


def _record(tier: str, status: str = "ok") -> JobRecord:
    return JobRecord(id="j", batch="b", status=status, tier=tier, customer="acme", strategy="v2", arm="treatment")


@pytest.mark.parametrize(
    ("tier", "score", "routing", "label"),
    [
        ("cheap", 0.2, Routing.WRONG, "standard"),
        ("cheap", 0.5, Routing.RIGHT, "cheap"),  # the policy's low mark (0.5) is not low
        ("standard", 0.9, Routing.RIGHT, "standard"),
        ("premium", 0.1, Routing.UNKNOWN, ""),  # nowhere higher to send it: not a routing error
    ],
)
def test_feedback_marks_routing_from_the_tier_it_finished_on(
    tier: str, score: float, routing: Routing, label: str
) -> None:
    scored = feedback_score(_record(tier), parse_policies(THREE_TIERS), score, "", 1.0)
    assert (scored.routing, scored.label_tier, scored.source) == (routing, label, ScoreSource.FEEDBACK)
    assert (scored.customer, scored.strategy, scored.arm, scored.event_id) == ("acme", "v2", "treatment", "j#feedback")


@pytest.mark.parametrize(
    ("record", "score", "message"),
    [
        (_record("cheap"), 1.5, "score: 1.5 must be a number from 0 to 1"),
        (_record("cheap"), float("nan"), "score: nan"),
        (_record("cheap", status="queued"), 0.5, "is queued, not finished"),
    ],
)
def test_feedback_that_cannot_be_stored_says_why(record: JobRecord, score: float, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        feedback_score(record, parse_policies(THREE_TIERS), score, "", 1.0)


def test_feedback_from_the_command_line_single_and_bulk(cli_env: dict[str, str], tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(line(id=f"j{i}", prompt="Say hello", customer="acme") + "\n" for i in range(3)))
    ladder(cli_env, "run", str(jobs), "--batch", "fb")
    one = ladder(cli_env, "feedback", "j0", "--score", "0.1", "--correction", "Hello!")
    assert "routing wrong: labelled for standard" in one.stdout
    unknown = ladder(cli_env, "feedback", "nope", "--score", "1", check=False)
    assert unknown.returncode == 2 and "job 'nope': no record" in unknown.stderr
    bulk = tmp_path / "feedback.jsonl"
    bulk.write_text(
        "\n".join([
            json.dumps({"job_id": "j1", "score": 0.9}),
            json.dumps({"job_id": "j2", "score": "high"}),
            json.dumps({"job_id": "ghost", "score": 0.3}),
            "{not json",
            json.dumps({"job_id": "j2", "score": 0.7, "correction": "fine"}),
        ]) + "\n"
    )  # fmt: skip
    out = ladder(cli_env, "feedback", "--file", str(bulk))
    assert "5 lines: 2 scores stored, 3 rejected" in out.stdout
    rejects = [json.loads(r) for r in (tmp_path / "feedback.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert "Expected `float`" in rejects[0]["reason"] and "no record" in rejects[1]["reason"]
    ladder(cli_env, "feedback", "j0", "--score", "0.8")  # a second word on j0 replaces the first
    ladder(cli_env, "sink", "--burst")
    code = (
        "from ladder.settings import Settings; s = Settings.from_env(); from worker.clickhouse import ClickHouse; "
        "c = ClickHouse(s.clickhouse_url, s.clickhouse_database); "
        "print(c.query('SELECT job_id, score, routing, label_tier, correction FROM {db}.scores FINAL ORDER BY job_id'))"
    )
    listed = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == str(
        [("j0", 0.8, 1, "cheap", ""), ("j1", 0.9, 1, "cheap", ""), ("j2", 0.7, 1, "cheap", "fine")]
    )
