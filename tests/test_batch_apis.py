"""The batch adapters (worker/anthropic_batches.py, worker/openai_batches.py, worker/gemini_batches.py)
against the fake provider's batch routes, configured only by the SDKs' own env variables. What every
provider does alike is one test run for each `Spec`; what is one provider's own is a test of its own
(Gemini's in tests/test_gemini_batches.py)."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from ladder.messages import Message
from tests.fake_provider import FakeProvider
from worker.anthropic_batches import AnthropicBatches
from worker.anthropic_provider import message_body
from worker.batch_api import BatchAPI, BatchCanceled, BatchExpired, BatchItem, BatchRequest
from worker.gemini_batches import GeminiBatches
from worker.openai_batches import OpenAIBatches
from worker.openai_provider import chat_body
from worker.provider import (
    BadRequest,
    CompletionRequest,
    Fatal,
    MalformedResponse,
    Overloaded,
    ProviderError,
    RateLimited,
    Transient,
)


def gemini_body(request: CompletionRequest) -> dict[str, object]:
    """An inline request as Gemini's REST API takes it: the sync adapter's generateContent call, with
    its model named. The SDK builds it privately from `generate_args`, so it is written out here."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    config: dict[str, object] = {"maxOutputTokens": request.max_output_tokens}
    if request.json_mode:
        config["responseMimeType"] = "application/json"
    body: dict[str, object] = {
        "model": f"models/{request.model}",
        "contents": [
            {"parts": [{"text": m.content}], "role": "model" if m.role == "assistant" else "user"}
            for m in request.messages
            if m.role != "system"
        ],
        "generationConfig": config,
    }
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}], "role": "user"}
    return body


@dataclass(frozen=True)
class Spec:
    """One provider's adapter, and what its tests expect of it that differs from the others'."""

    provider: str
    build: Callable[..., BatchAPI]
    model: str
    key_var: str
    url_var: str
    body: Callable[[CompletionRequest], dict[str, object]]  # what one request is sent as
    limits: tuple[int, int]  # (max_requests, max_bytes)


MiB = 1024 * 1024
ANTHROPIC = Spec(
    provider="anthropic",
    build=AnthropicBatches,
    model="claude-test",
    key_var="ANTHROPIC_API_KEY",
    url_var="ANTHROPIC_BASE_URL",
    body=message_body,
    limits=(100_000, 256 * MiB),
)
OPENAI = Spec(
    provider="openai",
    build=OpenAIBatches,
    model="gpt-test",
    key_var="OPENAI_API_KEY",
    url_var="OPENAI_BASE_URL",
    body=chat_body,
    limits=(50_000, 200 * MiB),
)
GEMINI = Spec(
    provider="gemini",
    build=GeminiBatches,
    model="gemini-test",
    key_var="GEMINI_API_KEY",
    url_var="GOOGLE_GEMINI_BASE_URL",
    body=gemini_body,
    limits=(2_000, 20 * MiB - 1024),  # 20 MB a create's whole body, less room for what wraps the requests
)
SPECS = [ANTHROPIC, OPENAI, GEMINI]


@pytest.fixture(params=SPECS, ids=[s.provider for s in SPECS])
def spec(request: pytest.FixtureRequest) -> Spec:
    spec: Spec = request.param
    return spec


@pytest.fixture
async def api(spec: Spec, sdk_env: dict[str, str]) -> AsyncIterator[BatchAPI]:
    adapter = spec.build()  # no arguments: the SDK reads its own variables
    yield adapter
    await adapter.aclose()


def only(spec: Spec) -> pytest.MarkDecorator:
    """A test of what is one provider's own: run with that provider's `spec`, and so its `api`, alone."""
    return pytest.mark.parametrize("spec", [spec], ids=[spec.provider], indirect=True)


def _items(draft: str, model: str, n: int, system: str | None = None) -> list[BatchRequest]:
    def request(i: int) -> CompletionRequest:
        messages = [Message("system", system)] if system else []
        return CompletionRequest(model, [*messages, Message("user", f"question {i}")], max_output_tokens=64)

    return [BatchRequest(f"{draft}-{i}", request(i)) for i in range(n)]


async def _results(api: BatchAPI, batch_id: str) -> dict[str, BatchItem]:
    return {item.custom_id: item async for item in api.results(batch_id)}


def _errors(items: dict[str, BatchItem]) -> dict[str, ProviderError]:
    return {cid: item.error for cid, item in items.items() if item.error is not None}


async def test_submit_end_and_results(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    items = _items("d1", spec.model, 3, system="Be brief.")
    batch_id = await api.submit(items, "d1")
    assert not await api.ended(batch_id)
    sent = fake.batches.batch(batch_id).requests
    assert [r.custom_id for r in sent] == ["d1-0", "d1-1", "d1-2"]  # each request carries its custom id
    assert [r.body for r in sent] == [json.loads(json.dumps(spec.body(i.request))) for i in items]

    fake.batches.end(batch_id)
    assert await api.ended(batch_id)
    results = await _results(api, batch_id)

    assert sorted(results) == ["d1-0", "d1-1", "d1-2"]
    for i in range(3):
        completion = results[f"d1-{i}"].completion
        assert completion is not None and results[f"d1-{i}"].error is None
        assert completion.text == f"[{spec.model}] question {i}"  # what the sync route answers
        assert completion.finish_reason == "stop"
        assert completion.input_tokens == math.ceil(len(f"Be brief.\nquestion {i}") / 4)
        assert completion.output_tokens == math.ceil(len(completion.text) / 4)
        assert completion.requests_left is None  # no rate-limit headers on a batch result
    billed = [(c.provider, c.status, c.batch, c.input_tokens, c.output_tokens) for c in fake.calls()]  # in order
    completions = [results[f"d1-{i}"].completion for i in range(3)]
    assert billed == [
        (spec.provider, 200, batch_id, c.input_tokens, c.output_tokens) for c in completions if c is not None
    ]


async def test_a_long_answer_is_cut_at_the_limit(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    fake.reply(spec.model, "word " * 200)
    batch_id = await api.submit(_items("d16", spec.model, 1), "d16")
    fake.batches.end(batch_id)
    [item] = (await _results(api, batch_id)).values()
    assert item.completion is not None
    assert (item.completion.finish_reason, item.completion.output_tokens) == ("length", 64)


async def test_results_read_twice_are_the_same_and_billed_once(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    batch_id = await api.submit(_items("d2", spec.model, 2), "d2")
    fake.batches.end(batch_id)
    first, second = await _results(api, batch_id), await _results(api, batch_id)
    assert first == second and len(first) == 2
    assert len(fake.calls()) == 2
    assert fake.batches.batch(batch_id).results_reads == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("invalid_request", BadRequest),
        ("overloaded", Overloaded),
        ("rate_limit", RateLimited),
        ("authentication", Fatal),
        ("api_error", Transient),
        ("malformed", MalformedResponse),
    ],
)
async def test_errored_requests_are_mapped(
    spec: Spec, api: BatchAPI, fake: FakeProvider, kind: str, error: type[ProviderError]
) -> None:
    fake.batches.fail_items(spec.model, 0.5, kind, seed=2)
    batch_id = await api.submit(_items("d3", spec.model, 8), "d3")
    fake.batches.end(batch_id)
    results = await _results(api, batch_id)
    failed = {r.custom_id for r in fake.batches.batch(batch_id).requests if r.outcome == "errored"}
    if kind == "malformed":  # the fake calls these succeeded: their answer is what cannot be read
        failed = {c.custom_id for c in fake.batches.batch(batch_id).requests} - {
            cid for cid, item in results.items() if item.completion is not None
        }

    errors = _errors(results)
    assert len(results) == 8 and 0 < len(errors) < 8
    assert set(errors) == failed
    assert all(type(e) is error for e in errors.values()), errors
    assert all(item.completion is not None for cid, item in results.items() if cid not in errors)


async def test_expired_requests(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    batch_id = await api.submit(_items("d4", spec.model, 3), "d4")
    fake.batches.end_partially(batch_id, 1)
    assert not await api.ended(batch_id)
    fake.batches.expire(batch_id)
    assert await api.ended(batch_id)

    results = await _results(api, batch_id)
    assert results["d4-0"].completion is not None
    assert {cid: type(e) for cid, e in _errors(results).items()} == {"d4-1": BatchExpired, "d4-2": BatchExpired}
    assert len(fake.calls()) == 1


async def test_cancel(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    batch_id = await api.submit(_items("d5", spec.model, 3), "d5")
    fake.batches.end_partially(batch_id, 1)
    await api.cancel(batch_id)
    assert await api.ended(batch_id)
    await api.cancel(batch_id)  # already ended: nothing to do, and no error

    results = await _results(api, batch_id)
    assert results["d5-0"].completion is not None
    assert {cid: type(e) for cid, e in _errors(results).items()} == {"d5-1": BatchCanceled, "d5-2": BatchCanceled}


async def test_results_of_a_batch_in_progress_are_refused(spec: Spec, api: BatchAPI) -> None:
    batch_id = await api.submit(_items("d6", spec.model, 1), "d6")
    with pytest.raises(BadRequest):
        await _results(api, batch_id)


async def test_find_recovers_a_batch_submitted_but_not_recorded(spec: Spec, api: BatchAPI, fake: FakeProvider) -> None:
    since = time.time()
    assert await api.find("d7", 3, since, set()) is None  # nothing submitted yet
    await api.submit(_items("older", spec.model, 3), "older")
    fake.batches.clock = lambda: time.time() + 3600  # what follows is an hour later
    since += 3600
    batch_id = await api.submit(_items("d7", spec.model, 3), "d7")
    await api.submit(_items("other", spec.model, 2), "other")

    assert await api.find("d7", 3, since, set()) == batch_id
    assert await api.find("d7", 3, since, {batch_id}) is None
    assert await api.find("d7", 3, since + 3600, set()) is None  # created before `since`


@only(ANTHROPIC)
async def test_anthropic_find_gives_up_when_two_batches_could_be_the_draft(api: BatchAPI) -> None:
    since = time.time()
    first = await api.submit(_items("d8", ANTHROPIC.model, 2), "d8")
    second = await api.submit(_items("d9", ANTHROPIC.model, 2), "d9")
    assert await api.find("d8", 2, since, set()) is None  # no metadata tells them apart
    assert await api.find("d8", 2, since, {second}) == first
    assert await api.find("d8", 3, since, set()) is None


@only(OPENAI)
async def test_openai_find_goes_by_the_draft_in_the_metadata(api: BatchAPI) -> None:
    since = time.time()
    first = await api.submit(_items("d8", OPENAI.model, 2), "d8")
    await api.submit(_items("d9", OPENAI.model, 2), "d9")
    assert await api.find("d8", 2, since, set()) == first
    assert await api.find("d1", 2, since, set()) is None


@only(OPENAI)
async def test_openai_batch_failing_validation_yields_nothing(api: BatchAPI) -> None:
    items = [*_items("d10", OPENAI.model, 1), *_items("d11", "gpt-other", 1)]  # one model a batch
    batch_id = await api.submit(items, "d10")
    assert await api.ended(batch_id)
    assert await _results(api, batch_id) == {}


async def test_limits_are_the_providers(spec: Spec, api: BatchAPI) -> None:
    assert (api.max_requests, api.max_bytes) == spec.limits


@only(ANTHROPIC)
async def test_anthropic_request_bytes_count_what_is_sent(api: BatchAPI, fake: FakeProvider) -> None:
    items = _items("d12", ANTHROPIC.model, 3, system="Ünïcode façade, “quoted”")
    counted = sum(api.request_bytes(item) for item in items)
    # The body is {"requests":[...]}: the requests, the commas between them, brackets and key.
    fake.batches.anthropic_max_bytes = counted + len('{"requests":[]}') - 1
    await api.submit(items, "d12")
    fake.batches.anthropic_max_bytes -= 1
    with pytest.raises(BadRequest) as caught:
        await api.submit(items, "d12")
    assert caught.value.status == 413


@only(OPENAI)
async def test_openai_request_bytes_count_what_is_sent(api: BatchAPI, fake: FakeProvider) -> None:
    items = _items("d12", OPENAI.model, 3, system="Ünïcode façade, “quoted”")
    counted = sum(api.request_bytes(item) for item in items)
    fake.batches.openai_max_bytes = counted  # the file is the lines, each with its newline
    assert len(await _results_after_end(api, await api.submit(items, "d12"), fake)) == 3
    fake.batches.openai_max_bytes = counted - 1
    assert await _results_after_end(api, await api.submit(items, "d12"), fake) == {}  # failed: too big


async def _results_after_end(api: BatchAPI, batch_id: str, fake: FakeProvider) -> dict[str, BatchItem]:
    fake.batches.end(batch_id)
    return await _results(api, batch_id)


async def test_an_api_key_never_shows_in_an_error(
    spec: Spec, api: BatchAPI, fake: FakeProvider, sdk_env: dict[str, str]
) -> None:
    key = sdk_env[spec.key_var]
    fake.batches.fail_items(spec.model, 1.0, "authentication")  # the item's message echoes the key
    batch_id = await api.submit(_items("d13", spec.model, 1), "d13")
    fake.batches.end(batch_id)
    [item] = (await _results(api, batch_id)).values()
    assert isinstance(item.error, Fatal)
    assert key not in str(item.error) and "Incorrect API key provided" in str(item.error)

    fake.batches.reject_key(401)  # every control call refused, the key echoed whole
    for call in (api.submit(_items("d14", spec.model, 1), "d14"), api.ended(batch_id), api.cancel(batch_id)):
        with pytest.raises(Fatal) as caught:
            await call
        assert key not in str(caught.value) and key not in repr(caught.value)
        assert key not in str(caught.value.__cause__)


async def test_connection_refused_is_transient(spec: Spec, sdk_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The SDK's own base URL for the fake (with whatever path that SDK wants), on a port nobody listens on.
    closed = urlsplit(sdk_env[spec.url_var])._replace(netloc=f"127.0.0.1:{port}").geturl()
    api = spec.build(base_url=closed)
    try:
        with pytest.raises(Transient):
            await api.submit(_items("d15", spec.model, 1), "d15")
    finally:
        await api.aclose()
