"""Anthropic Message Batches behind `BatchAPI`, via the official SDK.

Each request's params are the synchronous adapter's body (`message_body`), and each succeeded result's
message is read as a synchronous answer is (`completion_from`, msgspec), so both lanes agree on what
was asked and what came back. The batch's body is encoded once, with msgspec, and sent through the
SDK's client as it is: `request_bytes` counts exactly what each request adds, and a 256 MB body is not
copied through the SDK's request preparation. Results are streamed from `results_url` line by line.

The SDK retries the control calls (retrieve, list, cancel, results) twice: they cost nothing. Not the
create: a create retried after a timeout can make a second batch, billed as well; a failed create is
left to the caller, whose `find` tells whether it was made after all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Container, Iterator, Sequence

import anthropic
import httpx2
import msgspec
from anthropic.types.messages import MessageBatch

from worker.anthropic_provider import completion_from, message_body, status_error
from worker.batch_api import BatchCanceled, BatchExpired, BatchItem, BatchRequest
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
# A result's error type -> the status a synchronous call failing that way answers, so that
# error_for_status maps both lanes alike (context and spend markers included).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "billing_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _ErrorResponse(msgspec.Struct):
    error: _ErrorDetail = msgspec.field(default_factory=_ErrorDetail)


class _Result(msgspec.Struct):
    type: str
    message: msgspec.Raw = msgspec.Raw(b"")  # read by completion_from, which calls a missing one unreadable
    error: _ErrorResponse | None = None


class _Line(msgspec.Struct):
    custom_id: str
    result: _Result


class _Entry(msgspec.Struct):
    custom_id: str
    params: dict[str, object]


_line_decoder = msgspec.json.Decoder(_Line)
_encoder = msgspec.json.Encoder()


class AnthropicBatches:
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(
        self, api_key: str | None = None, base_url: str | None = None, timeout: float = 60.0, name: str = "anthropic"
    ) -> None:
        # None lets the SDK read ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself.
        self.name = name
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=CONTROL_RETRIES, timeout=timeout
        )

    def request_bytes(self, item: BatchRequest) -> int:
        return len(_entry(item)) + 1  # its element of the requests array, and a comma

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        body = b'{"requests":[' + b",".join(_entry(item) for item in items) + b"]}"
        with self._sdk_errors():
            batch = await self._client.post(
                "/v1/messages/batches", content=body, cast_to=MessageBatch, options={"max_retries": 0}
            )
        return batch.id

    async def find(self, draft: str, size: int, since: float, known: Container[str]) -> str | None:
        """Anthropic batches carry no metadata: a batch created since `since`, not known, of `size`
        requests is the draft's only when it is the one such batch."""
        found: list[str] = []
        with self._sdk_errors():
            async for batch in self._client.messages.batches.list(limit=LIST_PAGE):  # newest first
                if batch.created_at.timestamp() < since - CLOCK_SKEW_S:
                    break
                counts = batch.request_counts
                total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
                if total == size and batch.id not in known:
                    found.append(batch.id)
        return found[0] if len(found) == 1 else None

    async def ended(self, batch_id: str) -> bool:
        with self._sdk_errors():
            batch = await self._client.messages.batches.retrieve(batch_id)
        return batch.processing_status == "ended"

    async def results(self, batch_id: str) -> AsyncIterator[BatchItem]:
        with self._sdk_errors():
            batch = await self._client.messages.batches.retrieve(batch_id)
            if batch.results_url is None:
                raise BadRequest(f"{self.name}: batch {batch_id} has not ended: it has no results yet")
            response = await self._client.get(
                batch.results_url,
                cast_to=httpx2.Response,
                options={"headers": {"accept": "application/binary"}},
                stream=True,
                stream_cls=None,
            )
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield self._item(line)
        except httpx2.HTTPError as exc:  # the connection broke mid-stream: the whole read may be retried
            raise Transient(f"{self.name}: reading the results of batch {batch_id} failed: {exc}") from exc
        finally:
            await response.aclose()

    async def cancel(self, batch_id: str) -> None:
        try:
            with self._sdk_errors():
                await self._client.messages.batches.cancel(batch_id)
        except BadRequest:
            if not await self.ended(batch_id):  # refused because it ended meanwhile: nothing to cancel
                raise

    async def aclose(self) -> None:
        await self._client.close()

    def _item(self, text: str) -> BatchItem:
        try:
            line = _line_decoder.decode(text)
        except msgspec.DecodeError as exc:  # its custom id unknown, the line cannot be skipped: read again
            raise MalformedResponse(f"{self.name}: unreadable batch result line: {exc}") from exc
        result = line.result
        if result.type != "succeeded":
            return BatchItem(line.custom_id, None, self._error(result))
        try:
            return BatchItem(line.custom_id, completion_from(result.message), None)
        except MalformedResponse as exc:
            return BatchItem(line.custom_id, None, exc)

    def _error(self, result: _Result) -> ProviderError:
        if result.type == "errored":
            detail = result.error.error if result.error is not None else _ErrorDetail()
            status = _ERROR_STATUS.get(detail.type, 500)
            return error_for_status(status, f"{self.name} {detail.type}: {detail.message}")
        if result.type == "expired":
            return BatchExpired(f"{self.name}: the batch expired before this request ran")
        if result.type == "canceled":
            return BatchCanceled(f"{self.name}: the batch was canceled before this request ran")
        return MalformedResponse(f"{self.name}: unknown batch result type {result.type!r}")

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """The SDK's exceptions mapped into Ladder's classes, as the synchronous adapter maps them."""
        try:
            yield
        except anthropic.APIStatusError as exc:
            raise status_error(exc, self.name) from exc
        except anthropic.APIConnectionError as exc:  # APITimeoutError included
            raise Transient(f"{self.name}: {exc.message}") from exc
        except anthropic.APIResponseValidationError as exc:
            raise MalformedResponse(f"{self.name}: unreadable response: {exc.message}") from exc


def _entry(item: BatchRequest) -> bytes:
    return _encoder.encode(_Entry(item.custom_id, message_body(item.request)))
