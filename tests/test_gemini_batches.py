"""What is Gemini's own in batch mode (worker/gemini_batches.py), against the fake provider's Gemini batch
routes through the google-genai SDK configured only by its own env variables: the inline request's form,
custom ids in metadata, find by display name, the byte limit, a create never retried; and a Gemini tier
through the batch lane. What Gemini does as every provider does is tests/test_batch_apis.py's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ladder.app import App, open_app
from ladder.messages import OUTCOME_DECODER, Job, Lane, Message, Outcome, Status
from ladder.settings import Settings
from policies.config import Candidate, parse_policies
from policies.lanes import Lanes
from policies.prices import PriceBook
from tests import fake_batches
from tests.fake_provider import FakeProvider
from worker import gemini_batches
from worker.batch_api import BatchItem, BatchRequest
from worker.batch_apis import batch_apis
from worker.batch_lane import BatchLane
from worker.gemini_batches import GeminiBatches
from worker.provider import BadRequest, CompletionRequest, Overloaded

MODEL = "gemini-test"


@pytest.fixture
async def api(sdk_env: dict[str, str]) -> AsyncIterator[GeminiBatches]:
    adapter = GeminiBatches()  # no arguments: the SDK reads its own variables
    yield adapter
    await adapter.aclose()


def _items(draft: str, n: int, system: str | None = None, json_mode: bool = False) -> list[BatchRequest]:
    def request(i: int) -> CompletionRequest:
        messages = [Message("system", system)] if system else []
        return CompletionRequest(MODEL, [*messages, Message("user", f"question {i}")], 64, json_mode)

    return [BatchRequest(f"{draft}-{i}", request(i)) for i in range(n)]


async def _results(api: GeminiBatches, batch_id: str) -> dict[str, BatchItem]:
    return {item.custom_id: item async for item in api.results(batch_id)}


async def test_an_inline_request_is_the_generate_content_call_keyed_by_its_custom_id(
    api: GeminiBatches, fake: FakeProvider
) -> None:
    batch_id = await api.submit(_items("d1", 2, system="Be brief.", json_mode=True), "d1")
    assert batch_id.startswith("batches/")  # the batch's resource name, which the other calls take whole
    sent = fake.batches.batch(batch_id).requests
    assert [r.custom_id for r in sent] == ["d1-0", "d1-1"]  # the fake reads them from the metadata's key
    assert sent[1].body == {
        "model": f"models/{MODEL}",
        "contents": [{"parts": [{"text": "question 1"}], "role": "user"}],
        "systemInstruction": {"parts": [{"text": "Be brief."}], "role": "user"},
        "generationConfig": {"maxOutputTokens": 64, "responseMimeType": "application/json"},
    }


async def test_a_response_without_its_key_is_mapped_by_its_place(
    api: GeminiBatches, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = fake_batches._gemini_response

    def unkeyed(request: fake_batches._Request) -> dict[str, Any]:  # the request's metadata not echoed
        return {name: value for name, value in keyed(request).items() if name != "metadata"}

    monkeypatch.setattr(fake_batches, "_gemini_response", unkeyed)
    batch_id = await api.submit(_items("d2", 3), "d2")
    fake.batches.end(batch_id)
    results = await _results(api, batch_id)
    texts = {cid: item.completion.text if item.completion else None for cid, item in results.items()}
    assert texts == {f"d2-{i}": f"[{MODEL}] question {i}" for i in range(3)}


async def test_find_goes_by_the_display_name(api: GeminiBatches, fake: FakeProvider) -> None:
    since = time.time()
    assert await api.find("d8", 3, since, set()) is None  # nothing submitted yet
    older = await api.submit(_items("d8", 3), "d8")  # the same draft, but before `since`
    fake.batches.clock = lambda: time.time() + 3600  # what follows is an hour later
    since += 3600
    batch_id = await api.submit(_items("d8", 3), "d8")
    await api.submit(_items("d9", 3), "d9")

    assert await api.find("d8", 3, since, set()) == batch_id
    assert await api.find("d8", 3, since, {batch_id}) is None
    assert await api.find("d8", 3, since - 3600, {batch_id}) == older
    assert await api.find("d8", 3, since + 3600, set()) is None  # created before `since`
    assert await api.find("d", 3, since, set()) is None  # the name matches whole


async def test_find_reads_every_page(api: GeminiBatches, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    since = time.time()
    first = await api.submit(_items("d10", 1), "d10")
    for n in range(3):
        await api.submit(_items(f"x{n}", 1), f"x{n}")
    monkeypatch.setattr(gemini_batches, "LIST_PAGE", 2)  # the oldest batch is on the second page
    assert await api.find("d10", 1, since, set()) == first


async def test_request_bytes_count_what_the_sdk_sends(api: GeminiBatches, fake: FakeProvider) -> None:
    draft = "d11-" + "x" * 16
    items = _items(draft, 3, system="Ünïcode façade, “quoted”")
    counted = sum(api.request_bytes(item) for item in items)
    envelope = len(json.dumps({"batch": {"inputConfig": {"requests": {"requests": []}}, "displayName": draft}}))
    body = envelope + counted - 2  # the last element has no ", " after it
    fake.batches.gemini_max_bytes = body
    await api.submit(items, draft)
    fake.batches.gemini_max_bytes = body - 1
    with pytest.raises(BadRequest) as caught:
        await api.submit(items, draft)
    assert caught.value.status == 400 and "payload size" in str(caught.value)
    assert envelope < 20 * 1024 * 1024 - api.max_bytes  # max_bytes leaves the envelope its room


async def test_a_batch_is_made_on_one_model(api: GeminiBatches, fake: FakeProvider) -> None:
    items = [*_items("d12", 1), BatchRequest("d12-1", CompletionRequest("gemini-other", [], 8))]
    with pytest.raises(BadRequest):
        await api.submit(items, "d12")
    assert not fake.batches.submitted()


async def test_the_create_is_never_retried_the_control_calls_are(sdk_env: dict[str, str]) -> None:
    """A retried create could make a second billed batch; a retried GET costs nothing."""
    hits: list[str] = []

    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        hits.append(head.split(b" ")[1].decode())
        body = b'{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}'
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(unavailable, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = GeminiBatches(base_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(Overloaded):
            await api.submit(_items("d16", 1), "d16")
        assert hits == [f"/v1beta/models/{MODEL}:batchGenerateContent"]
        with pytest.raises(Overloaded):
            await api.ended("batches/b1")
        assert hits[1:] == ["/v1beta/batches/b1"] * 3  # the first try and two retries
    finally:
        await api.aclose()
        server.close()
        await server.wait_closed()


# ---- a Gemini tier through the batch lane ----------------------------------------------------------

GEMINI_TIERS = """
[[tiers]]
name = "cheap"
candidates = [{ provider = "gemini", model = "gemini-2.5-flash" }]

[[tiers]]
name = "standard"
candidates = [{ provider = "gemini", model = "gemini-2.5-flash" }]

[[tiers]]
name = "premium"
candidates = [{ provider = "gemini", model = "gemini-2.5-pro" }]

[rules]
premium_features = []
premium_keywords = []
input_token_threshold = 100000
default_tier = "cheap"

[rules.classify]
enabled = false

[classifier]
provider = "gemini"
model = "gemini-2.5-flash"

[batch]
max_wait_s = 3600
poll_interval_s = 3600
"""


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(GEMINI_TIERS)
    return path


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with open_app(settings) as opened:
        yield opened


def test_gemini_itself_is_a_batch_provider_a_gemini_proxy_is_not() -> None:
    lanes = Lanes(parse_policies(GEMINI_TIERS))
    assert lanes.batch_models["cheap"] == Candidate("gemini", "gemini-2.5-flash")
    proxied = parse_policies(GEMINI_TIERS + '\n[providers.gemini]\nkind = "gemini"\nbase_url = "http://127.0.0.1:9"\n')
    assert not Lanes(proxied).batch_models


async def test_a_gemini_tier_answers_batch_jobs_at_the_batch_price(app: App, fake: FakeProvider) -> None:
    policies = app.settings.policies
    apis = batch_apis(policies, app.providers(), app.settings.env)
    app._closers.extend(api.aclose for api in apis.values())
    assert isinstance(apis["gemini"], GeminiBatches)
    lane = BatchLane(policies, app.redis, app.keys, apis)

    jobs = [Job(id=f"g{i}", prompt=f"summarize item {i}") for i in range(5)]
    assert (await app.producer(Lane.BATCH).submit(jobs, "gb")).routed == {"batch:cheap": 5}
    [batch] = await lane.submit_due(eager=True)
    assert (batch.provider, batch.model, batch.size) == ("gemini", "gemini-2.5-flash", 5)
    assert await lane.poll(force=True) == 0
    fake.batches.end()
    assert await lane.poll(force=True) == 5

    entries = await app.redis.xrange(app.keys.outcomes)
    rows: list[Outcome] = [OUTCOME_DECODER.decode(fields[b"e"]) for _, fields in entries if b"e" in fields]
    assert sorted(r.job_id for r in rows) == [f"g{i}" for i in range(5)]
    prices = PriceBook(policies)
    for row in rows:
        assert (row.lane, row.status, row.provider) == (Lane.BATCH, Status.OK, "gemini")
        assert row.cost == prices.batch_cost(Candidate(row.provider, row.model), row.input_tokens, row.output_tokens)
        assert row.cost * 2 == row.sync_cost > Decimal(0)  # genai-prices' batch price: half
    billed = sorted((c.input_tokens, c.output_tokens) for c in fake.calls() if c.batch == batch.provider_batch_id)
    assert billed == sorted((r.input_tokens, r.output_tokens) for r in rows)
