"""The one seam between Ladder and a model provider.

Each SDK lives in its own module behind `Provider`; each maps its SDK's exceptions, once, into
the few classes below, so nothing above this layer imports an SDK.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Protocol

import msgspec

from ladder.messages import Message
from ladder.redact import Redactor, scrub_exception


class CompletionRequest(msgspec.Struct, frozen=True):
    model: str
    messages: list[Message]
    max_output_tokens: int
    json_mode: bool = False


class Completion(msgspec.Struct, frozen=True):
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str  # normalized: "stop" | "length" | "refused" | "other"
    # What the provider's rate-limit headers say is left, where it sends them.
    requests_left: int | None = None
    input_tokens_left: int | None = None
    output_tokens_left: int | None = None
    tokens_left: int | None = None  # input and output together, as OpenAI counts them


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class ProviderError(Exception):
    """A failed provider call. `error_class` is what lands in the outcome row.

    Its message is masked (ladder/redact.py) as it is made: providers and proxies echo keys in their
    error bodies, and this message goes to outcome rows, dead letters, job records and logs. The SDK
    exception being handled, chained to this one as its cause, is masked in place for the same
    reason: a traceback prints it."""

    error_class = "error"

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        mask = Redactor.from_env()
        handled = sys.exc_info()[1]
        if handled is not None:
            scrub_exception(handled, mask)
        super().__init__(mask(message))
        self.status = status
        self.retry_after = retry_after


class RateLimited(ProviderError):
    error_class = "rate_limited"


class Overloaded(ProviderError):
    error_class = "overloaded"


class Transient(ProviderError):
    """5xx, timeouts and connection failures: the same call may succeed later."""

    error_class = "transient"


class MalformedResponse(Transient):
    """A 200 whose body is not the provider's answer (not JSON, fields missing or of the wrong type):
    a proxy or provider fault, so the model cools down and the next candidate is asked. The answer
    cannot be read, so neither can its usage: the row has no tokens and no cost."""

    error_class = "malformed"


class ContextTooLong(ProviderError):
    """The prompt does not fit this model's window: another model may take it (not a malformed job)."""

    error_class = "context_too_long"


CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
)


class TimedOut(Transient):
    """The job's time budget on this tier ran out (waiting for a lane, retries, a slow call)."""

    error_class = "timeout"


class BadRequest(ProviderError):
    """The request itself is wrong (400, 404, 422): retrying it unchanged cannot help."""

    error_class = "bad_request"


class OverBudget(BadRequest):
    """The customer's monthly budget cannot take this call (worker/budget.py). A BadRequest: the job
    is dead-lettered at once, never escalated to a dearer tier."""

    error_class = "over_budget"


class Fatal(ProviderError):
    """Authentication, permission or account problems: stop, a person must act."""

    error_class = "fatal"


class BadAnswer(ProviderError):
    """The call succeeded, but its answer is not kept (policies/answer_checks.py says why). The
    completion is carried along: its tokens were billed and its row must say so."""

    def __init__(self, error_class: str, message: str, completion: Completion) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.completion = completion


class SpendLimited(Fatal):
    """The account's spend limit or quota is reached: never retried; its lane stops until a person acts."""

    error_class = "spend_limit"


SPEND_MARKERS = ("insufficient_quota", "spend limit", "spending limit", "usage limit", "credit balance", "billing")


class Provider(Protocol):
    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def aclose(self) -> None: ...


def error_for_status(status: int, message: str, retry_after: float | None = None) -> ProviderError:
    """Map an HTTP status to Ladder's classes; shared by every adapter so they agree."""
    if status in (400, 402, 403, 429) and any(m in message.lower() for m in SPEND_MARKERS):
        return SpendLimited(message, status=status)
    if status in (400, 413) and any(m in message.lower() for m in CONTEXT_MARKERS):
        return ContextTooLong(message, status=status)
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status in (503, 529):
        return Overloaded(message, status=status, retry_after=retry_after)
    if status in (401, 403):
        return Fatal(message, status=status)
    if 400 <= status < 500 and status != 408:
        return BadRequest(message, status=status)
    return Transient(message, status=status, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a retry-after header, given as seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
