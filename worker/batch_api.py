"""The one seam between Ladder and a provider's batch API (Anthropic Message Batches, OpenAI Batch,
Gemini batch mode).

Each SDK's batch endpoints live in their own module behind `BatchAPI`, as the synchronous calls do
behind `worker.provider.Provider`; each maps its SDK's exceptions into `worker.provider`'s classes,
and each item's result into a `BatchItem`, so nothing above this layer imports an SDK.

A batch is known to Ladder by its draft id (worker/batch_store.py), made before the provider is asked,
and to the provider by the id `submit` returns. Each request's custom id is the draft id and the
request's index (Gemini: the request's metadata key), so results map back whatever order they come in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Container, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from worker.provider import Completion, CompletionRequest, ProviderError


class BatchRequest(msgspec.Struct, frozen=True):
    custom_id: str  # "<draft id>-<index>": letters, digits, '-' and '_' only, at most 64 characters
    request: CompletionRequest


class BatchExpired(ProviderError):
    """The provider's window ended before this request was answered: not billed, not the model's fault."""

    error_class = "batch_expired"


class BatchCanceled(ProviderError):
    """The batch was canceled (by Ladder, past its own deadline, or by a person) before this request ran."""

    error_class = "batch_canceled"


@dataclass(frozen=True)
class BatchItem:
    """One request's result: its completion, or the error it ended with (errored requests mapped as a
    synchronous call's status would be; expired and canceled requests as BatchExpired, BatchCanceled)."""

    custom_id: str
    completion: Completion | None
    error: ProviderError | None


class BatchAPI(Protocol):
    name: str
    max_requests: int  # the provider's own limits on one batch
    max_bytes: int

    def request_bytes(self, item: BatchRequest) -> int:
        """What the request adds to the batch's body (the JSONL line, or the JSON element)."""
        ...

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        """Create the batch; returns the provider's batch id."""
        ...

    async def find(self, draft: str, size: int, since: float, known: Container[str]) -> str | None:
        """The id of a batch created for `draft` (of `size` requests, at or after unix time `since`,
        not among `known` ids) by a submitter that died before recording it; None if there is none."""
        ...

    async def ended(self, batch_id: str) -> bool:
        """Whether the batch has ended (every request answered, errored, expired or canceled)."""
        ...

    def results(self, batch_id: str) -> AsyncIterator[BatchItem]:
        """Every request's result of an ended batch, in any order; may be read any number of times."""
        ...

    async def cancel(self, batch_id: str) -> None: ...

    async def aclose(self) -> None: ...
