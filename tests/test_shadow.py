"""Shadow evaluation: a sample of lower-tier answers asked again on the shadow tier, compared or
judged, recorded as shadow rows and a score, never touching the job itself."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ladder.app import App, open_app
from ladder.cli import _wait_shadow_drained
from ladder.keys import Keys
from ladder.messages import (
    JOB_RECORD_DECODER,
    SCORE_DECODER,
    Job,
    RouteDecision,
    RouteSource,
    ShadowTask,
    TaskKind,
    TierTask,
)
from ladder.settings import Settings
from policies.config import parse_policies
from tests.fake_provider import FakeProvider
from tests.helpers import THREE_TIERS, ladder, line
from tests.pipeline import process
from worker.budget import month_of, to_nano
from worker.clickhouse import ClickHouse
from worker.settle import Settler

CHEAP, PREMIUM, PREMIUM_BACKUP = "gpt-4o-mini", "claude-3-5-sonnet-20241022", "gpt-4o"
# Premium gets a second candidate, so the reference call has somewhere to fail over to.
TIERS = THREE_TIERS.replace(
    'candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }]',
    'candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }, '
    '{ provider = "openai", model = "gpt-4o" }]',
)
SHADOW_ALL = "\n[shadow]\nenabled = true\nsample = 1.0\n"
TOPIC = "refund"


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> MakeSettings:
    """Settings for the shadow policies (every lower-tier job sampled), with `extra` lines in [shadow]."""

    def build(extra: str = "") -> Settings:
        path = tmp_path / "shadow_policies.toml"
        path.write_text(TIERS + SHADOW_ALL + extra)
        env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
        return Settings.from_env(str(path), env)

    return build


def _jobs(tmp_path: Path, *jobs: str) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(jobs) + "\n")
    return path


def _shadow_rows(app: App) -> list[tuple[str, str, str, str, str, int, int]]:
    return [
        (r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]))
        for r in app.clickhouse().query(
            "SELECT event_id, tier, intended_tier, status, error_class, attempt, final FROM {db}.outcomes FINAL "
            "WHERE route_source = 'shadow' ORDER BY job_id, attempt"
        )
    ]


def _scores(app: App) -> dict[str, tuple[str, str, float, int, str, str, str]]:
    rows = app.clickhouse().query(
        "SELECT job_id, tier, source, score, routing, label_tier, method, detail FROM {db}.scores FINAL"
    )
    return {r[0]: (r[1], r[2], float(r[3]), int(r[4]), r[5], r[6], r[7]) for r in rows}


def _final_rows(app: App) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for job_id, tier, source in app.clickhouse().query(
        "SELECT job_id, tier, route_source FROM {db}.outcomes FINAL WHERE final"
    ):
        found[job_id].append((tier, source))
    return found


async def _spent(app: App, customer: str) -> int:
    month = month_of(datetime.now(UTC))
    return int(await app.redis.hget(app.keys.budget_spent(month), customer) or 0)


# --- sampling -------------------------------------------------------------------------------------


def test_two_percent_of_jobs_are_sampled_by_a_stable_hash_of_their_id() -> None:
    policies = parse_policies(THREE_TIERS + "\n[shadow]\nenabled = true\n")
    settler = Settler(Redis(), Keys(), policies)
    ids = [f"job-{i}" for i in range(10_000)]
    sampled = [i for i in ids if settler.shadowed("cheap", i)]
    assert abs(len(sampled) / len(ids) - 0.02) <= 0.006
    assert sampled == [i for i in ids if settler.shadowed("cheap", i)]  # the same id, the same answer
    assert sampled == [i for i in ids if Settler(Redis(), Keys(), policies).shadowed("cheap", i)]
    assert not any(settler.shadowed("premium", i) for i in ids)  # the top tier is its own reference


def test_only_the_shadowed_tiers_are_sampled() -> None:
    policies = parse_policies(THREE_TIERS + '\n[shadow]\nenabled = true\nsample = 1.0\nfrom_tiers = ["standard"]\n')
    assert policies.shadowed_tiers() == ["standard"]
    settler = Settler(Redis(), Keys(), policies)
    ids = [f"job-{i}" for i in range(1000)]
    assert all(settler.shadowed("standard", i) for i in ids)
    assert not any(settler.shadowed(tier, i) for tier in ("cheap", "premium") for i in ids)
    disabled = Settler(Redis(), Keys(), parse_policies(THREE_TIERS + "\n[shadow]\nsample = 1.0\n"))
    assert not any(disabled.shadowed("cheap", i) for i in ids)


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bill_customer", [False, True])
async def test_cheap_labels_are_scored_against_premium_and_wrong_ones_labelled_premium(
    make_settings: MakeSettings, fake: FakeProvider, tmp_path: Path, bill_customer: bool
) -> None:
    fake.reply(CHEAP, "positive")
    fake.reply_when(CHEAP, TOPIC, "negative")  # the cheap model is wrong on one topic only
    fake.reply(PREMIUM, "Positive.")
    prompts = {
        "a": "Sentiment of: the refund arrived in two days, thanks",
        "b": "Sentiment of: lovely staff and a quick answer",
        "c": "Sentiment of: I got my refund without asking twice",
        "d": "Sentiment of: the parcel came early and intact",
    }
    jobs = [line(id=i, prompt=p, task="classification", customer="acme") for i, p in prompts.items()]
    settings = make_settings(f"bill_customer = {str(bill_customer).lower()}\n")
    async with open_app(settings) as app:
        await process(app, _jobs(tmp_path, *jobs), "shadow")
        scores = _scores(app)
        assert scores == {
            "a": ("cheap", "shadow", 0.0, 0, "premium", "normalized", "labels differ: 'negative' vs 'positive'"),
            "b": ("cheap", "shadow", 1.0, 1, "cheap", "normalized", "labels match: 'positive'"),
            "c": ("cheap", "shadow", 0.0, 0, "premium", "normalized", "labels differ: 'negative' vs 'positive'"),
            "d": ("cheap", "shadow", 1.0, 1, "cheap", "normalized", "labels match: 'positive'"),
        }
        (text,) = app.clickhouse().query("SELECT text FROM {db}.scores FINAL WHERE job_id = 'a'")[0]
        assert text == prompts["a"]
        assert _shadow_rows(app) == [
            (f"{j}#shadow#1", "premium", "premium", "ok", "", 1, 0) for j in sorted(prompts)
        ]  # fmt: skip
        assert _final_rows(app) == {j: [("cheap", "rule")] for j in prompts}  # the jobs' own rows, untouched
        costs = app.clickhouse().query("SELECT route_source = 'shadow', cost FROM {db}.outcomes FINAL")
        own = sum(to_nano(Decimal(c)) for shadow, c in costs if not shadow)
        shadow_cost = sum(to_nano(Decimal(c)) for shadow, c in costs if shadow)
        assert shadow_cost > 0
        assert await _spent(app, "acme") == own + (shadow_cost if bill_customer else 0)
        await app.sink().run(burst=True)  # the sink's start-up reconciliation counts shadow calls the same way
        assert await _spent(app, "acme") == own + (shadow_cost if bill_customer else 0)


async def test_free_text_goes_to_the_judge_and_its_score_decides(
    make_settings: MakeSettings, fake: FakeProvider, tmp_path: Path
) -> None:
    # The judge is the shadow tier's first model: its prompt, not the job's, quotes a <candidate>.
    fake.reply_when(PREMIUM, "<candidate>", '{"score": 2, "reason": "misses the date"}')
    async with open_app(make_settings()) as app:
        await process(app, _jobs(tmp_path, line(id="s", prompt="Summarize: the meeting moved to May 3.",
                                                task="summarization")), "judged")  # fmt: skip
        assert _scores(app) == {"s": ("cheap", "shadow", 0.25, 0, "premium", "judge", "misses the date")}
        assert _shadow_rows(app) == [
            ("s#shadow#1", "premium", "premium", "ok", "", 1, 0),
            ("s#judge#2", "premium", "premium", "ok", "", 2, 0),
        ]
    judged = [c for c in fake.calls() if c.model == PREMIUM]
    assert len(judged) == 2


async def test_an_unusable_judge_answer_leaves_routing_unknown(
    make_settings: MakeSettings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply_when(PREMIUM, "<candidate>", "Both answers have their merits.")
    async with open_app(make_settings()) as app:
        await process(app, _jobs(tmp_path, line(id="s", prompt="Summarize: rain tomorrow", task="summarization")), "u")
        ((tier, source, score, routing, label, method, detail),) = _scores(app).values()
        assert (tier, source, score, routing, label, method) == ("cheap", "shadow", 0.0, -1, "", "judge")
        assert "unusable" in detail


async def test_a_reference_that_fails_the_checks_judges_nothing(
    make_settings: MakeSettings, fake: FakeProvider, tmp_path: Path
) -> None:
    """A premium answer that would itself have been escalated cannot say the cheap one was wrong."""
    fake.reply(PREMIUM, "I'm not sure how to summarize this.")
    async with open_app(make_settings()) as app:
        await process(app, _jobs(tmp_path, line(id="c", prompt="Summarize: fine", task="summarization")), "r")
        ((tier, source, score, routing, label, method, detail),) = _scores(app).values()
    assert (tier, source, score, routing, label, method) == ("cheap", "shadow", 0.0, -1, "", "reference")
    assert detail == "the reference answer failed the checks: uncertain"
    assert sum(1 for c in fake.calls() if c.model == PREMIUM) == 1  # the reference only: no judge asked


# --- re-runs and failures -------------------------------------------------------------------------


def _shadow_task(job_id: str) -> ShadowTask:
    job = Job(id=job_id, prompt="Sentiment of: fine", task=TaskKind.CLASSIFICATION)
    task = TierTask(job=job, batch="b", route=RouteDecision("cheap", RouteSource.RULE, "default"), first_tier="cheap")
    return ShadowTask(task, "cheap", "openai", CHEAP, "positive")


async def test_a_rerun_of_a_settled_shadow_task_calls_nothing(make_settings: MakeSettings, fake: FakeProvider) -> None:
    async with open_app(make_settings()) as app:
        runtime = app.shadow_runtime()
        assert await runtime.run(_shadow_task("x"), "x~shadow", job_try=1) == "wrong"
        assert len(fake.calls()) == 1
        assert await runtime.run(_shadow_task("x"), "x~shadow", job_try=2) == "already settled"
        assert len(fake.calls()) == 1
        entries = await app.redis.xrange(app.keys.outcomes)
        assert [SCORE_DECODER.decode(f[b"s"]).job_id for _, f in entries if b"s" in f] == ["x"]
        # A re-run of a task that never settled (its worker died mid-call) does run.
        assert await runtime.run(_shadow_task("y"), "y~shadow", job_try=2) == "wrong"
        assert len(fake.calls()) == 2


async def test_a_rate_limited_reference_is_asked_again(make_settings: MakeSettings, fake: FakeProvider) -> None:
    fake.fail(PREMIUM, 429, times=1)
    fake.reply(PREMIUM, "positive")
    async with open_app(make_settings()) as app:
        assert await app.shadow_runtime().run(_shadow_task("r"), "r~shadow", job_try=1) == "right"
        await app.sink().run(burst=True)
        assert [(r[0], r[3], r[4]) for r in _shadow_rows(app)] == [
            ("r#shadow#1", "retried", "rate_limited"),
            ("r#shadow#2", "ok", ""),
        ]
    assert [(c.model, c.status) for c in fake.calls()] == [(PREMIUM, 429), (PREMIUM, 200)]


async def test_a_reference_failing_everywhere_gives_failed_rows_and_no_score(
    make_settings: MakeSettings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.fail(PREMIUM, 500)
    fake.fail(PREMIUM_BACKUP, 503)
    async with open_app(make_settings()) as app:
        await process(app, _jobs(tmp_path, line(id="f", prompt="Sentiment of: fine", task="classification")), "fail")
        assert [(r[0], r[3], r[4], r[6]) for r in _shadow_rows(app)] == [
            ("f#shadow#1", "failover", "transient", 0),
            ("f#shadow#2", "dead", "overloaded", 0),
        ]
        assert _scores(app) == {}
        assert _final_rows(app) == {"f": [("cheap", "rule")]}
        record = JOB_RECORD_DECODER.decode(await app.redis.get(app.keys.job("f")) or b"")
        assert (record.status, record.tier, len(record.path)) == ("ok", "cheap", 1)
        assert await app.redis.exists(app.keys.settled("f~shadow"))
        assert await app.redis.zcard(app.keys.queue("shadow")) == 0


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture
def shadow_cli_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "cli_shadow_policies.toml"
    path.write_text(TIERS + SHADOW_ALL)
    return dict(cli_env, LADDER_POLICIES=str(path))


async def _shadow_settled(redis_url: str, job_ids: list[str]) -> list[bool]:
    client, keys = Redis.from_url(redis_url), Keys()
    try:
        return [bool(await client.exists(keys.settled(f"{j}~shadow"))) for j in job_ids]
    finally:
        await client.aclose()


async def test_ladder_run_stops_only_once_the_shadow_queue_is_done(
    shadow_cli_env: dict[str, str], fake: FakeProvider, tmp_path: Path
) -> None:
    ids = [f"j{i}" for i in range(8)]
    path = _jobs(tmp_path, *(line(id=i, prompt=f"Sentiment of: day {i}", task="classification") for i in ids))
    ladder(shadow_cli_env, "run", str(path), "--batch", "cli", "--format", "json")
    assert await _shadow_settled(shadow_cli_env["REDIS_URL"], ids) == [True] * len(ids)
    assert sum(c.model == PREMIUM for c in fake.calls()) == len(ids)  # one reference call per job


async def test_ladder_run_waits_while_a_shadow_task_is_queued_or_running(make_settings: MakeSettings) -> None:
    async with open_app(make_settings()) as app:
        queue = app.keys.queue("shadow")
        await app.redis.zadd(queue, {"late~shadow": 1})
        waiting = asyncio.create_task(_wait_shadow_drained(app))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await app.redis.zrem(queue, "late~shadow")  # arq removes a task from its queue once it finished
        await asyncio.wait_for(waiting, timeout=2)


async def test_ladder_worker_shadow_consumes_the_shadow_queue(
    shadow_cli_env: dict[str, str], fake: FakeProvider, tmp_path: Path
) -> None:
    ids = ["w1", "w2"]
    path = _jobs(tmp_path, *(line(id=i, prompt=f"Sentiment of: {i}", task="classification") for i in ids))
    ladder(shadow_cli_env, "enqueue", str(path), "--batch", "w")
    ladder(shadow_cli_env, "worker", "--tier", "cheap", "--burst")
    assert await _shadow_settled(shadow_cli_env["REDIS_URL"], ids) == [False, False]
    ladder(shadow_cli_env, "worker", "--shadow", "--burst")
    assert await _shadow_settled(shadow_cli_env["REDIS_URL"], ids) == [True, True]
