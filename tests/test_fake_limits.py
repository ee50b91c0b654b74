"""The fake provider's rate limits, counters and random failures: what a benchmark relies on."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_provider import FakeProvider

KEY = {"authorization": "Bearer sk-test"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as f:
        yield f


@pytest.fixture
def clock(fake: FakeProvider) -> Clock:
    c = Clock()
    fake._clock = c
    return c


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json", **(headers or KEY)}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def openai(fake: FakeProvider, text: str = "hi", model: str = "gpt-4o-mini") -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50}
    return post(f"{fake.url}/v1/chat/completions", body)


def anthropic(fake: FakeProvider, text: str = "hi", model: str = "claude-3-5-haiku") -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    return post(f"{fake.url}/v1/messages", body, {"x-api-key": "sk-ant-test"})


def gemini(fake: FakeProvider, text: str = "hi", model: str = "gemini-2.0-flash") -> tuple[int, dict[str, str], Any]:
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    return post(f"{fake.url}/v1beta/models/{model}:generateContent", body, {"x-goog-api-key": "g-test"})


def test_requests_bucket_holds_a_minute_and_refills_continuously(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("gpt-4o-mini", rpm=60)  # one request a second, 60 at once from a full bucket
    assert [openai(fake)[0] for _ in range(60)] == [200] * 60
    assert openai(fake)[0] == 429
    clock.now += 0.5  # half a request refilled: still short
    assert openai(fake)[0] == 429
    clock.now += 0.5
    assert openai(fake)[0] == 200
    assert openai(fake)[0] == 429
    clock.now += 10.0  # ten more
    assert [openai(fake)[0] for _ in range(11)] == [200] * 10 + [429]
    clock.now += 3600.0  # never more than the capacity
    assert [openai(fake)[0] for _ in range(61)].count(200) == 60


def test_tokens_bucket_counts_input_plus_output(fake: FakeProvider, clock: Clock) -> None:
    # "x" * 40 -> 10 input tokens; the reply "[gpt-4o-mini] " + 40 x's is 54 chars -> 14 output tokens
    fake.limit("gpt-4o-mini", tpm=60)
    status, headers, body = openai(fake, "x" * 40)
    assert status == 200 and body["usage"]["total_tokens"] == 24
    assert headers["x-ratelimit-remaining-tokens"] == "36"
    assert openai(fake, "x" * 40)[0] == 200  # 12 left
    status, headers, _ = openai(fake, "x" * 40)
    assert status == 429 and headers["retry-after"] == "12"  # 12 tokens short at 1 a second
    clock.now += 11.5
    status, headers, _ = openai(fake, "x" * 40)
    assert status == 429 and headers["retry-after"] == "1"  # 0.5 s rounds up to a whole second
    clock.now += 0.5
    assert openai(fake, "x" * 40)[0] == 200


def test_openai_429_shape_and_headers(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("gpt-4o-mini", rpm=120, tpm=100_000)
    for _ in range(120):
        status, headers, _ = openai(fake)
        assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "120"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    clock.now += 0.25  # half a request refilled, 0.25 s still to wait
    status, headers, body = openai(fake)
    assert status == 429
    assert headers["retry-after"] == "1"
    assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert [c.status for c in fake.calls()][-1] == 429
    assert fake.calls()[-1].input_tokens == 0


def test_anthropic_headers_on_success_and_429(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("claude-3-5-haiku", rpm=2, tpm=1000)
    status, headers, _ = anthropic(fake, "x" * 40)
    assert status == 200
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    # one combined limit: input and output report it alike (1000 - 10 in - 15 out)
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "975"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "975"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "975"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert anthropic(fake)[0] == 200
    status, headers, body = anthropic(fake)
    assert status == 429
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": body["error"]["message"]}}
    assert headers["retry-after"] == "30"  # a whole request at 2 a minute
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_anthropic_separate_input_and_output_limits(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("claude-3-5-haiku", input_tpm=100, output_tpm=20)
    status, headers, _ = anthropic(fake, "x" * 40)  # 10 in; "[claude-3-5-haiku] " + 40 x's: 15 out
    assert status == 200
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "90"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "5"
    assert "anthropic-ratelimit-tokens-remaining" not in headers
    status, headers, _ = anthropic(fake, "x" * 40)
    assert status == 429 and headers["retry-after"] == "30"  # 10 output tokens short at 1/3 a second


def test_gemini_429_says_the_wait_in_retry_info(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("gemini-2.0-flash", rpm=1)
    assert gemini(fake)[0] == 200
    status, headers, body = gemini(fake)
    assert status == 429 and headers["retry-after"] == "60"
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert body["error"]["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "60s"}]


def test_unlimited_models_answer_as_before(fake: FakeProvider) -> None:
    fake.limit("gpt-4o-mini", rpm=1)
    status, headers, _ = openai(fake, model="gpt-4o")
    assert status == 200 and not any(h.startswith("x-ratelimit") for h in headers)
    fake.limit("gpt-4o-mini")  # no figures: the limit is lifted
    assert [openai(fake)[0] for _ in range(5)] == [200] * 5
    fake.fail("gpt-4o-mini", 429, times=1)
    status, headers, _ = openai(fake)
    assert status == 429 and headers["retry-after"] == "1"


def test_stats_count_by_model_and_class(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("gpt-4o-mini", rpm=2)
    for _ in range(3):
        openai(fake)
    fake.fail("gemini-2.0-flash", 503, times=1)
    gemini(fake)
    gemini(fake)
    openai(fake, model="gpt-4o")
    stats = get(f"{fake.url}/_fake/stats")
    assert stats == fake.stats()
    assert stats["gpt-4o-mini"] == {"ok": 2, "429": 1, "5xx": 0, "other": 0}
    assert stats["gemini-2.0-flash"] == {"ok": 1, "429": 0, "5xx": 1, "other": 0}
    assert stats["gpt-4o"]["ok"] == 1


def test_failed_call_takes_a_request_but_no_tokens(fake: FakeProvider, clock: Clock) -> None:
    fake.limit("gpt-4o-mini", rpm=10, tpm=100)
    fake.fail("gpt-4o-mini", 529, times=1)
    assert openai(fake, "x" * 40)[0] == 529
    status, headers, _ = openai(fake, "x" * 40)
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "8"
    assert headers["x-ratelimit-remaining-tokens"] == "76"


def test_fail_rate_share_is_within_tolerance_and_seeded(fake: FakeProvider) -> None:
    fake.fail_rate("gpt-4o-mini", 529, 0.2)
    first = [openai(fake)[0] for _ in range(1000)]
    share = first.count(529) / len(first)
    assert set(first) == {200, 529}
    assert 0.16 <= share <= 0.24  # ~5 standard deviations of a binomial(1000, 0.2)
    fake.fail_rate("gpt-4o-mini", 529, 0.2)  # the same seed: the same sequence
    assert [openai(fake)[0] for _ in range(1000)] == first
    fake.fail_rate("gpt-4o-mini", 529, 0)
    assert {openai(fake)[0] for _ in range(50)} == {200}
    with pytest.raises(ValueError):
        fake.fail_rate("gpt-4o-mini", 529, 1.5)


def test_fail_and_limit_over_http(fake: FakeProvider) -> None:
    assert post(f"{fake.url}/_fake/fail", {"model": "gemini-2.0-flash", "status": 503, "rate": 1.0})[0] == 200
    status, _, body = gemini(fake)
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
    assert post(f"{fake.url}/_fake/limit", {"model": "gpt-4o-mini", "rpm": 1})[0] == 200
    assert [openai(fake)[0] for _ in range(2)] == [200, 429]
    assert post(f"{fake.url}/_fake/fail", {"model": "x", "status": 503, "rate": 7})[0] == 400
    assert post(f"{fake.url}/_fake/nope", {})[0] == 404


def test_command_line_limits_and_stats() -> None:
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "tests.fake_provider", "--port", "0", "--limit", "gpt-4o-mini:rpm=3,tpm=200000"]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        statuses = [post(f"{url}/v1/chat/completions", body)[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert get(f"{url}/_fake/stats") == {"gpt-4o-mini": {"ok": 3, "429": 1, "5xx": 0, "other": 0}}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_command_line_rejects_a_bad_limit() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "tests.fake_provider", "--limit", "gpt-4o-mini:rpm=lots"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "rpm=lots" in out.stderr
