"""A provider fault storm over every tier: 20% of calls fail (500, overload, no answer) and 10% come back
malformed (unreadable bodies, empty or non-JSON answers). Every job must end ok or dead-lettered with
a reason, and every count must agree: job records, batch counts, the dead-letter stream, ClickHouse's
rows, and the calls the fake provider answered."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from ladder.app import open_app
from ladder.keys import Keys
from ladder.messages import DeadLetter, JobRecord, Message
from ladder.results import batch_counts, batch_records
from ladder.settings import Settings
from policies.config import Candidate, parse_policies
from policies.prices import PriceBook
from tests.fake_provider import NOT_JSON_ANSWER, STORM_ERRORS, STORM_FAULTS, FakeProvider
from tests.fake_provider import Call as FakeCall
from tests.helpers import THREE_TIERS, ladder, line
from tests.pipeline import outcome_rows, process
from worker.anthropic_provider import AnthropicProvider
from worker.clickhouse import ClickHouse
from worker.gemini_provider import GeminiProvider
from worker.openai_provider import OpenAIProvider
from worker.provider import CompletionRequest, MalformedResponse, Overloaded, Provider, ProviderError, Transient

JOBS = 300
RUN_JOBS = 60  # through `ladder run`, in a process of its own
BATCH = "storm"
TIER_BUDGET_S = 3  # limits.job_timeout_s: a held call is given up after this long

# Two candidates on every tier, from two providers each, and every provider on two tiers.
MODELS = {
    "cheap": [("openai", "gpt-4o-mini"), ("gemini", "gemini-2.0-flash")],
    "standard": [("gemini", "gemini-1.5-pro"), ("anthropic", "claude-3-5-haiku-20241022")],
    "premium": [("anthropic", "claude-3-5-sonnet-20241022"), ("openai", "gpt-4o")],
}
PRICES = {model: (f"0.{i + 1}", f"{i + 1}") for i, (_, model) in enumerate(c for cs in MODELS.values() for c in cs)}


def _policies() -> str:
    text = ""
    for tier, candidates in MODELS.items():
        listed = ", ".join(f'{{ provider = "{p}", model = "{m}" }}' for p, m in candidates)
        text += f'[[tiers]]\nname = "{tier}"\ncandidates = [{listed}]\n\n'
    for model, (inp, out) in PRICES.items():
        text += f'[prices."{model}"]\ninput_per_mtok = "{inp}"\noutput_per_mtok = "{out}"\n\n'
    # No classifier calls (short prompts would not reach it anyway); small budgets and cooldowns so
    # held calls and cooling models do not make the storm slow.
    return text + (
        "[rules.classify]\nenabled = false\n\n"
        f"[limits]\njob_timeout_s = {TIER_BUDGET_S}\n\n"
        "[faults]\ncooldown_s = 1\nmax_lane_wait_s = 1\n"
    )


SCHEMA = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
JSON_MARK = "as JSON"  # the fake answers valid JSON to these jobs' prompts


def _jobs(path: Path, count: int = JOBS) -> Path:
    """Plain and JSON-schema jobs alternating, starting on each of the three tiers in turn."""
    lines = []
    for i in range(count):
        start = [None, "standard", "premium"][i % 3]
        if i % 2:
            lines.append(line(id=f"j{i:03d}", prompt=f"Give invoice {i}'s total {JSON_MARK}", json_schema=SCHEMA,
                              task="extraction", tier_hint=start))  # fmt: skip
        else:
            lines.append(line(id=f"j{i:03d}", prompt=f"Say hello to customer {i}", tier_hint=start))
    path.write_text("\n".join(lines) + "\n")
    return path


# What Ladder must record for each answer of the fake: the outcome row's error_class.
ROW_CLASS = {
    "": "",
    "error_500": "transient",
    "overloaded": "overloaded",
    "held": "timeout",  # the tier's time budget runs out (3 s), long before the SDKs' own 60 s timeout
    "bad_json": "malformed",
    "missing_fields": "malformed",
    "wrong_types": "malformed",
    "empty_answer": "empty",
    "not_json": "invalid_json",
}


def _row_class(call: FakeCall) -> str:
    # Never the whole Call in a message: it holds the API key.
    assert call.answer or call.status == 200, f"{call.model} answered {call.status} outside the storm"
    return ROW_CLASS[call.answer]


@pytest.fixture
def storm_settings(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    path = tmp_path / "storm.toml"
    path.write_text(_policies())
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(path), env)


async def test_a_fault_storm_ends_every_job_ok_or_dead_lettered_and_every_count_agrees(
    storm_settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    for _, model in (c for cs in MODELS.values() for c in cs):
        fake.reply_when(model, JSON_MARK, '{"total": 12.5}')
    fake.storm(seed=8, error_rate=0.2, malformed_rate=0.1)

    async with open_app(storm_settings) as app:
        report, rejected = await process(app, _jobs(tmp_path / "jobs.jsonl"), BATCH)
        assert (report.accepted, rejected) == (JOBS, [])
        records = [r async for r in batch_records(app.redis, app.keys, BATCH)]
        counts = await batch_counts(app.redis, app.keys, BATCH)
        letters = [
            msgspec.msgpack.decode(f[b"d"], type=DeadLetter) for _, f in await app.redis.xrange(app.keys.deadletter)
        ]
        queued = [await app.redis.zcard(app.keys.queue(t)) for t in [*MODELS, "classify"]]
        ch = app.clickhouse()
        finals = ch.query("SELECT job_id, status FROM {db}.outcomes FINAL WHERE final")
        by_class = ch.query("SELECT model, error_class, count() FROM {db}.outcomes FINAL GROUP BY model, error_class")
        usage = ch.query(
            "SELECT model, sum(input_tokens), sum(output_tokens), sum(cost) FROM {db}.outcomes FINAL GROUP BY model"
        )
        (rows, distinct_events, free_with_cost), = ch.query(
            "SELECT count(), uniqExact(event_id), countIf(input_tokens + output_tokens = 0 AND cost != 0)"
            " FROM {db}.outcomes"
        )  # fmt: skip
        escalated = ch.query("SELECT tier, count() FROM {db}.outcomes FINAL WHERE status = 'escalated' GROUP BY tier")
        climbed = ch.query(
            "SELECT count() FROM {db}.outcomes FINAL WHERE final AND status = 'ok' AND tier != intended_tier"
        )[0][0]
    calls = fake.calls()
    answered = len(calls)

    # The storm really blew: every kind of fault, on every model.
    assert set(STORM_FAULTS) <= {c.answer for c in calls}
    assert {c.model for c in calls if c.answer} == set(PRICES)

    # Every job ended ok or dead, none left in a queue, none lost.
    by_status = Counter(r.status for r in records)
    assert len(records) == JOBS and set(by_status) <= {"ok", "dead"}, by_status
    assert queued == [0, 0, 0, 0]
    assert by_status["ok"] > 0 and by_status["dead"] > 0
    # The batch counts, the records, the dead-letter stream and ClickHouse's final rows agree.
    assert (counts["ok"], counts["dead"], counts["final"]) == (by_status["ok"], by_status["dead"], JOBS)
    _dead_letters_match_records(letters, records)
    assert all(d.attempts and d.attempts[-1].error_class for d in letters)
    assert len(finals) == JOBS == len({f[0] for f in finals})  # exactly one final row per job
    assert set(finals) == {(r.id, r.status) for r in records}

    # Every call the fake answered is exactly one outcome row, of the class its answer deserves.
    assert rows == distinct_events == answered  # and no event id twice, even before FINAL
    expected = Counter((c.model, _row_class(c)) for c in calls)
    assert Counter({(m, cls): n for m, cls, n in by_class}) == expected

    # Tokens and cost: only calls whose answer could be read are billed, each once, at its model's price.
    assert {m: (i, o, Decimal(cost)) for m, i, o, cost in usage} == _billed(calls, PriceBook(storm_settings.policies))
    assert free_with_cost == 0
    assert sum((r.cost for r in records), Decimal(0)) == sum((Decimal(u[3]) for u in usage), Decimal(0))

    # Faults on the lower tiers climbed: escalations on both, and jobs that finished ok above their first tier.
    assert dict(escalated).keys() == {"cheap", "standard"}
    assert counts["escalations"] == sum(n for _, n in escalated)
    assert climbed > 0


def _billed(calls: list[FakeCall], prices: PriceBook) -> dict[str, tuple[int, int, Decimal]]:
    """Per model: the input and output tokens the fake reported, and what they cost at the model's price."""
    billed: dict[str, tuple[int, int, Decimal]] = {}
    for c in calls:
        i, o, cost = billed.get(c.model, (0, 0, Decimal(0)))
        price = prices.cost(Candidate(c.provider, c.model), c.input_tokens, c.output_tokens)
        billed[c.model] = (i + c.input_tokens, o + c.output_tokens, cost + price)
    return billed


def _dead_letters_match_records(letters: list[DeadLetter], records: list[JobRecord]) -> None:
    """Each dead job is in the dead-letter stream once, with the reason its record gives, not empty."""
    dead = {r.id: r.reason for r in records if r.status == "dead"}
    assert sorted(d.job_id for d in letters) == sorted(dead)
    assert {d.job_id: d.reason for d in letters} == dead and all(dead.values())


async def test_ladder_run_in_a_storm_settles_every_job_and_reports_every_call(
    cli_env: dict[str, str], fake: FakeProvider, tmp_path: Path
) -> None:
    """The same storm through `ladder run` (every tier's worker at once) in a process of its own, which
    exits 0 only once each job's final outcome is in its ClickHouse, then prints spend by tier."""
    policies = tmp_path / "storm.toml"
    policies.write_text(_policies())
    env = dict(cli_env, LADDER_POLICIES=str(policies))
    for _, model in (c for cs in MODELS.values() for c in cs):
        fake.reply_when(model, JSON_MARK, '{"total": 12.5}')
    fake.storm(seed=9, error_rate=0.2, malformed_rate=0.1)
    run = ladder(env, "run", str(_jobs(tmp_path / "jobs.jsonl", RUN_JOBS)), "--batch", BATCH, "--format", "json")
    spend = json.loads(run.stdout)
    keys, client = Keys(), aioredis.Redis.from_url(env["REDIS_URL"])
    try:
        records = [r async for r in batch_records(client, keys, BATCH)]
        letters = [msgspec.msgpack.decode(f[b"d"], type=DeadLetter) for _, f in await client.xrange(keys.deadletter)]
    finally:
        await client.aclose()
    calls = fake.calls()

    by_status = Counter(r.status for r in records)
    assert len(records) == RUN_JOBS and set(by_status) == {"ok", "dead"}, by_status
    _dead_letters_match_records(letters, records)
    # ClickHouse, through the run's own report: every call the fake answered is one request, on the tier
    # of its model, costing what the fake billed; every job settled once.
    tier_of = {model: tier for tier, candidates in MODELS.items() for _, model in candidates}
    rows = {row["key"]: row for row in spend["rows"]}
    assert (rows["TOTAL"]["jobs"], rows["TOTAL"]["ok"]) == (RUN_JOBS, by_status["ok"])
    assert {t: rows[t]["requests"] for t in MODELS} == Counter(tier_of[c.model] for c in calls)
    billed = dict.fromkeys(MODELS, Decimal(0))
    for model, (_, _, cost) in _billed(calls, PriceBook(parse_policies(policies.read_text()))).items():
        billed[tier_of[model]] += cost
    assert {t: Decimal(str(rows[t]["cost"])) for t in MODELS} == billed
    assert sum(r.cost for r in records) == sum(billed.values())


# ---- each fault, one adapter at a time ------------------------------------------------------------

ADAPTERS = {"anthropic": AnthropicProvider, "openai": OpenAIProvider, "gemini": GeminiProvider}
CLIENT_TIMEOUT_S = 0.5
# What an adapter makes of each fault: the error it raises, or the text of the answer it returns.
RAISES: dict[str, type[ProviderError]] = {
    "error_500": Transient,
    "overloaded": Overloaded,
    "held": Transient,  # the client's own timeout: the next candidate may answer
    "bad_json": MalformedResponse,
    "missing_fields": MalformedResponse,
    "wrong_types": MalformedResponse,
}
RETURNS = {"empty_answer": "", "not_json": NOT_JSON_ANSWER}


@pytest.mark.parametrize("fault", STORM_FAULTS)
@pytest.mark.parametrize("provider", ADAPTERS)
async def test_every_fault_is_a_provider_error_or_an_answer_never_an_unmapped_exception(
    provider: str, fault: str, fake: FakeProvider, sdk_env: dict[str, str]
) -> None:
    model = f"{provider}-model"
    every_call = 1.0 if fault in STORM_ERRORS else 0.0  # the storm's rate of the fault's group
    fake.storm(seed=1, error_rate=every_call, malformed_rate=1 - every_call, faults=[fault])
    adapter: Provider = ADAPTERS[provider](timeout=CLIENT_TIMEOUT_S)  # key and base URL: the SDK's variables
    request = CompletionRequest(model, [Message("user", "total of invoice 7?")], max_output_tokens=64, json_mode=True)
    try:
        if fault in RAISES:
            with pytest.raises(RAISES[fault]) as raised:
                await adapter.complete(request)
            assert type(raised.value) is RAISES[fault]  # the class itself: a MalformedResponse is a Transient too
            assert provider in str(raised.value)
        else:
            completion = await adapter.complete(request)
            assert completion.text == RETURNS[fault] and completion.input_tokens > 0
    finally:
        await adapter.aclose()
    assert [c.answer for c in fake.calls()] == [fault]


# ---- what the tier worker does with them ------------------------------------------------------------


@pytest.fixture
def short_budget(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    """THREE_TIERS with a second candidate on cheap and a 1 s time budget per tier."""
    path = tmp_path / "short.toml"
    two = 'candidates = [{ provider = "openai", model = "gpt-4o-mini" }, { provider = "gemini", model = "gemini-2.0-flash" }]'
    path.write_text(
        THREE_TIERS.replace('candidates = [{ provider = "openai", model = "gpt-4o-mini" }]', two, 1)
        + "\n[limits]\njob_timeout_s = 1\n"
    )
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(path), env)


async def test_a_model_that_timed_out_cools_down_like_one_that_failed(
    short_budget: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.storm(seed=1, error_rate=1.0, malformed_rate=0, models=["gpt-4o-mini"], faults=["held"])
    rows = await outcome_rows(short_budget, tmp_path, line(id="a", prompt="first"))
    assert rows == [
        ("a", "cheap", "gpt-4o-mini", "escalated", "timeout"),
        ("a", "standard", "gemini-2.0-flash", "ok", ""),
    ]
    # The next job, in any worker, skips the slow model while it cools down.
    rows = await outcome_rows(short_budget, tmp_path, line(id="b", prompt="second"))
    assert [r for r in rows if r[0] == "b"] == [("b", "cheap", "gemini-2.0-flash", "ok", "")]
    assert [c.model for c in fake.calls()].count("gpt-4o-mini") == 1


async def test_an_exception_an_adapter_did_not_map_fails_the_call_not_the_job(
    short_budget: Settings, fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: OpenAIProvider, request: CompletionRequest) -> None:
        raise KeyError("choices")  # an SDK change or an adapter bug, after the call was made

    monkeypatch.setattr(OpenAIProvider, "complete", broken)
    rows = await outcome_rows(short_budget, tmp_path, line(id="a", prompt="hello"))
    # The call has its row, with the class a person can look for; the job fails over as for any failure.
    assert rows == [("a", "cheap", "gpt-4o-mini", "failover", "error"), ("a", "cheap", "gemini-2.0-flash", "ok", "")]
