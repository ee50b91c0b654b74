"""The spine end to end: real Redis, chdb, the official SDKs against the fake provider over HTTP."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec

from ladder.app import open_app
from ladder.messages import OUTCOME_DECODER
from ladder.results import batch_records
from ladder.settings import Settings
from policies.config import Candidate
from policies.prices import PriceBook
from tests.fake_provider import FakeProvider
from tests.helpers import line
from tests.pipeline import drain_workers, enqueue, process

CLASSIFIER_SAYS_MODERATE = '{"complexity": "moderate", "confidence": 0.7, "reason": "clear multi-step"}'


def _job_file(tmp_path: Path) -> Path:
    good = [
        line(id="cheap-1", customer="acme", feature="faq", prompt="What's my account balance?"),
        line(id="cheap-2", customer="acme", task="extraction", prompt="Extract the date: paid on 2024-03-01"),
        line(id="std-1", customer="globex", prompt="Please analyze last quarter's churn"),
        line(id="prem-1", customer="globex", feature="legal-analysis", prompt="Is this clause enforceable?"),
        line(id="cls-1", customer="initech", prompt="Write about the spring weather in the valley. " * 40),
        line(id="msg-1", customer="initech", messages=[{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Say hi"}]),
        line(id="hint-1", customer="acme", prompt="Translate 'hello'", tier_hint="premium", max_output_tokens=5),
    ]  # fmt: skip
    bad = [
        '{"id": "broken", "prompt": ',
        line(id="no-prompt"),
        line(id="bad-hint", prompt="x", tier_hint="diamond"),
        line(id="bad-type", prompt="x", max_output_tokens="lots"),
        "",
        line(id="huge", prompt="y" * 400_001),
    ]
    lines = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4], bad[4], good[5], bad[5]]
    lines.append(good[6])
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_every_good_job_gets_one_final_outcome_and_cost_matches_provider_usage(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply("gpt-4.1-nano", CLASSIFIER_SAYS_MODERATE)
    fake.fail("gpt-4o-mini", status=500, times=1)  # the first cheap call fails and must escalate
    async with open_app(settings) as app:
        report, rejected = await process(app, _job_file(tmp_path), "e2e")
        ch = app.clickhouse()

        assert (report.lines, report.accepted, report.rejected) == (13, 7, 6)
        assert [r.line for r in rejected] == [2, 4, 6, 8, 10, 12]
        assert "not valid JSON" in rejected[0].reason and "tier_hint" in rejected[2].reason

        finals = ch.query("SELECT job_id, count() FROM {db}.outcomes FINAL WHERE final GROUP BY job_id ORDER BY job_id")
        assert finals == [(j, 1) for j in sorted(["cheap-1", "cheap-2", "std-1", "prem-1", "cls-1", "msg-1", "hint-1"])]

        # Exactly once: ClickHouse's cost equals the fake's recorded usage priced by the same book.
        prices = PriceBook(settings.policies)
        served = [c for c in fake.calls() if c.status == 200]
        expected = sum((prices.cost(Candidate(c.provider, c.model), c.input_tokens, c.output_tokens) for c in served),
                       Decimal(0))  # fmt: skip
        (total_cost, total_in, rows) = ch.query(
            "SELECT sum(cost), sum(input_tokens), count() FROM {db}.outcomes FINAL"
        )[0]
        assert Decimal(total_cost) == expected > 0
        assert total_in == sum(c.input_tokens for c in served)
        assert rows == len(fake.calls())  # failed calls are rows too

        # The forced failure: an escalated row on cheap, then an ok row one tier up for the same job.
        escalated = ch.query(
            "SELECT job_id, tier, error_class FROM {db}.outcomes FINAL WHERE status = 'escalated' AND tier != 'classify'"
        )
        assert len(escalated) == 1 and escalated[0][1:] == ("cheap", "transient")
        after = ch.query(
            "SELECT tier, status, route_source, intended_tier FROM {db}.outcomes FINAL "
            "WHERE job_id = {j:String} AND attempt = 2", {"j": escalated[0][0]},
        )  # fmt: skip
        assert after == [("standard", "ok", "escalation", "cheap")]

        # The classifier's own call is a row, and it moved the undecided job to the middle tier.
        cls = ch.query(
            "SELECT route_source, tier, final FROM {db}.outcomes FINAL WHERE job_id = 'cls-1' ORDER BY attempt"
        )
        assert cls == [("classifier", "classify", False), ("classifier", "standard", True)]

        records = {r.id: r async for r in batch_records(app.redis, app.keys, "e2e")}
        assert {r.status for r in records.values()} == {"ok"}
        assert records["prem-1"].model == "claude-3-5-sonnet-20241022"
        assert records["hint-1"].tier == "premium"
        assert records["msg-1"].output.startswith("[gpt-4o-mini]")
        assert records[escalated[0][0]].path[0].startswith("cheap:openai/gpt-4o-mini:escalated(transient)")


async def test_a_failure_on_the_top_tier_dead_letters_with_the_reason(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    for model in ("gpt-4o-mini", "gemini-2.0-flash", "claude-3-5-sonnet-20241022"):
        fake.fail(model, status=500, message="upstream exploded")
    path = tmp_path / "one.jsonl"
    path.write_text(line(id="doomed", prompt="hello") + "\n")
    async with open_app(settings) as app:
        await process(app, path, "dl")
        rows = app.clickhouse().query(
            "SELECT tier, status, final FROM {db}.outcomes FINAL WHERE job_id = 'doomed' ORDER BY attempt"
        )
        assert rows == [("cheap", "escalated", False), ("standard", "escalated", False), ("premium", "dead", True)]
        (entry,) = await app.redis.xrange(app.keys.deadletter)
        letter = msgspec.msgpack.decode(entry[1][b"d"])
        assert letter["job_id"] == "doomed" and "upstream exploded" in letter["reason"]
        assert [a["tier"] for a in letter["attempts"]] == ["cheap", "standard", "premium"]
        (record,) = [r async for r in batch_records(app.redis, app.keys, "dl")]
        assert record.status == "dead" and "upstream exploded" in record.reason


async def test_an_event_delivered_twice_leaves_one_row(settings: Settings, fake: FakeProvider, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(line(id="twice", prompt="hello") + "\n")
    async with open_app(settings) as app:
        await enqueue(app, path, "dup")
        await drain_workers(app)
        ((_, fields),) = await app.redis.xrange(app.keys.outcomes)
        await app.sink().run(burst=True)
        # Re-deliver the same event twice, as a sink crash between insert and ack would.
        for _ in range(2):
            await app.redis.xadd(app.keys.outcomes, fields)
            await app.sink().run(burst=True)
        event_id = OUTCOME_DECODER.decode(fields[b"e"]).event_id
        ch = app.clickhouse()
        assert ch.query("SELECT count() FROM {db}.outcomes FINAL WHERE event_id = {e:String}", {"e": event_id}) == [
            (1,)
        ]
        assert ch.query("SELECT count() FROM {db}.outcomes FINAL") == [(1,)]
        assert await app.redis.xlen(app.keys.outcomes) == 0  # acked and deleted after insert
