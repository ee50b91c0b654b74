"""OpenAI Batch behind `BatchAPI`, via the official SDK: the requests go up as a JSONL file, the batch
is made from it with the draft id in its metadata, and its output and error files are streamed back.

Each line's body is the synchronous adapter's (`chat_body`), and each 200 in the output file is read
as a synchronous answer is (`completion_from`, msgspec). A request in neither file (a batch that failed
its validation has neither) is not yielded: the caller counts a missing id as expired.

The SDK retries the control calls (upload, retrieve, list, cancel, file reads) twice: they cost
nothing. Not the batch's create: one retried after a timeout can make a second batch, billed as well;
a failed create is left to the caller, whose `find` tells whether it was made after all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Container, Iterator, Sequence
from typing import Final

import httpx2
import msgspec
import openai

from worker.batch_api import BatchCanceled, BatchExpired, BatchItem, BatchRequest
from worker.openai_provider import chat_body, completion_from, status_error
from worker.provider import (
    BadRequest,
    MalformedResponse,
    ProviderError,
    Transient,
    error_for_status,
)

CONTROL_RETRIES = 2
CLOCK_SKEW_S = 60.0  # how much earlier than `since` a batch's created_at may read, clocks being clocks
LIST_PAGE = 100
ENDPOINT: Final = "/v1/chat/completions"
DRAFT_KEY = "ladder_draft"  # the batch's metadata key holding the draft id
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


class _Input(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: dict[str, object]


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    code: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail = msgspec.field(default_factory=_ErrorDetail)


class _Response(msgspec.Struct):
    status_code: int
    body: msgspec.Raw = msgspec.Raw(b"")  # read by completion_from, which calls a missing one unreadable


class _Line(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: _ErrorDetail | None = None  # set for a request the batch never ran


_line_decoder = msgspec.json.Decoder(_Line)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_encoder = msgspec.json.Encoder()


class OpenAIBatches:
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(
        self, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0, name: str = "openai"
    ) -> None:
        # None lets the SDK read OPENAI_API_KEY and OPENAI_BASE_URL itself.
        self.name = name
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=CONTROL_RETRIES, timeout=timeout
        )
        self._unretried = self._client.with_options(max_retries=0)  # the same connections, for the create

    def request_bytes(self, item: BatchRequest) -> int:
        return len(_line(item)) + 1  # its JSONL line and the newline

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        data = b"".join(_line(item) + b"\n" for item in items)
        with self._sdk_errors():
            file = await self._client.files.create(file=(f"{draft}.jsonl", data), purpose="batch")
            batch = await self._unretried.batches.create(
                input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h", metadata={DRAFT_KEY: draft}
            )
        return batch.id

    async def find(self, draft: str, size: int, since: float, known: Container[str]) -> str | None:
        """The newest batch created since `since` whose metadata names `draft`, and not known."""
        with self._sdk_errors():
            async for batch in self._client.batches.list(limit=LIST_PAGE):  # newest first
                if batch.created_at < since - CLOCK_SKEW_S:
                    break
                if (batch.metadata or {}).get(DRAFT_KEY) == draft and batch.id not in known:
                    return batch.id
        return None

    async def ended(self, batch_id: str) -> bool:
        with self._sdk_errors():
            batch = await self._client.batches.retrieve(batch_id)
        return batch.status in ENDED

    async def results(self, batch_id: str) -> AsyncIterator[BatchItem]:
        with self._sdk_errors():
            batch = await self._client.batches.retrieve(batch_id)
        if batch.status not in ENDED:
            raise BadRequest(f"{self.name}: batch {batch_id} is {batch.status}: it has no results yet")
        for file_id in (batch.output_file_id, batch.error_file_id):  # either may be absent
            if file_id:
                async for item in self._file_items(batch_id, file_id):
                    yield item

    async def cancel(self, batch_id: str) -> None:
        try:
            with self._sdk_errors():
                await self._client.batches.cancel(batch_id)
        except BadRequest:
            if not await self.ended(batch_id):  # refused because it ended meanwhile: nothing to cancel
                raise

    async def aclose(self) -> None:
        await self._client.close()

    async def _file_items(self, batch_id: str, file_id: str) -> AsyncIterator[BatchItem]:
        with self._sdk_errors():
            response = await self._client.get(
                f"/files/{file_id}/content", cast_to=httpx2.Response, stream=True, stream_cls=None
            )
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield self._item(line)
        except httpx2.HTTPError as exc:  # the connection broke mid-stream: the whole read may be retried
            raise Transient(f"{self.name}: reading the results of batch {batch_id} failed: {exc}") from exc
        finally:
            await response.aclose()

    def _item(self, text: str) -> BatchItem:
        try:
            line = _line_decoder.decode(text)
        except msgspec.DecodeError as exc:  # its custom id unknown, the line cannot be skipped: read again
            raise MalformedResponse(f"{self.name}: unreadable batch result line: {exc}") from exc
        if line.error is not None:
            return BatchItem(line.custom_id, None, self._not_run(line.error))
        if line.response is None:
            return BatchItem(line.custom_id, None, MalformedResponse(f"{self.name}: a result with no response"))
        if line.response.status_code != 200:
            return BatchItem(line.custom_id, None, self._failed(line.response))
        try:
            return BatchItem(line.custom_id, completion_from(line.response.body, self.name), None)
        except MalformedResponse as exc:
            return BatchItem(line.custom_id, None, exc)

    def _not_run(self, error: _ErrorDetail) -> ProviderError:
        if error.code == "batch_expired":
            return BatchExpired(f"{self.name}: the batch expired before this request ran")
        if error.code == "batch_cancelled":
            return BatchCanceled(f"{self.name}: the batch was cancelled before this request ran")
        return Transient(f"{self.name}: {error.code}: {error.message}")  # request_timeout, or a code not known yet

    def _failed(self, response: _Response) -> ProviderError:
        """A request answered with an error status, mapped as the synchronous call's would be."""
        try:
            detail = _error_decoder.decode(response.body).error
        except msgspec.DecodeError:
            detail = _ErrorDetail()
        code = f" ({detail.code})" if detail.code else ""  # context_length_exceeded is said in the code
        return error_for_status(response.status_code, f"{self.name} {response.status_code}: {detail.message}{code}")

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """The SDK's exceptions mapped into Ladder's classes, as the synchronous adapter maps them."""
        try:
            yield
        except openai.APIStatusError as exc:
            raise status_error(exc, self.name) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise Transient(f"{self.name}: {exc.message}") from exc
        except openai.APIResponseValidationError as exc:
            raise MalformedResponse(f"{self.name}: unreadable response: {exc.message}") from exc


def _line(item: BatchRequest) -> bytes:
    return _encoder.encode(_Input(item.custom_id, "POST", ENDPOINT, chat_body(item.request)))
