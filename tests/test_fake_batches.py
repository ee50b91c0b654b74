"""The fake provider's batch routes (tests/fake_batches.py), driven by the official SDKs as they are."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fake_provider import DEFAULT_KEYS, FakeProvider

CLAUDE = "claude-test"
GPT = "gpt-test"


@pytest.fixture
async def claude(fake: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(api_key=DEFAULT_KEYS["ANTHROPIC_API_KEY"], base_url=fake.url, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def gpt(fake: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key=DEFAULT_KEYS["OPENAI_API_KEY"], base_url=fake.url + "/v1", max_retries=0)
    yield client
    await client.close()


# Requests are typed Any: some tests send what the SDK's TypedDicts would forbid, as a caller could.
def _params(i: int, model: str = CLAUDE, max_tokens: int = 64) -> Any:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"question {i}"}]}


def _claude_requests(n: int, prefix: str = "r") -> list[Any]:
    return [{"custom_id": f"{prefix}-{i}", "params": _params(i)} for i in range(n)]


def _chat(i: int, model: str = GPT) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": f"question {i}"}]}


def _input_file(bodies: list[dict[str, Any]], prefix: str = "o") -> bytes:
    lines = [
        {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _claude_results(client: anthropic.AsyncAnthropic, batch_id: str) -> dict[str, Any]:
    return {line.custom_id: line.result async for line in await client.messages.batches.results(batch_id)}


async def _gpt_batch(client: openai.AsyncOpenAI, data: bytes, draft: str = "d1") -> str:
    file = await client.files.create(file=("input.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"ladder_draft": draft},
    )
    return batch.id


async def _gpt_lines(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, Any]:
    if file_id is None:
        return {}
    text = (await client.files.content(file_id)).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


# ---- Anthropic -----------------------------------------------------------------------------------


async def test_anthropic_batch_waits_for_the_test_then_answers_as_the_sync_route(
    claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    created = await claude.messages.batches.create(requests=_claude_requests(3))
    assert created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 3 and created.ended_at is None
    assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600
    assert (await claude.messages.batches.retrieve(created.id)).processing_status == "in_progress"
    assert fake.calls() == []

    fake.batches.end(created.id)
    ended = await claude.messages.batches.retrieve(created.id)
    assert ended.processing_status == "ended" and ended.ended_at is not None
    assert ended.request_counts.succeeded == 3 and ended.request_counts.processing == 0
    results = await _claude_results(claude, created.id)
    batch_calls = fake.calls()
    sync = await claude.messages.create(**_params(1))  # the same body, asked synchronously

    assert sorted(results) == ["r-0", "r-1", "r-2"]
    answer = results["r-1"]
    assert answer.type == "succeeded"
    assert answer.message.content == sync.content and answer.message.usage == sync.usage
    assert [(c.status, c.batch) for c in batch_calls] == [(200, created.id)] * 3
    assert batch_calls[1].output_tokens == sync.usage.output_tokens
    assert fake.calls()[-1].batch == ""  # the sync call


async def test_results_read_twice_are_billed_once(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    batch = await claude.messages.batches.create(requests=_claude_requests(2))
    fake.batches.end()
    first, second = await _claude_results(claude, batch.id), await _claude_results(claude, batch.id)
    assert first == second
    assert fake.batches.batch(batch.id).results_reads == 2
    assert len(fake.calls()) == 2


async def test_anthropic_errored_items(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    fake.batches.fail_items(CLAUDE, 0.5, "overloaded", seed=3)
    requests = [*_claude_requests(8), {"custom_id": "broken", "params": {"model": CLAUDE, "messages": []}}]
    batch = await claude.messages.batches.create(requests=requests)
    again = await claude.messages.batches.create(requests=_claude_requests(8))
    fake.batches.end()
    results, results_again = await _claude_results(claude, batch.id), await _claude_results(claude, again.id)

    overloaded = {cid for cid, r in results.items() if r.type == "errored" and r.error.error.type == "overloaded_error"}
    assert 0 < len(overloaded) < 8
    assert overloaded == {cid for cid, r in results_again.items() if r.type == "errored"}  # drawn by custom id
    assert results["broken"].error.error.type == "invalid_request_error"  # max_tokens is missing
    counts = (await claude.messages.batches.retrieve(batch.id)).request_counts
    assert (counts.errored, counts.succeeded) == (len(overloaded) + 1, 8 - len(overloaded))
    calls = [c for c in fake.calls() if c.batch == batch.id]
    assert sorted(c.status for c in calls if c.status != 200) == [400] + [529] * len(overloaded)
    assert all(c.input_tokens == c.output_tokens == 0 for c in calls if c.status != 200)


async def test_anthropic_partial_answers_then_expiry(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    batch = await claude.messages.batches.create(requests=_claude_requests(4))
    fake.batches.end_partially(batch.id, 1)
    fake.batches.end_partially(batch.id, 1)
    counts = (await claude.messages.batches.retrieve(batch.id)).request_counts
    assert counts.processing == 4  # as Anthropic counts: nothing is told until the batch ends

    fake.batches.expire(batch.id)
    ended = await claude.messages.batches.retrieve(batch.id)
    results = await _claude_results(claude, batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    assert {cid: r.type for cid, r in results.items()} == {
        "r-0": "succeeded",
        "r-1": "succeeded",
        "r-2": "expired",
        "r-3": "expired",
    }
    assert len(fake.calls()) == 2  # expired requests are not billed


async def test_anthropic_cancel(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    batch = await claude.messages.batches.create(requests=_claude_requests(3))
    fake.batches.end_partially(batch.id, 1)
    canceling = await claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None

    ended = await claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (1, 2)
    assert [r.type for r in (await _claude_results(claude, batch.id)).values()] == ["succeeded", "canceled", "canceled"]
    assert len(fake.calls()) == 1
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.batches.cancel(batch.id)


async def test_anthropic_list_pages_newest_first(claude: anthropic.AsyncAnthropic) -> None:
    ids = [(await claude.messages.batches.create(requests=_claude_requests(1))).id for _ in range(5)]
    first = await claude.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[:2:-1] and first.has_more
    assert [b.id async for b in claude.messages.batches.list(limit=2)] == ids[::-1]
    before = await claude.messages.batches.list(limit=2, before_id=ids[1])
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more


@pytest.mark.parametrize(
    "custom_ids",
    [["has space"], ["a" * 65], ["dot.ted"], [""], ["same", "same"]],
    ids=["space", "too-long", "dot", "empty", "duplicate"],
)
async def test_anthropic_custom_ids_are_validated(
    claude: anthropic.AsyncAnthropic, fake: FakeProvider, custom_ids: list[str]
) -> None:
    requests: list[Any] = [{"custom_id": cid, "params": _params(i)} for i, cid in enumerate(custom_ids)]
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.batches.create(requests=requests)
    assert fake.batches.submitted() == []


async def test_anthropic_longest_custom_id_is_accepted(claude: anthropic.AsyncAnthropic) -> None:
    batch = await claude.messages.batches.create(requests=[{"custom_id": "A_-9" * 16, "params": _params(0)}])
    assert batch.request_counts.processing == 1


async def test_anthropic_limits(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    fake.batches.anthropic_max_requests = 2
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.batches.create(requests=_claude_requests(3))
    await claude.messages.batches.create(requests=_claude_requests(2))

    fake.batches.anthropic_max_bytes = 300
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.batches.create(requests=_claude_requests(3))
    assert caught.value.status_code == 413
    assert len(fake.batches.submitted()) == 1


async def test_auto_end_and_the_24_hour_window(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    fake.batches.auto_end_s = 0
    batch = await claude.messages.batches.create(requests=_claude_requests(2))
    ended = await claude.messages.batches.retrieve(batch.id)  # the first GET ends it
    assert ended.request_counts.succeeded == 2

    fake.batches.auto_end_s = None
    late = await claude.messages.batches.create(requests=_claude_requests(2))
    fake.batches.clock = lambda: time.time() + 24 * 3600
    expired = await claude.messages.batches.retrieve(late.id)
    assert (expired.processing_status, expired.request_counts.expired) == ("ended", 2)


async def test_a_request_without_a_key_is_refused(fake: FakeProvider) -> None:
    async with httpx2.AsyncClient(base_url=fake.url) as client:
        for path in ("/v1/messages/batches", "/v1/batches", "/v1/files/file-1/content"):
            assert (await client.get(path)).status_code == 401
        assert (await client.get("/v1/batches/x/nothing", headers={"authorization": "Bearer k"})).status_code == 404
    assert fake.calls() == []


# ---- OpenAI --------------------------------------------------------------------------------------


async def test_openai_batch_lifecycle(gpt: openai.AsyncOpenAI, fake: FakeProvider) -> None:
    data = _input_file([_chat(i) for i in range(3)])
    file = await gpt.files.create(file=("input.jsonl", data), purpose="batch")
    assert (file.object, file.purpose, file.bytes, file.filename) == ("file", "batch", len(data), "input.jsonl")
    assert (await gpt.files.content(file.id)).content == data

    created = await gpt.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"ladder_draft": "d7"}
    )
    assert (created.status, created.input_file_id, created.metadata) == ("validating", file.id, {"ladder_draft": "d7"})
    running = await gpt.batches.retrieve(created.id)
    assert running.status == "in_progress" and running.output_file_id is None

    fake.batches.end(created.id)
    done = await gpt.batches.retrieve(created.id)
    assert done.status == "completed" and done.error_file_id is None and done.completed_at is not None
    assert done.request_counts is not None and (done.request_counts.total, done.request_counts.completed) == (3, 3)
    output = await _gpt_lines(gpt, done.output_file_id)
    batch_calls = fake.calls()
    sync = await gpt.chat.completions.create(**_chat(2))

    line = output["o-2"]
    assert line["id"].startswith("batch_req_") and line["error"] is None
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["choices"][0]["message"]["content"] == sync.choices[0].message.content
    assert sync.usage is not None and body["usage"]["completion_tokens"] == sync.usage.completion_tokens
    assert [(c.provider, c.status, c.batch) for c in batch_calls] == [("openai", 200, created.id)] * 3


async def test_openai_failed_items_go_to_the_error_file(gpt: openai.AsyncOpenAI, fake: FakeProvider) -> None:
    fake.batches.fail_items(GPT, 0.5, "api_error", seed=1)
    batch_id = await _gpt_batch(gpt, _input_file([_chat(i) for i in range(8)]))
    fake.batches.end(batch_id)
    batch = await gpt.batches.retrieve(batch_id)
    output, errors = await _gpt_lines(gpt, batch.output_file_id), await _gpt_lines(gpt, batch.error_file_id)

    assert len(output) + len(errors) == 8 and errors and output
    assert {line["response"]["status_code"] for line in errors.values()} == {500}
    assert all(line["response"]["body"]["error"]["type"] == "server_error" for line in errors.values())
    assert batch.request_counts is not None and batch.request_counts.failed == len(errors)
    assert sorted(c.status for c in fake.calls()) == [200] * len(output) + [500] * len(errors)
    assert fake.batches.batch(batch_id).results_reads == 2


async def test_openai_expiry_puts_unfinished_requests_in_the_error_file(
    gpt: openai.AsyncOpenAI, fake: FakeProvider
) -> None:
    batch_id = await _gpt_batch(gpt, _input_file([_chat(i) for i in range(3)]))
    fake.batches.end_partially(batch_id, 1)
    fake.batches.expire(batch_id)
    batch = await gpt.batches.retrieve(batch_id)
    output, errors = await _gpt_lines(gpt, batch.output_file_id), await _gpt_lines(gpt, batch.error_file_id)

    assert batch.status == "expired" and batch.expired_at is not None
    assert list(output) == ["o-0"]
    assert {cid: (line["response"], line["error"]["code"]) for cid, line in errors.items()} == {
        "o-1": (None, "batch_expired"),
        "o-2": (None, "batch_expired"),
    }
    assert len(fake.calls()) == 1


async def test_openai_cancel(gpt: openai.AsyncOpenAI, fake: FakeProvider) -> None:
    batch_id = await _gpt_batch(gpt, _input_file([_chat(i) for i in range(2)]))
    cancelling = await gpt.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = await gpt.batches.retrieve(batch_id)
    assert batch.status == "cancelled" and batch.output_file_id is None
    errors = await _gpt_lines(gpt, batch.error_file_id)
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    assert fake.calls() == []
    with pytest.raises(openai.BadRequestError):
        await gpt.batches.cancel(batch_id)


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (_input_file([_chat(0), _chat(1)]).replace(b"o-1", b"o-0"), "duplicate_custom_id"),
        (_input_file([_chat(0), _chat(1, model="gpt-other")]), "mismatched_model"),
        (_input_file([_chat(0)]) + b"{not json\n", "invalid_json_line"),
        (_input_file([_chat(0)]).replace(b"/v1/chat/completions", b"/v1/embeddings"), "mismatched_endpoint"),
        (_input_file([_chat(i) for i in range(3)]), "too_many_requests"),
        (_input_file([_chat(0)]) + b" " * 2000, "file_too_large"),
    ],
    ids=["duplicate", "two-models", "bad-json", "wrong-url", "too-many", "too-big"],
)
async def test_openai_batches_failing_validation(
    gpt: openai.AsyncOpenAI, fake: FakeProvider, lines: bytes, code: str
) -> None:
    fake.batches.openai_max_requests = 2
    fake.batches.openai_max_bytes = 1000
    batch_id = await _gpt_batch(gpt, lines)
    batch = await gpt.batches.retrieve(batch_id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and code in {e.code for e in batch.errors.data or []}
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    fake.batches.end()
    assert fake.calls() == []


async def test_openai_create_refuses_what_it_cannot_run(gpt: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await gpt.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    file = await gpt.files.create(file=("x.jsonl", _input_file([_chat(0)])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        await gpt.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")


async def test_openai_list_pages_newest_first(gpt: openai.AsyncOpenAI) -> None:
    ids = [await _gpt_batch(gpt, _input_file([_chat(0)]), draft=f"d{i}") for i in range(3)]
    first = await gpt.batches.list(limit=2)
    assert [b.id for b in first.data] == [ids[2], ids[1]] and first.has_more
    assert [b.id async for b in gpt.batches.list(limit=2)] == ids[::-1]
