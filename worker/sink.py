"""The sink: outcome events from the Redis Stream into ClickHouse, in batches, acked after insert.

It reads with a consumer group. Its own unacked entries (from a crash) are read first, and
entries another consumer left idle are claimed, so nothing is lost; an entry is acked and deleted
only after the insert returned, and a re-delivered event cannot make a second row (see clickhouse).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ladder.keys import Keys
from ladder.messages import OUTCOME_DECODER, SCORE_DECODER, Outcome, Score
from worker.budget import BudgetBook
from worker.clickhouse import ClickHouse
from worker.metrics import Metrics

log = structlog.get_logger("ladder.sink")

CLAIM_IDLE_MS = 60_000
# A running sink also looks for a dead sink's entries now and then, not only when it starts: a
# replacement pod starts within seconds, before those entries have been idle long enough to claim.
CLAIM_EVERY_S = 30.0


@dataclass
class SinkStats:
    inserted: int = 0
    scores: int = 0
    batches: int = 0
    malformed: int = 0
    replayed: int = 0  # events of a replayed batch found already stored, not inserted again


class Sink:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        clickhouse: ClickHouse,
        *,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        consumer: str | None = None,
        budgets: BudgetBook | None = None,
        billed_shadow: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ch = clickhouse
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._budgets = budgets
        self._billed_shadow = billed_shadow  # shadow.bill_customer: shadow calls count in the budgets
        self.stats = SinkStats()
        self._counters = (metrics or Metrics()).sink()

    async def setup(self) -> None:
        await asyncio.to_thread(self._ch.migrate)
        if self._budgets is not None:
            await self._reconcile_budgets(self._budgets)
        try:
            await self._redis.xgroup_create(self._keys.outcomes, self._keys.sink_group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _reconcile_budgets(self, budgets: BudgetBook) -> None:
        """The sink is the one process that opens ClickHouse, so it brings the budgets' month-to-date
        spend in Redis up to ClickHouse's on start (Redis may have restarted without persistence)."""
        month = budgets.month()
        start = date.fromisoformat(f"{month}-01")
        spent = await asyncio.to_thread(self._ch.month_spend, start, self._billed_shadow)
        await budgets.reconcile(month, spent)

    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> SinkStats:
        """Move events until stopped; with burst, until the stream has nothing new or pending."""
        await self.setup()
        await self._replay()
        await self._claim_stale()
        # One batch is inserted (in a thread: chdb and the HTTP client release the GIL) while the
        # next is read from the stream; a batch is acked only after its own insert returned.
        inserting: asyncio.Task[None] | None = None
        next_claim = time.monotonic() + CLAIM_EVERY_S
        try:
            while stop is None or not stop.is_set():
                entries = await self._read(">", block=not burst)
                if inserting is not None:
                    await inserting
                    inserting = None
                if time.monotonic() >= next_claim:
                    await self._claim_stale()
                    next_claim = time.monotonic() + CLAIM_EVERY_S
                if entries:
                    inserting = asyncio.create_task(self._insert(entries))
                elif burst and await self._pending() == 0:
                    break
        finally:
            if inserting is not None:
                await inserting
        return self.stats

    async def _replay(self) -> None:
        """Our own entries left unacked by an earlier run, a batch at a time."""
        while entries := await self._read("0", block=False):
            await self._insert(entries, replay=True)

    async def _read(self, start: str, block: bool) -> list[tuple[Any, dict[bytes, bytes]]]:
        """Up to a batch of entries. Reading new entries (`>`), a batch is filled for up to
        `flush_interval` seconds: ClickHouse wants few large inserts, not one per event."""
        entries: list[tuple[Any, dict[bytes, bytes]]] = []
        deadline = time.monotonic() + self._flush_interval
        while len(entries) < self._batch_size:
            wait_ms = int((deadline - time.monotonic()) * 1000)
            resp = await self._redis.xreadgroup(
                self._keys.sink_group,
                self.consumer,
                {self._keys.outcomes: start},
                count=self._batch_size - len(entries),
                block=max(wait_ms, 1) if block else None,
            )
            got = resp[0][1] if resp else []
            entries.extend(got)
            if start != ">" or not got or wait_ms <= 0:
                break
        return entries

    async def _claim_stale(self) -> None:
        start = "0-0"
        while True:
            resp = await self._redis.xautoclaim(
                self._keys.outcomes, self._keys.sink_group, self.consumer, CLAIM_IDLE_MS, start, count=1000
            )
            start, entries = resp[0], resp[1]
            if entries:
                await self._insert(entries, replay=True)
            if start in (b"0-0", "0-0"):
                return

    async def _pending(self) -> int:
        info = await self._redis.xpending(self._keys.outcomes, self._keys.sink_group)
        return int(info["pending"])

    async def _insert(self, entries: list[tuple[Any, dict[bytes, bytes]]], replay: bool = False) -> None:
        """Insert, then ack and delete. A replay (our own unacked entries, or another consumer's
        claimed ones) may already be stored, perhaps as part of a differently composed batch that
        the deduplication token cannot recognise: those events are looked up and dropped."""
        outcomes: dict[str, Outcome] = {}
        scores: dict[str, Score] = {}
        ids = [entry_id for entry_id, _ in entries]
        pipe = self._redis.pipeline(transaction=True)
        for entry_id, fields in entries:
            try:
                if b"s" in fields:  # a score travels the same stream, so it is acked by the same rules
                    score = SCORE_DECODER.decode(fields[b"s"])
                    scores[score.event_id] = score
                    continue
                outcome = OUTCOME_DECODER.decode(fields[b"e"])
            except (KeyError, msgspec.DecodeError) as e:
                self.stats.malformed += 1
                self._counters.malformed()
                log.error("malformed event set aside", entry=str(entry_id), error=str(e))
                aside: dict[Any, Any] = {**fields, b"reason": str(e).encode()}
                pipe.xadd(self._keys.malformed_outcomes, aside)
                continue
            outcomes[outcome.event_id] = outcome  # a repeat inside one batch is one row
        if outcomes and replay:
            stored = await asyncio.to_thread(self._ch.stored_event_ids, list(outcomes.values()))
            for event_id in stored:
                del outcomes[event_id]
            self.stats.replayed += len(stored)
        if outcomes:
            await asyncio.to_thread(self._ch.insert_outcomes, list(outcomes.values()))
        if scores:
            await asyncio.to_thread(self._ch.insert_scores, list(scores.values()))
        pipe.xack(self._keys.outcomes, self._keys.sink_group, *ids)
        pipe.xdel(self._keys.outcomes, *ids)
        await pipe.execute()
        self.stats.inserted += len(outcomes)
        self.stats.scores += len(scores)
        self.stats.batches += 1
        self._counters.batch(len(outcomes))
        log.debug("batch inserted", rows=len(outcomes))
