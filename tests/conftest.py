"""Real services for the tests: the Redis server at 127.0.0.1:6379 (a database of its own, flushed per
test) and chdb (one data folder for this pytest process, a fresh database per test)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from arq.connections import ArqRedis, RedisSettings, create_pool

from ladder.keys import Keys
from ladder.queueing import deserialize_arq, serialize_arq
from ladder.settings import Settings
from policies.config import parse_policies
from tests.canary import (  # the canary's hook and autouse fixture, imported to serve the whole suite
    assert_no_canary_in_clickhouse,
    assert_no_canary_in_redis,
    canary_reads_process_output,  # noqa: F401
    pytest_runtest_makereport,  # noqa: F401
)
from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, THREE_TIERS
from tests.processes import Process, started_processes
from tests.slow_provider import SlowServer, serve_slowly
from worker.clickhouse import ClickHouse

REDIS_URL = os.environ.get("LADDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.exit(f"tests need the Redis server at {REDIS_URL} ({e}); .ci/run starts one", returncode=3)
    return REDIS_URL


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    try:
        assert_no_canary_in_redis(client)
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
async def arq_redis(clean_redis: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(
        RedisSettings.from_dsn(clean_redis), job_serializer=serialize_arq, job_deserializer=deserialize_arq
    )
    yield pool
    await pool.aclose()


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def clickhouse(chdb_url: str) -> Iterator[ClickHouse]:
    ch = ClickHouse(chdb_url, f"test_{os.getpid()}_{next(_db_numbers)}")
    ch.migrate()
    yield ch
    assert_no_canary_in_clickhouse(ch)


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_provider: FakeProvider) -> FakeProvider:
    fake_provider.reset()
    return fake_provider


@pytest.fixture
def keys() -> Keys:
    return Keys("ladder")


# Variables that would steer an SDK away from the fake (another key, Vertex, a profile, an org).
SDK_STEERING = (
    "GOOGLE_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_PROFILE",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_API_VERSION",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
)


@pytest.fixture
def sdk_env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The fake provider's SDK variables set in this process (the SDKs read os.environ), and nothing
    else that could point an SDK elsewhere."""
    for name in [k for k in os.environ if k.endswith(("_API_KEY", "_BASE_URL")) or k in SDK_STEERING]:
        monkeypatch.delenv(name)
    env = fake.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def settings_env(sdk_env: dict[str, str], clean_redis: str, tmp_path: Path) -> dict[str, str]:
    """An environment for Settings and subprocesses: the test Redis and the fake provider."""
    env = dict(os.environ)
    env.update({"REDIS_URL": clean_redis, "LADDER_HOME": str(tmp_path / "home"), "LADDER_LOG_FORMAT": "json"})
    return env


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(THREE_TIERS)
    return path


@pytest.fixture
def settings(settings_env: dict[str, str], policies_file: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(policies_file), env)


@pytest.fixture
def cli_env(settings_env: dict[str, str], fake: FakeProvider, policies_file: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a `ladder` subprocess: test Redis, its own chdb folder, the fake provider."""
    return dict(
        settings_env,
        **fake.env(FAKE_KEYS),
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}",
        LADDER_POLICIES=str(policies_file),
    )


@pytest.fixture
def policies():  # type: ignore[no-untyped-def]
    return parse_policies(THREE_TIERS)


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    """A provider whose answers take `slow.delay` seconds (tests/slow_provider.py)."""
    yield from serve_slowly()


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """Start `ladder` commands in the background (tests/processes.py); killed at the end of the test."""
    yield from started_processes()


@pytest.fixture
def db(clean_redis: str) -> Iterator[redis.Redis]:
    """A plain Redis client on the test's database."""
    client = redis.Redis.from_url(clean_redis)
    yield client
    client.close()
