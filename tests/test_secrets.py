"""No API key reaches a log line, an outcome row, a dead letter, a job record, a result file or an
exception message, even when the provider echoes the key in its error; and the canary that the whole
suite runs under (tests/canary.py) fails a test that lets one through."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import msgspec
import pytest
import redis
import structlog

from ladder.app import open_app
from ladder.logs import MaskingFormatter, SecretMasker
from ladder.messages import JOB_RECORD_DECODER
from ladder.redact import MASK, Redactor, redact, scrub_exception
from ladder.results import batch_records, result_line
from ladder.settings import Settings, redacted_url
from tests import canary
from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, THREE_TIERS, ladder, line
from tests.pipeline import process
from tests.test_providers import SPECS, Spec, _request
from worker.clickhouse import ClickHouse
from worker.provider import Fatal, Provider
from worker.tier_worker import TierRuntime

ROOT = Path(__file__).resolve().parent.parent
OPENAI, GEMINI, ANTHROPIC, CLASSIFIER = "gpt-4o-mini", "gemini-2.0-flash", "claude-3-5-sonnet-20241022", "gpt-4.1-nano"


def _keys(env: dict[str, str]) -> list[str]:
    keys = [v for k, v in env.items() if k.endswith("_API_KEY")]
    assert keys and all(canary.MARKER in k for k in keys)  # the canary can see these
    return keys


def _no_key(text: str, keys: list[str]) -> None:
    assert not [k for k in keys if k in text], "an API key leaked"


# ---- masking ---------------------------------------------------------------------------------------


def test_keys_are_masked_by_their_shape_without_being_known() -> None:
    shaped = {
        "sk-proj-Xq3v9KfLr2mWpTz8aBcD": "openai project key",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt-UvWx": "anthropic key",
        "AIzaSyD4e5F6g7H8i9J0kLmNoPqRsTuVwXyZ12": "google key",
    }
    for key, what in shaped.items():
        said = Redactor()(f"Incorrect API key provided: {key}. See your account ({what}).")
        assert key not in said and f"provided: {MASK}." in said, what
    assert Redactor()("GET /v1/models/x?alt=json&key=hunter2hunter2&x=1") == f"GET /v1/models/x?alt=json&key={MASK}&x=1"
    assert Redactor()("Authorization: Bearer tok_123456789") == f"Authorization: Bearer {MASK}"
    assert Redactor()("{'x-api-key': 'opaque-secret-value'}") == f"{{'x-api-key': '{MASK}'}}"
    assert Redactor()("redis://user:pa55word@10.0.0.1:6379/0 refused") == f"redis://user:{MASK}@10.0.0.1:6379/0 refused"
    ordinary = "the task-risk scorer (sk-learn) ran out of disk-space in 12 s; see https://example.com/a?b=c"
    assert Redactor()(ordinary) == ordinary


def test_the_environments_secrets_are_masked_whatever_their_shape() -> None:
    env = {
        "PROXY_TOKEN": "opaque-proxy-token-42",
        "CLICKHOUSE_URL": "http://ladder:p%40ss-word-9@ch:8123",
        "REDIS_URL": "redis://:r3dis-pass-word@redis:6379/0",
        "LADDER_REQUIRE_KEYS": "1",  # not a secret, and too short to mask anyway
    }
    text = "upstream said opaque-proxy-token-42 was refused; password p@ss-word-9 and r3dis-pass-word too; 1 left"
    assert redact(text, env) == f"upstream said {MASK} was refused; password {MASK} and {MASK} too; 1 left"
    assert redacted_url("redis://:r3dis-pass-word@redis:6379/0") == "redis://:***@redis:6379/0"


def test_an_exception_and_its_causes_are_scrubbed_in_place() -> None:
    key = FAKE_KEYS["OPENAI_API_KEY"]

    class SDKError(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.message = message

    try:
        try:
            raise SDKError(f"Error code: 401 - {{'error': {{'message': 'Incorrect API key provided: {key}'}}}}")
        except SDKError as inner:
            raise RuntimeError(f"while calling with {key}") from inner
    except RuntimeError as outer:
        scrub_exception(outer)
        shown = "".join(traceback.format_exception(outer))
        cause = outer.__cause__
    assert isinstance(cause, SDKError) and MASK in cause.message
    assert key not in shown and shown.count(MASK) == 2


def test_log_events_and_standard_library_records_are_masked() -> None:
    key, other = FAKE_KEYS["ANTHROPIC_API_KEY"], "opaque-proxy-token-42"
    masker = SecretMasker([other])
    event = masker(None, "warning", {"event": "call failed", "error": f"401 {key}", "nested": {"ids": [other]}, "n": 3})
    assert event == {"event": "call failed", "error": f"401 {MASK}", "nested": {"ids": [MASK]}, "n": 3}
    try:
        raise ValueError(f"refused {key}")
    except ValueError:
        record = logging.LogRecord("arq.worker", logging.ERROR, __file__, 1, "job %s failed: %s", ("j1", other), None)
        record.exc_info = sys.exc_info()
    text = MaskingFormatter(masker.mask, "%(levelname)s %(name)s %(message)s").format(record)
    assert text.startswith(f"ERROR arq.worker job j1 failed: {MASK}") and f"ValueError: refused {MASK}" in text
    _no_key(text, [key, other])


# ---- the fake provider at its worst -------------------------------------------------------------------


def test_the_fake_echoes_a_refused_key_whole(fake: FakeProvider) -> None:
    key = FAKE_KEYS["OPENAI_API_KEY"]
    body = {"model": OPENAI, "messages": [{"role": "user", "content": "hi"}]}
    fake.reject_key(OPENAI)
    refused = httpx2.post(f"{fake.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["message"].startswith(f"Incorrect API key provided: {key}. ")
    fake.fail(OPENAI, 403, message="forbidden")  # any 401/403 to a request with a key echoes it
    forbidden = httpx2.post(f"{fake.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert forbidden.json()["error"]["message"] == f"forbidden: {key}"
    with pytest.raises(ValueError, match="not a key refusal"):
        fake.reject_key(OPENAI, 500)


# ---- through the real SDKs -----------------------------------------------------------------------------


@pytest.fixture(params=SPECS, ids=[s.provider for s in SPECS])
def spec(request: pytest.FixtureRequest) -> Spec:
    chosen: Spec = request.param
    return chosen


@pytest.fixture
async def adapter(spec: Spec, sdk_env: dict[str, str]) -> AsyncIterator[Provider]:
    provider = spec.build()
    yield provider
    await provider.aclose()


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_echoed_by_the_provider_is_masked_in_the_error_and_its_cause(
    spec: Spec, adapter: Provider, fake: FakeProvider, sdk_env: dict[str, str], status: int
) -> None:
    fake.reject_key(spec.model, status)
    with pytest.raises(Fatal) as caught:
        await adapter.complete(_request(spec.model, "hello"))
    key = sdk_env[spec.key_var]
    [call] = fake.calls()
    assert (call.status, call.api_key) == (status, key)  # the key went out, and came back in the body
    error = caught.value
    assert error.status == status and MASK in str(error)
    _no_key(str(error) + repr(error) + "".join(traceback.format_exception(error)), [key])
    assert error.__cause__ is not None  # the SDK's exception is kept for debugging, scrubbed
    _no_key(str(error.__cause__) + repr(error.__cause__.args), [key])


# ---- through the whole pipeline ------------------------------------------------------------------------


async def test_refused_keys_reach_no_row_dead_letter_record_result_or_log(
    settings: Settings, fake: FakeProvider, sdk_env: dict[str, str], tmp_path: Path
) -> None:
    keys = _keys(sdk_env)
    fake.reject_key(OPENAI, 401)
    fake.reject_key(GEMINI, 403)
    fake.reject_key(ANTHROPIC, 401)
    fake.reject_key(CLASSIFIER, 401)
    long_plain = "Please tidy up this paragraph about the weather in spring. " * 30  # goes to the classifier
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line(id="a", prompt="hello") + "\n" + line(id="b", prompt=long_plain) + "\n")
    with structlog.testing.capture_logs() as logs:
        async with open_app(settings) as app:
            await process(app, jobs, "secrets")
            rows = app.clickhouse().query(
                "SELECT job_id, tier, status, error_class, error_message FROM {db}.outcomes FINAL "
                "ORDER BY job_id, attempt"
            )
            letters = [msgspec.msgpack.decode(f[b"d"]) for _, f in await app.redis.xrange(app.keys.deadletter)]
            records = [JOB_RECORD_DECODER.decode(await app.redis.get(app.keys.job(j))) for j in ("a", "b")]
            results = tmp_path / "results.jsonl"  # what `ladder results` writes, and the canary reads
            results.write_bytes(
                b"".join(
                    [
                        msgspec.json.encode(result_line(r)) + b"\n"
                        async for r in batch_records(app.redis, app.keys, "secrets")
                    ]
                )
            )
            assert canary.clickhouse_leaks(app.clickhouse()) == []
    assert canary.redis_leaks(redis.Redis.from_url(settings.redis_url)) == []
    assert {c.status for c in fake.calls()} == {401, 403} and {c.api_key for c in fake.calls()} <= set(keys)

    # Every call was refused: each job climbed every tier and was dead-lettered, saying why.
    by_job = {j: [r[1:4] for r in rows if r[0] == j] for j in ("a", "b")}
    assert by_job["a"] == [
        ("cheap", "escalated", "fatal"),
        ("standard", "escalated", "fatal"),
        ("premium", "dead", "fatal"),
    ]
    assert by_job["b"][0] == ("classify", "escalated", "fatal") and by_job["b"][-1][1] == "dead"
    messages = [r[4] for r in rows]
    assert all(MASK in m for m in messages)  # the echoed key was there, and was masked
    assert sorted(letter["job_id"] for letter in letters) == ["a", "b"]
    assert all(MASK in letter["reason"] for letter in letters)
    assert [r.status for r in records] == ["dead", "dead"] and all(MASK in r.reason for r in records)
    assert [json.loads(x)["reason"] for x in results.read_text().splitlines()] == [r.reason for r in records]
    failures = [e for e in logs if e["event"] == "call failed"]
    assert failures and all(MASK in e["error"] for e in failures)
    texts = [*messages, json.dumps(letters, default=str), repr(records), results.read_text(), repr(logs)]
    _no_key("\n".join(texts), keys)


def test_a_ladder_run_with_refused_keys_keeps_them_out_of_its_output_and_logs(
    cli_env: dict[str, str], fake: FakeProvider, tmp_path: Path
) -> None:
    for model in (OPENAI, GEMINI, ANTHROPIC):
        fake.reject_key(model)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(line(id=f"j{i}", prompt=f"question {i}?") + "\n" for i in range(3)))
    run = ladder(cli_env, "run", str(jobs), "--batch", "refused", "--format", "json")  # the canary reads it too
    spend = {r["key"]: r for r in json.loads(run.stdout)["rows"]}
    assert (spend["TOTAL"]["requests"], spend["TOTAL"]["failed"]) == (9, 9)
    logged = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    failed = [e for e in logged if e.get("event") == "call failed"]
    assert len(failed) == 9 and all(MASK in e["error"] for e in failed)  # three tiers for each of three jobs
    keys = list(FAKE_KEYS.values())
    assert {c.api_key for c in fake.calls()} == set(keys)
    _no_key(run.stdout + run.stderr, keys)  # the canary also reads its chdb folder, under tmp_path


async def test_a_crash_whose_message_holds_a_key_is_dead_lettered_without_it(
    settings_env: dict[str, str],
    sdk_env: dict[str, str],
    clickhouse: ClickHouse,
    chdb_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ladder's own code raising with a key in the message (a proxy URL, a header in an error): the
    job is given up with the reason, and the reason goes to the outcome row and the dead letter."""
    path = tmp_path / "crash.toml"
    path.write_text(THREE_TIERS + "\n[faults]\nmax_job_tries = 1\ncrash_retry_delay_s = 0\n")
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    settings = Settings.from_env(str(path), env)
    key = sdk_env["OPENAI_API_KEY"]

    async def crash(*args: object, **kwargs: object) -> str:
        raise RuntimeError(f"proxy at https://user:{key}@proxy.example refused Authorization: Bearer {key}")

    monkeypatch.setattr(TierRuntime, "run", crash)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line(id="a", prompt="hello") + "\n")
    # The crash's traceback is logged; here, unlike in `ladder` processes, no masker is configured.
    with structlog.testing.capture_logs():
        async with open_app(settings) as app:
            await process(app, jobs, "crash")
            [(status, error_class, message)] = app.clickhouse().query(
                "SELECT status, error_class, error_message FROM {db}.outcomes FINAL"
            )
            [(_, fields)] = await app.redis.xrange(app.keys.deadletter)
    assert (status, error_class) == ("dead", "crashed") and "RuntimeError" in message
    reason = msgspec.msgpack.decode(fields[b"d"])["reason"]
    _no_key(message + reason, [key])


# ---- the canary itself ----------------------------------------------------------------------------------

INNER_MARKER = "CANARYPROOF"  # the inner run's marker: this test's own files and output must not hold ours

INNER_TESTS = """
import logging
import subprocess
import sys

import redis

from tests.canary import MARKER

KEY = "sk-proj-" + MARKER + "-inner"


def test_clean(tmp_path, clean_redis, clickhouse):
    (tmp_path / "results.jsonl").write_text('{"reason": "401: Incorrect API key provided: ***"}')
    print("nothing secret here")


def test_prints_a_key():
    print("calling with", KEY)


def test_logs_a_key():
    logging.getLogger("inner").warning("refused: %s", KEY)


def test_raises_with_a_key():
    raise RuntimeError("refused " + KEY)


def test_fails_for_another_reason_and_prints_a_key():
    print(KEY)
    assert 1 + 1 == 3


def test_writes_a_key_into_a_result_file(tmp_path):
    (tmp_path / "out" / "results.jsonl").parent.mkdir()
    (tmp_path / "out" / "results.jsonl").write_text('{"reason": "' + KEY + '"}')


def test_a_command_prints_a_key_read_with_capsys(capsys):
    print("key:", KEY)
    assert capsys.readouterr().out.startswith("key:")


def test_a_process_prints_a_key():
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write(" + repr(KEY) + ")"], capture_output=True)


def test_a_key_in_a_redis_stream(clean_redis):
    redis.Redis.from_url(clean_redis).xadd("ladder:deadletter", {"d": KEY.encode()})


def test_a_key_in_a_clickhouse_row(clickhouse):
    clickhouse.client.command(
        "INSERT INTO " + clickhouse.database + ".outcomes (event_id, job_id, error_message) VALUES ('e', 'j', %(m)s)",
        parameters={"m": "401 " + KEY},
    )
"""


def test_the_canary_fails_each_kind_of_leak_and_passes_a_clean_test(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_leaky.py").write_text(INNER_TESTS)
    junit = tmp_path / "junit.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LADDER_CANARY_MARKER=INNER_MARKER)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
         "--basetemp", str(tmp_path / "inner-tmp"), "--junitxml", str(junit), "test_leaky.py"],
        cwd=inner, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    problems: dict[str, list[str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        texts = [(p.get("message") or "") + "\n" + (p.text or "") for p in case if p.tag in ("failure", "error")]
        problems[case.get("name", "")] = texts
    assert problems.pop("test_clean") == [], done.stdout
    assert set(problems) == {
        "test_prints_a_key",
        "test_logs_a_key",
        "test_raises_with_a_key",
        "test_fails_for_another_reason_and_prints_a_key",
        "test_writes_a_key_into_a_result_file",
        "test_a_process_prints_a_key",
        "test_a_command_prints_a_key_read_with_capsys",
        "test_a_key_in_a_redis_stream",
        "test_a_key_in_a_clickhouse_row",
    }
    for name, texts in problems.items():
        assert texts and any("canary marker of the fake API keys" in t for t in texts), (name, done.stdout)
    where = {name: "\n".join(texts) for name, texts in problems.items()}
    assert "Captured stdout call" in where["test_prints_a_key"]
    assert "Captured log call" in where["test_logs_a_key"]
    assert "the failure text" in where["test_raises_with_a_key"]
    assert "assert (1 + 1) == 3" in where["test_fails_for_another_reason_and_prints_a_key"]  # its own failure stays
    assert "file out/results.jsonl" in where["test_writes_a_key_into_a_result_file"]
    assert "the output of python -c import sys" in where["test_a_process_prints_a_key"]
    assert "the output read with capsys/capfd" in where["test_a_command_prints_a_key_read_with_capsys"]
    assert "Redis key ladder:deadletter" in where["test_a_key_in_a_redis_stream"]
    assert ".outcomes: " in where["test_a_key_in_a_clickhouse_row"]
    assert "<canary>" in where["test_prints_a_key"] and INNER_MARKER not in where["test_prints_a_key"]
