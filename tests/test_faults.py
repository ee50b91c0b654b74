"""Each failure class handled the way the provider means it: wait, fail over, cool down, stop, or give up."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ladder.app import open_app
from ladder.settings import Settings
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, line
from tests.pipeline import outcome_rows
from worker.clickhouse import ClickHouse

OPENAI, GEMINI = "gpt-4o-mini", "gemini-2.0-flash"
TWO_CANDIDATES = THREE_TIERS.replace(
    'candidates = [{ provider = "openai", model = "gpt-4o-mini" }]',
    'candidates = [{ provider = "openai", model = "gpt-4o-mini" }, { provider = "gemini", model = "gemini-2.0-flash" }]',
    1,
)


@pytest.fixture
def two_candidates(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    path = tmp_path / "two.toml"
    path.write_text(TWO_CANDIDATES + "\n[faults]\ncooldown_s = 30\nmax_lane_wait_s = 5\n")
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(path), env)


async def test_a_429_is_waited_out_on_the_same_model_not_escalated(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(OPENAI, status=429, times=1)  # answered with retry-after: 1
    rows = await outcome_rows(settings, tmp_path, line(id="a", prompt="hello"))
    assert rows == [
        ("a", "cheap", OPENAI, "retried", "rate_limited"),
        ("a", "cheap", OPENAI, "ok", ""),
    ]


async def test_an_overloaded_model_cools_down_and_the_tier_fails_over(
    two_candidates: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(OPENAI, status=503, times=1)
    rows = await outcome_rows(two_candidates, tmp_path, line(id="a", prompt="first"))
    assert rows == [("a", "cheap", OPENAI, "failover", "overloaded"), ("a", "cheap", GEMINI, "ok", "")]
    # The cooled-down model is skipped by the next job, in any worker, without another failed call.
    rows = await outcome_rows(two_candidates, tmp_path, line(id="b", prompt="second"))
    assert [r for r in rows if r[0] == "b"] == [("b", "cheap", GEMINI, "ok", "")]
    assert [c.model for c in fake.calls()].count(OPENAI) == 1


async def test_the_tier_escalates_only_when_no_candidate_is_left(
    two_candidates: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(OPENAI, status=500)
    fake.fail(GEMINI, status=503, times=1)  # standard's only candidate is this model: cooling, yet tried
    rows = await outcome_rows(two_candidates, tmp_path, line(id="a", prompt="hello"))
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("cheap", "failover", "transient"),
        ("cheap", "escalated", "overloaded"),
        ("standard", "ok", ""),
    ]


async def test_a_spend_limit_is_never_retried_and_stops_the_lane(
    two_candidates: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(OPENAI, status=429, times=1, message="insufficient_quota: you exceeded your current quota")
    rows = await outcome_rows(two_candidates, tmp_path, line(id="a", prompt="one"))
    assert rows == [("a", "cheap", OPENAI, "failover", "spend_limit"), ("a", "cheap", GEMINI, "ok", "")]
    rows = await outcome_rows(two_candidates, tmp_path, line(id="b", prompt="two"))
    # The next job does not call the stopped lane at all: it is blocked for far longer than a job waits.
    assert [r for r in rows if r[0] == "b"] == [
        ("b", "cheap", OPENAI, "failover", "lane_blocked"),
        ("b", "cheap", GEMINI, "ok", ""),
    ]
    assert [c.model for c in fake.calls()].count(OPENAI) == 1


async def test_a_malformed_job_is_dead_lettered_without_climbing(
    settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(OPENAI, status=400, message="invalid request: messages.0.content is malformed")
    rows = await outcome_rows(settings, tmp_path, line(id="a", prompt="hello"))
    assert rows == [("a", "cheap", OPENAI, "dead", "bad_request")]
    async with open_app(settings) as app:
        ((_, fields),) = await app.redis.xrange(app.keys.deadletter)
    assert "malformed" in msgspec.msgpack.decode(fields[b"d"])["reason"]


async def test_a_job_out_of_time_on_its_tier_is_settled_and_moves_on(
    settings_env: dict[str, str], fake: FakeProvider, tmp_path: Path, clickhouse: ClickHouse, chdb_url: str
) -> None:
    # Every 429 asks for a 1 s wait; the tier's budget is 2 s: the job must not wait forever or vanish.
    path = tmp_path / "short.toml"
    path.write_text(THREE_TIERS + "\n[limits]\njob_timeout_s = 2\n[faults]\nrate_limit_retries = 10\n")
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    fake.fail(OPENAI, status=429)
    rows = await outcome_rows(Settings.from_env(str(path), env), tmp_path, line(id="a", prompt="hello"))
    cheap = [r for r in rows if r[1] == "cheap"]
    assert cheap[-1][3:] == ("escalated", "timeout") and all(r[3] == "retried" for r in cheap[:-1])
    assert rows[-1][1:] == ("standard", GEMINI, "ok", "")


async def test_a_prompt_too_long_for_one_model_moves_to_the_next_not_to_the_dead_letters(
    two_candidates: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    too_long = "context_length_exceeded: This model's maximum context length is 128000 tokens"
    fake.fail(OPENAI, status=400, message=too_long)
    fake.fail(GEMINI, status=400, message="The input token count exceeds the context window", times=1)
    rows = await outcome_rows(two_candidates, tmp_path, line(id="a", prompt="a very long document"))
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("cheap", OPENAI, "failover", "context_too_long"),
        ("cheap", GEMINI, "escalated", "context_too_long"),
        ("standard", GEMINI, "ok", ""),  # a larger tier, and here the same model with room to spare
    ]
