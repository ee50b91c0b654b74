"""The three SDK adapters against the fake provider, configured only by the SDKs' own env variables."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from ladder.messages import Message
from tests.fake_provider import FakeProvider
from worker.anthropic_provider import AnthropicProvider
from worker.gemini_provider import GeminiProvider
from worker.openai_provider import OpenAIProvider
from worker.provider import (
    BadRequest,
    CompletionRequest,
    Fatal,
    Overloaded,
    Provider,
    ProviderError,
    RateLimited,
    Transient,
)

# Variables that would override or disturb what fake.env() sets.


@dataclass(frozen=True)
class Spec:
    provider: str  # the fake's name for the wire format
    build: Callable[[], Provider]
    model: str
    key_var: str
    overloaded_status: int


SPECS = [
    Spec("anthropic", AnthropicProvider, "claude-test", "ANTHROPIC_API_KEY", 529),
    Spec("openai", OpenAIProvider, "gpt-test", "OPENAI_API_KEY", 503),
    Spec("gemini", GeminiProvider, "gemini-test", "GEMINI_API_KEY", 503),
]


@pytest.fixture(params=SPECS, ids=[s.provider for s in SPECS])
def spec(request: pytest.FixtureRequest) -> Spec:
    spec: Spec = request.param
    return spec


@pytest.fixture
async def adapter(spec: Spec, sdk_env: dict[str, str]) -> AsyncIterator[Provider]:
    provider = spec.build()  # no arguments: the SDK reads its own variables
    yield provider
    await provider.aclose()


def _request(model: str, user: str, max_output_tokens: int = 256, system: str | None = None) -> CompletionRequest:
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", user))
    return CompletionRequest(model=model, messages=messages, max_output_tokens=max_output_tokens)


async def test_reply_and_usage_match_the_fake(spec: Spec, adapter: Provider, fake: FakeProvider) -> None:
    user = "Summarise the following text about ladders and routing. " * 5
    completion = await adapter.complete(_request(spec.model, user, system="You are terse."))

    expected = f"[{spec.model}] " + user[:120]
    assert completion.text == expected
    assert completion.finish_reason == "stop"
    [call] = fake.calls()
    assert (call.provider, call.model, call.status) == (spec.provider, spec.model, 200)
    assert completion.input_tokens == call.input_tokens == math.ceil(len("You are terse.\n" + user) / 4)
    assert completion.output_tokens == call.output_tokens == math.ceil(len(expected) / 4)


async def test_fixed_reply_in_json_mode(spec: Spec, adapter: Provider, fake: FakeProvider) -> None:
    fake.reply(spec.model, '{"complexity": "simple"}')
    request = CompletionRequest(spec.model, [Message("user", "rate this")], max_output_tokens=64, json_mode=True)
    completion = await adapter.complete(request)
    assert completion.text == '{"complexity": "simple"}'
    assert completion.output_tokens == fake.calls()[0].output_tokens == 6


async def test_max_tokens_truncation_is_length(spec: Spec, adapter: Provider, fake: FakeProvider) -> None:
    completion = await adapter.complete(_request(spec.model, "x" * 200, max_output_tokens=3))
    assert completion.finish_reason == "length"
    assert completion.output_tokens == 3 == fake.calls()[0].output_tokens
    assert completion.text == (f"[{spec.model}] " + "x" * 200)[:12]


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, RateLimited), ("overloaded", Overloaded), (500, Transient), (400, BadRequest), (401, Fatal)],
)
async def test_status_errors_are_mapped_without_retries(
    spec: Spec,
    adapter: Provider,
    fake: FakeProvider,
    sdk_env: dict[str, str],
    status: int | str,
    error: type[ProviderError],
) -> None:
    code = spec.overloaded_status if status == "overloaded" else int(status)
    fake.fail(spec.model, code, message=f"boom {code}")
    with pytest.raises(error) as caught:
        await adapter.complete(_request(spec.model, "hello"))

    exc = caught.value
    assert exc.status == code
    assert exc.retry_after == (1.0 if code == 429 else None)
    assert f"boom {code}" in str(exc)
    [call] = fake.calls()  # exactly one request: the SDK did not retry
    assert (call.provider, call.model, call.status) == (spec.provider, spec.model, code)
    key = sdk_env[spec.key_var]
    assert call.api_key == key
    assert key not in str(exc) and key not in repr(exc)
    assert key not in str(exc.__cause__)


async def test_failure_count_runs_out(spec: Spec, adapter: Provider, fake: FakeProvider) -> None:
    fake.fail(spec.model, 500, times=1)
    with pytest.raises(Transient):
        await adapter.complete(_request(spec.model, "hello"))
    assert (await adapter.complete(_request(spec.model, "hello"))).finish_reason == "stop"
    assert [c.status for c in fake.calls()] == [500, 200]


async def test_connection_refused_is_transient(
    spec: Spec, sdk_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = f"http://127.0.0.1:{port}"
    for name in ("ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.setenv(name, closed)
    monkeypatch.setenv("OPENAI_BASE_URL", closed + "/v1")
    provider = spec.build()
    try:
        with pytest.raises(Transient) as caught:
            await provider.complete(_request(spec.model, "hello"))
        assert sdk_env[spec.key_var] not in str(caught.value)
    finally:
        await provider.aclose()


async def test_many_concurrent_calls_share_keep_alive_connections(
    spec: Spec, adapter: Provider, fake: FakeProvider
) -> None:
    results = await asyncio.gather(*(adapter.complete(_request(spec.model, f"job {i}")) for i in range(200)))
    assert sorted(r.text for r in results) == sorted(f"[{spec.model}] job {i}" for i in range(200))
    assert len(fake.calls()) == 200


def test_fake_answers_unknown_paths_and_missing_keys(fake: FakeProvider) -> None:
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", int(fake.url.rsplit(":", 1)[1]))
    connection.request("GET", "/nowhere")
    response = connection.getresponse()
    assert response.status == 404 and "error" in json.loads(response.read())
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    connection.request("POST", "/v1/messages", body, {"content-type": "application/json"})  # same connection
    response = connection.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["error"]["type"] == "authentication_error"
    connection.close()
    assert [(c.provider, c.status, c.api_key) for c in fake.calls()] == [("anthropic", 401, "")]
