"""The batch lane against the fake provider's batch APIs, through the official SDKs: submission within
limits, results mapped back by custom id, batch pricing counted once, partial failures, expiry,
cancellation, budgets, recovery after a crash, and the savings report."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ladder.app import App, open_app
from ladder.keys import Keys
from ladder.messages import ENCODER, JOB_RECORD_DECODER, OUTCOME_DECODER, Job, JobRecord, Lane, Outcome, Status
from ladder.settings import Settings
from policies.config import Candidate, parse_policies
from policies.lanes import Lanes
from policies.prices import PriceBook
from tests.fake_provider import FakeProvider
from tests.helpers import line
from tests.pipeline import drain_workers
from worker.batch_api import BatchRequest
from worker.batch_apis import batch_apis
from worker.batch_lane import BatchLane, LeaseLost
from worker.batch_store import custom_id, new_draft_id
from worker.budget import BudgetBook
from worker.clickhouse import ClickHouse
from worker.provider import Overloaded, RateLimited
from worker.steps import request_for

BATCH_TIERS = """
[[tiers]]
name = "cheap"
candidates = [{ provider = "openai", model = "gpt-4o-mini" }]

[[tiers]]
name = "standard"
candidates = [{ provider = "anthropic", model = "claude-haiku-4-5" }]

[[tiers]]
name = "premium"
candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }]

[rules]
premium_features = ["legal"]
premium_keywords = []
input_token_threshold = 100000
default_tier = "cheap"

[rules.classify]
enabled = false

[classifier]
provider = "openai"
model = "gpt-4o-mini"

[batch]
max_wait_s = 3600
poll_interval_s = 3600
"""
# claude-haiku-4-5 and gpt-4o-mini: genai-prices' batch price; the Claude 3.5 model: the policies'.
SONNET_DISCOUNT = '\n[batch.discounts]\n"claude-3-5-sonnet-20241022" = "0.4"\n'
UNSURE = "I'm not sure about this."


def jobs(n: int, prefix: str = "j", **fields: Any) -> list[Job]:
    return [Job(id=f"{prefix}{i:04d}", prompt=f"summarize item {i} of the catalogue", **fields) for i in range(n)]


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(BATCH_TIERS + SONNET_DISCOUNT)
    return path


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with open_app(settings) as opened:
        yield opened


def lane_of(app: App, clock: Callable[[], float] | None = None) -> BatchLane:
    policies = app.settings.policies
    apis = batch_apis(policies, app.providers(), app.settings.env)
    app._closers.extend(api.aclose for api in apis.values())
    return BatchLane(policies, app.redis, app.keys, apis, clock=clock or time.time)


async def outcomes(app: App) -> list[Outcome]:
    entries = await app.redis.xrange(app.keys.outcomes)
    return [OUTCOME_DECODER.decode(fields[b"e"]) for _, fields in entries if b"e" in fields]


async def record(app: App, job_id: str) -> JobRecord:
    raw = await app.redis.get(app.keys.job(job_id))
    assert raw is not None, job_id
    return JOB_RECORD_DECODER.decode(raw)


async def counts(app: App, batch: str) -> dict[str, int]:
    raw = await app.redis.hgetall(app.keys.batch_counts(batch))
    return {k.decode(): int(v) for k, v in raw.items()}


def final_rows(rows: list[Outcome]) -> Counter[str]:
    return Counter(o.job_id for o in rows if o.final)


async def test_batch_jobs_are_submitted_per_tier_answered_at_the_batch_price_and_counted_once(
    app: App, fake: FakeProvider
) -> None:
    legal = [Job(id=f"legal{i}", prompt=f"review clause {i}", feature="legal") for i in range(3)]
    report = await app.producer(Lane.BATCH).submit([*jobs(20), *legal], "b1")
    assert report.routed == {"batch:cheap": 20, "batch:premium": 3}
    assert not await app.redis.zcard(app.keys.queue("cheap"))  # nothing on the sync queues
    lane = lane_of(app)
    submitted = await lane.submit_due(eager=True)
    assert sorted((b.tier, b.model, b.size) for b in submitted) == [
        ("cheap", "gpt-4o-mini", 20), ("premium", "claude-3-5-sonnet-20241022", 3)]  # fmt: skip
    assert await lane.poll(force=True) == 0  # in progress at the provider: nothing settles
    assert (await record(app, "j0000")).status == "queued"
    fake.batches.end()
    assert await lane.poll(force=True) == 23
    rows = await outcomes(app)
    assert final_rows(rows) == Counter(
        {j: 1 for j in [*(f"j{i:04d}" for i in range(20)), "legal0", "legal1", "legal2"]}
    )
    prices = PriceBook(app.settings.policies)
    for row in rows:
        assert row.lane is Lane.BATCH and row.status is Status.OK
        candidate = Candidate(row.provider, row.model)
        assert row.cost == prices.batch_cost(candidate, row.input_tokens, row.output_tokens)
        assert row.sync_cost == prices.cost(candidate, row.input_tokens, row.output_tokens)
    sonnet = [r for r in rows if r.model == "claude-3-5-sonnet-20241022"]
    assert all(r.cost == r.sync_cost * Decimal("0.6") for r in sonnet)  # the policies' 40% off
    mini = [r for r in rows if r.model == "gpt-4o-mini"]
    assert all(r.cost * 2 == r.sync_cost for r in mini)  # genai-prices' batch price: half
    # What the provider billed, request by request, is what the rows say.
    billed = {(c.model, c.input_tokens, c.output_tokens) for c in fake.calls() if c.batch}
    assert billed == {(r.model, r.input_tokens, r.output_tokens) for r in rows}
    assert len([c for c in fake.calls() if c.batch]) == 23
    done = await record(app, "j0003")
    assert done.status == "ok" and done.output.startswith("[gpt-4o-mini]") and done.path == [
        "cheap:openai/gpt-4o-mini:ok"]  # fmt: skip
    assert (await counts(app, "b1"))["final"] == 23
    # Results read again (a restarted poller) settle nothing twice.
    for batch in submitted:
        again = msgspec.structs.replace(batch, state="submitted")
        assert await lane._collect(again, lane._apis[batch.provider]) == 0
    assert len(await outcomes(app)) == 23
    assert not await lane.store.open_drafts() and await lane.idle()


async def test_batches_keep_within_the_request_and_byte_limits(app: App, fake: FakeProvider, tmp_path: Path) -> None:
    policies_text = BATCH_TIERS.replace("poll_interval_s = 3600", "poll_interval_s = 3600\nmax_requests = 7")
    policies = parse_policies(policies_text + SONNET_DISCOUNT)
    app.settings = dataclasses.replace(app.settings, policies=policies)
    await app.producer(Lane.BATCH).submit(jobs(16), "b2")
    sizes = [b.size for b in await lane_of(app).submit_due(eager=True)]
    assert sizes == [7, 7, 2]
    # A byte limit a little above three requests' lines: batches of three, three and one.
    openai = batch_apis(policies, app.providers(), app.settings.env)["openai"]
    one = openai.request_bytes(BatchRequest(custom_id(new_draft_id(), 0), request_for(jobs(1)[0], "gpt-4o-mini")))
    policies = parse_policies(
        policies_text.replace("max_requests = 7", f"max_bytes = {3 * one + 10}") + SONNET_DISCOUNT
    )
    app.settings = dataclasses.replace(app.settings, policies=policies)
    await app.producer(Lane.BATCH).submit(jobs(7, prefix="k"), "b3")
    sizes = [b.size for b in await lane_of(app).submit_due(eager=True)]
    assert sizes == [3, 3, 1]
    assert all(len(b.requests) == s for b, s in zip(fake.batches.submitted()[3:], sizes, strict=True))


async def test_a_batch_waits_until_it_is_full_or_its_first_job_has_waited_long_enough(
    app: App, fake: FakeProvider
) -> None:
    now = [1_000_000.0]
    lane = lane_of(app, clock=lambda: now[0])
    await app.producer(Lane.BATCH).submit(jobs(5), "b4")
    assert await lane.submit_due() == []  # 5 of max_requests 10000, waited 0 s
    now[0] += 3599
    assert await lane.submit_due() == []
    now[0] += 2
    assert [b.size for b in await lane.submit_due()] == [5]


async def test_partial_failures_expiry_and_bad_answers_each_take_their_own_way(app: App, fake: FakeProvider) -> None:
    fake.reply_when("gpt-4o-mini", "item 3 ", UNSURE)  # fails the answer checks: escalates to standard
    await app.producer(Lane.BATCH).submit([*jobs(30), Job(id="bad", prompt="x", max_output_tokens=1)], "b5")
    fake.batches.fail_items("claude-3-5-sonnet-20241022", 1.0, "invalid_request")
    await app.producer(Lane.BATCH).submit([Job(id="malformed", prompt="review", feature="legal")], "b5")
    lane = lane_of(app)
    (cheap, premium) = sorted(await lane.submit_due(eager=True), key=lambda b: b.tier)
    fake.batches.end_partially(cheap.provider_batch_id, 5)
    fake.batches.fail_items("gpt-4o-mini", 0.2, "api_error", seed=1)
    fake.batches.end_partially(cheap.provider_batch_id, 15)
    fake.batches.expire(cheap.provider_batch_id)
    fake.batches.end(premium.provider_batch_id)
    await lane.poll(force=True)
    rows = await outcomes(app)
    by_job = {r.job_id: r for r in rows}
    errored = [r for r in rows if r.error_class == "transient"]
    expired = [r for r in rows if r.error_class == "batch_expired"]
    assert len(expired) == 11 and all(r.status is Status.FAILOVER and r.cost == 0 for r in expired)
    assert errored and all(r.status is Status.FAILOVER and r.cost == 0 and not r.final for r in errored)
    assert by_job["j0003"].status is Status.ESCALATED and by_job["j0003"].error_class == "uncertain"
    assert by_job["j0003"].cost > 0  # billed at the batch price though not kept
    assert by_job["malformed"].status is Status.DEAD and by_job["malformed"].error_class == "bad_request"
    done_cheap, done_premium = [await lane.store.record(b.draft) for b in (cheap, premium)]
    assert done_cheap is not None and done_premium is not None
    assert (done_cheap.answered, done_cheap.fell_back, done_cheap.failed) == (
        31 - len(errored) - len(expired), len(errored) + len(expired), 0)  # fmt: skip
    assert (done_premium.answered, done_premium.fell_back, done_premium.failed) == (0, 0, 1)
    # The unanswered ones wait on their own tier's sync queue; the escalated one on the next tier's.
    assert await app.redis.zcard(app.keys.queue("cheap")) == len(errored) + len(expired)
    assert await app.redis.zcard(app.keys.queue("standard")) == 1
    await drain_workers(app)
    rows = await outcomes(app)
    assert set(final_rows(rows).values()) == {1} and len(final_rows(rows)) == 32
    sync_rows = [r for r in rows if r.lane is Lane.SYNC]
    assert {r.job_id for r in sync_rows} == {r.job_id for r in [*errored, *expired]} | {"j0003"}
    assert all(r.cost == r.sync_cost for r in sync_rows)
    j3 = await record(app, "j0003")
    assert j3.status == "ok" and j3.path[0].startswith("cheap:openai/gpt-4o-mini:escalated(uncertain)")
    c = await counts(app, "b5")
    assert c["final"] == 32 and c["ok"] == 31 and c["dead"] == 1
    # Expired requests were never billed; every billed request has exactly one row.
    batch_calls = [c for c in fake.calls() if c.batch and c.status == 200]
    assert len(batch_calls) == len([r for r in rows if r.lane is Lane.BATCH and r.cost > 0])


async def test_escalation_can_stay_on_the_batch_lane(app: App, fake: FakeProvider) -> None:
    policies = parse_policies(BATCH_TIERS + '\nescalate_to = "batch"\n' + SONNET_DISCOUNT)
    app.settings = dataclasses.replace(app.settings, policies=policies)
    fake.reply_when("gpt-4o-mini", "item 1 ", UNSURE)
    await app.producer(Lane.BATCH).submit(jobs(3), "b6")
    lane = lane_of(app)
    await lane.submit_due(eager=True)
    fake.batches.end()
    await lane.poll(force=True)
    assert await app.redis.llen(app.keys.lane_pending("standard")) == 1
    [standard] = await lane.submit_due(eager=True)
    assert standard.model == "claude-haiku-4-5" and standard.size == 1
    fake.batches.end()
    await lane.poll(force=True)
    j1 = await record(app, "j0001")
    assert j1.status == "ok" and j1.path == [
        "cheap:openai/gpt-4o-mini:escalated(uncertain)", "standard:anthropic/claude-haiku-4-5:ok"]  # fmt: skip


async def test_a_batch_open_too_long_is_canceled_and_its_jobs_answered_on_the_sync_lane(
    app: App, fake: FakeProvider
) -> None:
    now = [2_000_000.0]
    lane = lane_of(app, clock=lambda: now[0])
    await app.producer(Lane.BATCH).submit(jobs(6), "b7")
    [batch] = await lane.submit_due(eager=True)
    fake.batches.end_partially(batch.provider_batch_id, 2)
    now[0] += app.settings.policies.batch.cancel_after_s + 1
    await lane.poll(force=True)  # cancels
    assert (await lane.store.record(batch.draft)).canceled_at  # type: ignore[union-attr]
    await lane.poll(force=True)  # ended as canceled: two answered, four to the sync lane
    rows = await outcomes(app)
    assert Counter(r.error_class for r in rows) == Counter({"": 2, "batch_canceled": 4})
    await drain_workers(app)
    assert len(final_rows(await outcomes(app))) == 6


async def test_a_submitter_that_died_before_recording_its_batch_adopts_it_instead_of_sending_it_again(
    app: App, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    legal = [Job(id=f"legal{i}", prompt=f"review clause {i}", feature="legal") for i in range(4)]
    await app.producer(Lane.BATCH).submit([*jobs(5), *legal], "b8")
    lane = lane_of(app)
    real_save = lane.store.save

    async def dies_once_submitted(batch: Any) -> None:
        if batch.state == "submitted":
            raise ConnectionError("killed between the provider's answer and the record")
        await real_save(batch)

    monkeypatch.setattr(lane.store, "save", dies_once_submitted)
    for _ in range(2):  # each tier's draft in turn
        with pytest.raises(ConnectionError):
            await lane.submit_due(eager=True)
    monkeypatch.setattr(lane.store, "save", real_save)
    assert len(fake.batches.submitted()) == 2
    restarted = lane_of(app)
    await restarted.poll(force=True)  # recovers both drafts: OpenAI by metadata, Anthropic by size and time
    assert len(fake.batches.submitted()) == 2  # nothing sent twice
    fake.batches.end()
    await restarted.poll(force=True)
    assert len(final_rows(await outcomes(app))) == 9
    assert sum(len(b.requests) for b in fake.batches.submitted()) == 9


async def test_a_poller_that_dies_mid_results_loses_and_duplicates_nothing(
    app: App, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    await app.producer(Lane.BATCH).submit(jobs(200), "b9")
    lane = lane_of(app)
    await lane.submit_due(eager=True)
    fake.batches.fail_items("gpt-4o-mini", 0.1, "overloaded", seed=3)
    fake.batches.end()
    settled = 0
    real = lane._settler.settle_once

    async def dies_after_90(*args: Any) -> Any:
        nonlocal settled
        settled += 1
        if settled > 90:
            raise ConnectionError("poller killed")
        return await real(*args)

    monkeypatch.setattr(lane._settler, "settle_once", dies_after_90)
    with pytest.raises(ConnectionError):
        await lane.poll(force=True)
    before = await outcomes(app)
    assert 0 < len(before) < 200
    await lane_of(app).poll(force=True)
    await lane_of(app).poll(force=True)  # and once more: nothing left to do
    rows = await outcomes(app)
    assert len({r.event_id for r in rows}) == len(rows) == 200
    await drain_workers(app)
    assert Counter(final_rows(await outcomes(app)).values()) == Counter({1: 200})
    assert fake.batches.submitted()[0].results_reads >= 2


async def test_budgets_hold_the_batch_price_and_send_what_does_not_fit_to_the_sync_lane(
    app: App, fake: FakeProvider
) -> None:
    book = BudgetBook(app.redis, app.keys, app.settings.policies.budgets)
    prices = PriceBook(app.settings.policies)
    mini = Candidate("openai", "gpt-4o-mini")
    one = prices.batch_cost(mini, 10, 512)  # each job's hold: ~10 input tokens, max_output_tokens 512
    from policies.customers import Customer

    await book.set_limits([Customer(id="acme", monthly_budget=one * 4 + one / 2)], None, "reject")
    await app.producer(Lane.BATCH).submit(jobs(6, customer="acme"), "b10")
    lane = lane_of(app)
    [batch] = await lane.submit_due(eager=True)
    assert batch.size == 4
    assert await app.redis.zcard(app.keys.queue("cheap")) == 2  # over budget: the sync lane decides
    await drain_workers(app)  # while the batch holds its four jobs' estimates: no room for these two
    fake.batches.end()
    await lane.poll(force=True)
    rows = await outcomes(app)
    ok = [r for r in rows if r.status is Status.OK]
    assert len(ok) == 4 and all(r.lane is Lane.BATCH for r in ok)
    assert Counter(r.error_class for r in rows if r.final and r.status is Status.DEAD) == Counter({"over_budget": 2})
    spent = {row.customer: row.spent for row in await book.status()}
    assert spent["acme"] == sum((r.cost for r in ok), Decimal(0)).quantize(Decimal("1e-9"), rounding="ROUND_CEILING")


async def test_jobs_with_a_far_deadline_take_the_batch_lane(app: App) -> None:
    now = datetime.now(UTC)
    far, near = now + timedelta(hours=30), now + timedelta(hours=2)
    report = await app.producer().submit(
        [
            Job(id="far", prompt="a", deadline=far),
            Job(id="near", prompt="b", deadline=near),
            Job(id="none", prompt="c"),
        ],
        "b11",
    )
    assert report.routed == {"batch:cheap": 1, "cheap": 2}


def test_a_deadline_without_a_timezone_is_rejected_with_its_line(settings: Settings, tmp_path: Path) -> None:
    from producer.intake import JobValidator

    validator = JobValidator(settings.policies)
    bad = validator.parse_line(7, line(id="x", prompt="p", deadline="2026-12-01T09:00:00").encode())
    assert bad.line == 7 and "deadline: give a timezone" in bad.reason  # type: ignore[union-attr]
    good = validator.parse_line(8, line(id="y", prompt="p", deadline="2026-12-01T09:00:00Z").encode())
    assert isinstance(good, Job) and good.deadline is not None


def test_a_tier_whose_model_has_no_batch_price_answers_batch_jobs_on_the_sync_lane() -> None:
    policies = parse_policies(BATCH_TIERS)  # no discount for the Claude 3.5 model, which genai-prices lacks
    lanes = Lanes(policies)
    assert set(lanes.batch_models) == {"cheap", "standard"}
    assert "claude-3-5-sonnet-20241022" in lanes.unpriced["premium"] and "batch.discounts" in lanes.unpriced["premium"]
    assert lanes.on_tier(Lane.BATCH, "premium") is Lane.SYNC and lanes.on_tier(Lane.BATCH, "cheap") is Lane.BATCH
    local = parse_policies(BATCH_TIERS.replace('provider = "openai", model = "gpt-4o-mini"', 'provider = "vllm", '
                                               'model = "gpt-4o-mini"', 1)
                           + '\n[providers.vllm]\nkind = "openai"\nbase_url = "http://127.0.0.1:8000/v1"\n')  # fmt: skip
    assert "cheap" not in Lanes(local).batch_models and "cheap" not in Lanes(local).unpriced  # no batch API there


async def test_the_savings_report_shows_the_batch_lane_share_and_what_it_saved(
    app: App, fake: FakeProvider, clickhouse: ClickHouse
) -> None:
    from ladder.report import Filters, Reports

    await app.producer(Lane.BATCH).submit(jobs(8), "b12")
    await app.producer(Lane.SYNC).submit(jobs(4, prefix="s"), "b12")
    lane = lane_of(app)
    await lane.submit_due(eager=True)
    fake.batches.end()
    await lane.poll(force=True)
    await drain_workers(app)
    rows = await outcomes(app)
    await app.sink().run(burst=True)
    table = Reports(clickhouse, app.settings.policies).savings(Filters(batch="b12"))
    total = dict(zip(table.columns, table.rows[-1], strict=True))
    assert total["jobs"] == 12 and total["batch_jobs"] == 8 and total["batch_jobs_%"] == 66.7
    batch_rows = [r for r in rows if r.lane is Lane.BATCH]
    assert total["batch_saved"] == sum((r.sync_cost - r.cost for r in batch_rows), Decimal(0)) > 0
    assert total["actual"] == sum((r.cost for r in rows), Decimal(0))
    assert table.notes[-1].startswith("batch lane: 8 of 12 jobs (66.7%), $") and "synchronous price" in table.notes[-1]
    latency = Reports(clickhouse, app.settings.policies).latency(Filters(batch="b12"))
    assert latency.rows  # sync rows only: a batch's turnaround is not a call's latency


def test_keys_name_every_lane_key_under_the_prefix() -> None:
    keys = Keys("p")
    assert keys.lane_pending("cheap") == "p:lane:pending:cheap"
    assert keys.lane_batch_tasks("d").startswith(keys.lane_batch("d"))
    assert ENCODER.encode(Lane.BATCH) == ENCODER.encode("batch")


async def test_a_batch_the_provider_refuses_is_tried_again_then_its_jobs_go_to_the_sync_lane(
    app: App, fake: FakeProvider
) -> None:
    fake.batches.anthropic_max_requests = 2  # Anthropic answers 400 to a batch of three
    await app.producer(Lane.BATCH).submit(
        [Job(id=f"L{i}", prompt=f"review {i}", feature="legal") for i in range(3)], "b13"
    )
    lane = lane_of(app)
    [batch] = await lane.submit_due(eager=True)
    assert batch.state == "drafted" and not fake.batches.submitted()
    await lane.poll(force=True)  # the second refusal
    assert not await app.redis.zcard(app.keys.queue("premium"))
    await lane.poll(force=True)  # the third: the jobs go to the sync lane, their holds released
    assert await app.redis.zcard(app.keys.queue("premium")) == 3 and await lane.idle()
    assert not await app.redis.hlen(app.keys.budget_holds)
    await drain_workers(app)
    rows = await outcomes(app)
    assert [(r.lane, r.status) for r in rows] == [(Lane.SYNC, Status.OK)] * 3


async def test_a_process_that_lost_the_lease_sends_nothing_and_the_holder_sends_once(
    app: App, fake: FakeProvider
) -> None:
    await app.producer(Lane.BATCH).submit(jobs(4), "b14")
    stalled, other = lane_of(app), lane_of(app)
    stalled._holder, other._holder = "stalled", "other"
    assert await other.store.take_lease("other", 60)  # the stalled process's lease lapsed; another took it
    with pytest.raises(LeaseLost):
        await stalled.submit_due(eager=True)  # drafted, but not sent
    assert not fake.batches.submitted()
    await other.poll(force=True)  # the holder recovers the draft: nothing at the provider, so it sends it
    assert [len(b.requests) for b in fake.batches.submitted()] == [4]
    fake.batches.end()
    with pytest.raises(LeaseLost):
        await stalled.poll(force=True)  # asking whether it ended is harmless; settling it is the holder's
    assert not await outcomes(app)
    await other.poll(force=True)
    assert len(final_rows(await outcomes(app))) == 4 and len(fake.batches.submitted()) == 1


async def test_a_busy_provider_is_asked_again_however_often_and_never_loses_the_jobs_to_the_sync_lane(
    app: App, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    await app.producer(Lane.BATCH).submit(jobs(3), "b15")
    lane = lane_of(app)
    api = lane._apis["openai"]
    real_submit, refusals = api.submit, [RateLimited("429", status=429), Overloaded("503", status=503)] * 3

    async def busy_then_real(items: Any, draft: str) -> str:
        if refusals:
            raise refusals.pop()
        return await real_submit(items, draft)

    monkeypatch.setattr(api, "submit", busy_then_real)
    await lane.submit_due(eager=True)
    for _ in range(5):  # six refusals in all: more than a 4xx is allowed, and still no job leaves
        await lane.poll(force=True)
        assert not await app.redis.zcard(app.keys.queue("cheap"))
    assert not fake.batches.submitted()
    await lane.poll(force=True)
    assert [len(b.requests) for b in fake.batches.submitted()] == [3]
