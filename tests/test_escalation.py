"""Escalation on answers that came back 200: each reason its own error class, billed, and moved up."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ladder.app import open_app
from ladder.results import batch_records
from ladder.settings import Settings
from policies.answer_checks import AnswerChecker
from policies.config import Candidate, Escalation
from policies.prices import PriceBook
from tests.fake_provider import FakeProvider
from tests.helpers import line
from tests.pipeline import process

CHEAP, STANDARD, PREMIUM = "gpt-4o-mini", "gemini-2.0-flash", "claude-3-5-sonnet-20241022"
TOTAL_SCHEMA = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


async def _run(settings: Settings, tmp_path: Path, *jobs: str) -> list[tuple[str, str, str, str, int, Decimal]]:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(jobs) + "\n")
    async with open_app(settings) as app:
        await process(app, path, "esc")
        rows = app.clickhouse().query(
            "SELECT job_id, tier, status, error_class, output_tokens, cost FROM {db}.outcomes FINAL "
            "ORDER BY job_id, attempt"
        )
        return [(r[0], r[1], r[2], r[3], int(r[4]), Decimal(r[5])) for r in rows]


async def test_an_uncertain_answer_climbs_one_tier_and_is_billed(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CHEAP, "Honestly, I'm NOT SURE what the balance is.")
    rows = await _run(settings, tmp_path, line(id="u", prompt="What's my balance?"))
    assert [(r[1], r[2], r[3]) for r in rows] == [("cheap", "escalated", "uncertain"), ("standard", "ok", "")]
    assert rows[0][4] > 0 and rows[0][5] > 0  # the uncertain answer's tokens were paid for and recorded
    served = fake.calls()
    prices = PriceBook(settings.policies)
    expected = sum((prices.cost(Candidate(c.provider, c.model), c.input_tokens, c.output_tokens) for c in served),
                   Decimal(0))  # fmt: skip
    assert sum(r[5] for r in rows) == expected


async def test_a_json_job_climbs_until_its_answer_validates(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply(CHEAP, "The total is 42.")
    fake.reply(STANDARD, '```json\n{"vendor": "Contoso"}\n```')
    fake.reply(PREMIUM, '```json\n{"total": 42.5}\n```')
    rows = await _run(settings, tmp_path, line(id="j", prompt="Extract the total", json_schema=TOTAL_SCHEMA))
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("cheap", "escalated", "invalid_json"),
        ("standard", "escalated", "schema_mismatch"),
        ("premium", "ok", ""),
    ]


async def test_truncation_escalates_and_the_top_tier_keeps_its_best_answer(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    rows = await _run(settings, tmp_path, line(id="t", prompt="Write a long story about the sea", max_output_tokens=2))
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("cheap", "escalated", "truncated"),
        ("standard", "escalated", "truncated"),
        ("premium", "ok", "truncated"),  # nowhere to climb: kept, and the row still says why it is doubtful
    ]


async def test_an_empty_answer_on_the_top_tier_is_dead_lettered(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    for model in (CHEAP, STANDARD, PREMIUM):
        fake.reply(model, "   ")
    rows = await _run(settings, tmp_path, line(id="e", prompt="Say something"))
    assert [(r[2], r[3]) for r in rows] == [("escalated", "empty"), ("escalated", "empty"), ("dead", "empty")]
    async with open_app(settings) as app:
        (record,) = [r async for r in batch_records(app.redis, app.keys, "esc")]
    assert record.status == "dead" and record.reason == "empty answer"


@pytest.mark.parametrize(
    ("text", "finish", "schema", "expected"),
    [
        ("ok", "refused", None, "refused"),
        ("", "stop", None, "empty"),
        ("partial", "length", None, "truncated"),
        ("{bad", "stop", TOTAL_SCHEMA, "invalid_json"),
        ('{"total": "many"}', "stop", TOTAL_SCHEMA, "schema_mismatch"),
        ("This is unclear to me", "stop", None, "uncertain"),
        ('{"total": 3}', "stop", TOTAL_SCHEMA, None),
        ("The answer is 4.", "stop", None, None),
    ],
)
def test_each_check_names_its_class(text: str, finish: str, schema: dict | None, expected: str | None) -> None:
    found = AnswerChecker(Escalation()).problem(text, finish, schema)
    assert (found[0] if found else None) == expected


def test_checks_can_be_turned_off_by_policy() -> None:
    lax = Escalation(uncertainty_phrases=[], on_truncation=False, validate_json=False)
    assert AnswerChecker(lax).problem("I'm not sure {", "length", TOTAL_SCHEMA) is None
