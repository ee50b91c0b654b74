"""Gemini Batch Mode with inline requests behind `BatchAPI`, via the official google-genai SDK.

Each inline request is the synchronous adapter's call (`generate_args`: the same contents and config)
with its custom id as the `key` of the request's metadata, which Gemini echoes on the request's
response; each response is read as a synchronous answer is (`completion_from`). Responses come back
in the order of the requests, so a response without the key is mapped by its place. The batch's
display name is the draft id: that is how `find` knows a batch whose submitter died before recording it.

Batch mode lives on the v1beta API while the SDK addresses the Gemini API's v1 by default, so the
client is pinned to v1beta. Google caps a batch of inline requests at 20 MB, the whole create body;
its responses come back inline in the batch itself, so `results` is one GET of the ended batch.

The SDK retries the control calls (get, list, cancel) twice: they cost nothing. Not the create: one
retried after a timeout can make a second batch, billed as well; a failed create is left to the caller,
whose `find` tells whether it was made after all.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Container, Iterator, Sequence

import httpx2
import pydantic
from google import genai
from google.genai import _common, errors, types
from google.genai import batches as sdk_batches

from worker.batch_api import BatchCanceled, BatchExpired, BatchItem, BatchRequest
from worker.gemini_provider import completion_from, generate_args, status_error, unreadable
from worker.provider import (
    BadRequest,
    Completion,
    MalformedResponse,
    ProviderError,
    Transient,
    error_for_status,
)

API_VERSION = "v1beta"  # where batch mode lives
CONTROL_RETRIES = 2
CLOCK_SKEW_S = 60.0  # how much earlier than `since` a batch's create_time may read, clocks being clocks
LIST_PAGE = 100
KEY = "key"  # the request metadata entry holding its custom id
INLINE_LIMIT = 20 * 1024 * 1024  # Google's cap on a batch of inline requests: the create's whole body
ENVELOPE_BYTES = 1024  # room for what wraps the requests: displayName, the model's path, brackets
# Google does not cap the number of inline requests, only their bytes; but every response comes back
# in one GET of the batch, so a batch is kept to what that GET can carry comfortably.
MAX_REQUESTS = 2_000
ENDED = frozenset(
    {
        types.JobState.JOB_STATE_SUCCEEDED,
        types.JobState.JOB_STATE_FAILED,
        types.JobState.JOB_STATE_CANCELLED,
        types.JobState.JOB_STATE_EXPIRED,
    }
)
# A response's error is a google.rpc.Status: its code is a gRPC code, mapped to the HTTP status a
# synchronous call failing that way answers, so that error_for_status maps both lanes alike.
_HTTP_STATUS = {
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}


class GeminiBatches:
    max_requests = MAX_REQUESTS
    max_bytes = INLINE_LIMIT - ENVELOPE_BYTES

    def __init__(
        self, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0, name: str = "gemini"
    ) -> None:
        # None lets the SDK read GOOGLE_API_KEY / GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL itself.
        self.name = name
        options = types.HttpOptions(
            base_url=base_url,
            api_version=API_VERSION,
            timeout=int(timeout * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1 + CONTROL_RETRIES),
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

    def request_bytes(self, item: BatchRequest) -> int:
        """Its element of the requests array as the SDK serializes it (json.dumps, ASCII), and ", ".
        The SDK builds the create's body itself and has no public way to show it: its own converter is
        used, so the count is exact (tests/test_gemini_batches.py pins it against the body sent)."""
        element = sdk_batches._InlinedRequest_to_mldev(self._client._api_client, _inlined(item))
        return len(json.dumps(_common.convert_to_dict(element))) + 2

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        models = {item.request.model for item in items}
        if len(models) != 1:  # the batch is made on one model's path
            raise BadRequest(f"{self.name}: a batch's requests must share one model, not {sorted(models)}")
        config = types.CreateBatchJobConfig(
            display_name=draft,
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),  # never retried
        )
        with self._sdk_errors():
            batch = await self._client.aio.batches.create(
                model=models.pop(), src=[_inlined(item) for item in items], config=config
            )
        if not batch.name:
            raise MalformedResponse(f"{self.name}: the created batch has no name")
        return batch.name

    async def find(self, draft: str, size: int, since: float, known: Container[str]) -> str | None:
        """The newest batch created since `since` whose display name is `draft`, and not known. The
        list's order is not documented, so every page is read: this runs only after a crash."""
        found: list[tuple[float, str]] = []
        with self._sdk_errors():
            pager = await self._client.aio.batches.list(config=types.ListBatchJobsConfig(page_size=LIST_PAGE))
            async for batch in pager:
                created = batch.create_time.timestamp() if batch.create_time else None
                if batch.display_name != draft or not batch.name or batch.name in known or created is None:
                    continue
                if created >= since - CLOCK_SKEW_S:
                    found.append((created, batch.name))
        return max(found)[1] if found else None

    async def ended(self, batch_id: str) -> bool:
        return (await self._get(batch_id)).state in ENDED

    async def results(self, batch_id: str) -> AsyncIterator[BatchItem]:
        batch = await self._get(batch_id)
        if batch.state not in ENDED:
            state = batch.state.value if batch.state else "of no known state"
            raise BadRequest(f"{self.name}: batch {batch_id} is {state}: it has no results yet")
        dest = batch.dest
        if dest is not None and dest.inlined_responses is None and dest.file_name:
            # Only inline results are read: a batch whose results went to a file stays unsettled, and says why.
            raise BadRequest(f"{self.name}: batch {batch_id} wrote its results to {dest.file_name}, not inline")
        for index, response in enumerate((dest.inlined_responses or []) if dest else []):
            key = (response.metadata or {}).get(KEY) or f"{batch.display_name}-{index}"
            yield BatchItem(key, *self._outcome(response, batch.state))

    async def cancel(self, batch_id: str) -> None:
        try:
            with self._sdk_errors():
                await self._client.aio.batches.cancel(name=batch_id)
        except BadRequest:
            if not await self.ended(batch_id):  # refused because it ended meanwhile: nothing to cancel
                raise

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    async def _get(self, batch_id: str) -> types.BatchJob:
        with self._sdk_errors():
            return await self._client.aio.batches.get(name=batch_id)

    def _outcome(
        self, response: types.InlinedResponse, state: types.JobState | None
    ) -> tuple[Completion | None, ProviderError | None]:
        if response.error is not None:
            code = response.error.code or 2
            status = code if 100 <= code < 600 else _HTTP_STATUS.get(code, 500)
            return None, error_for_status(status, f"{self.name} {code}: {response.error.message}")
        if response.response is None:
            return None, self._not_run(state)
        try:
            return completion_from(response.response, self.name), None
        except MalformedResponse as exc:
            return None, exc

    def _not_run(self, state: types.JobState | None) -> ProviderError:
        if state == types.JobState.JOB_STATE_EXPIRED:
            return BatchExpired(f"{self.name}: the batch expired before this request ran")
        if state == types.JobState.JOB_STATE_CANCELLED:
            return BatchCanceled(f"{self.name}: the batch was cancelled before this request ran")
        return MalformedResponse(f"{self.name}: a result with neither response nor error")

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """The SDK's exceptions mapped into Ladder's classes, as the synchronous adapter maps them."""
        try:
            yield
        except errors.APIError as exc:
            raise status_error(exc, self.name) from exc
        except (TimeoutError, httpx2.TransportError, OSError) as exc:  # connection, timeout
            raise Transient(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:  # the SDK reads the 200's body itself
            raise MalformedResponse(f"{self.name}: unreadable response: {unreadable(exc)}") from exc


def _inlined(item: BatchRequest) -> types.InlinedRequest:
    contents, config = generate_args(item.request)
    return types.InlinedRequest(
        model=item.request.model, contents=contents, config=config, metadata={KEY: item.custom_id}
    )
