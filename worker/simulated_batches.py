"""The batch API of the simulated provider (embedded demo, no API key): a batch ends as soon as it is
submitted, each request answered by `SimulatedProvider` as a synchronous call would be.

Its batches live in this process's memory: a lane process restarted mid-batch finds none of them,
and their jobs go to the sync lane (the simulated answers are not real anyway).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Container, Sequence

from worker.batch_api import BatchItem, BatchRequest
from worker.provider import ProviderError, Transient
from worker.simulated_provider import SimulatedProvider


class SimulatedBatches:
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, provider: SimulatedProvider) -> None:
        self.name = provider.name
        self._provider = provider
        self._batches: dict[str, list[BatchRequest]] = {}
        self._ids = itertools.count(1)

    def request_bytes(self, item: BatchRequest) -> int:
        return sum(len(m.content.encode()) for m in item.request.messages) + 200

    async def submit(self, items: Sequence[BatchRequest], draft: str) -> str:
        batch_id = f"simbatch_{next(self._ids)}_{draft}"
        self._batches[batch_id] = list(items)
        return batch_id

    async def find(self, draft: str, size: int, since: float, known: Container[str]) -> str | None:
        return next((b for b in self._batches if b.endswith(f"_{draft}") and b not in known), None)

    async def ended(self, batch_id: str) -> bool:
        return True

    async def results(self, batch_id: str) -> AsyncIterator[BatchItem]:
        for item in self._batches.get(batch_id, []):
            try:
                completion = await self._provider.complete(item.request)
            except ProviderError as error:
                yield BatchItem(item.custom_id, None, error)
            else:
                yield BatchItem(item.custom_id, completion, None)

    async def cancel(self, batch_id: str) -> None:
        if batch_id not in self._batches:
            raise Transient(f"simulated batch {batch_id} is not known to this process")

    async def aclose(self) -> None:
        self._batches.clear()
