"""The sink: outcome events from the Redis Stream into ClickHouse, in batches, acked after insert.

It reads with a consumer group. Its own unacked entries (from a crash) are read first, and
entries another consumer left idle are claimed, so nothing is lost; an entry is acked and deleted
only after the insert returned, and a re-delivered event cannot make a second row (see clickhouse).
A batch whose insert has begun is noted in Redis until its ack, so that whoever sends it again
sends it exactly as it was and ClickHouse's deduplication token recognises it (`_recover`).

ClickHouse or Redis away (refused, timed out, a server error) does not end the sink: it logs one
line saying which and why, waits (doubling from RETRY_FIRST_S up to RETRY_MAX_S) and starts again
from its own unacked entries, so what it had read waits in its pending list and what it had not
waits in the stream. The workers stop claiming jobs while the stream is at its bound
(worker/backlog.py). A stop (SIGTERM) during the wait ends the sink at once, nothing acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec
import structlog
from clickhouse_connect.driver.exceptions import ClickHouseError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ladder.keys import Keys
from ladder.messages import OUTCOME_DECODER, SCORE_DECODER, Outcome, Score
from ladder.redact import redact
from worker.budget import BudgetBook
from worker.clickhouse import ClickHouse
from worker.metrics import Metrics

log = structlog.get_logger("ladder.sink")

# Defaults of `ladder sink --claim-after / --claim-every`: entries another consumer has held this
# long unacked are taken over. A running sink also looks for a dead sink's entries now and then, not
# only when it starts: a replacement pod starts within seconds, before those entries have been idle
# long enough to claim.
CLAIM_IDLE_MS = 60_000
CLAIM_EVERY_S = 30.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0

# What waiting can cure. NOGROUP: Redis came back empty (no persistence); the group is made again.
# ReadOnlyError: a replica not yet promoted. A ClickHouse error that will not cure itself (a schema
# that does not fit) is retried all the same: dropping outcomes is worse, and the stream's bound
# and alert (worker/backlog.py, deploy/base/prometheus-rules.yaml) bring a person to it.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ConnectionError)

# The sink says an outage in one line per try; these client libraries' own warnings about each failed
# connection (clickhouse-connect's, and urllib3's retry under it) would say it twice more.
CLIENT_LOGGERS = ("clickhouse_connect.driver._backend.http_sync", "urllib3.connectionpool")


Entry = tuple[Any, dict[bytes, bytes] | None]  # (stream id, fields); fields None: deleted while pending


class BatchNote(msgspec.Struct, array_like=True):
    """What a batch sent to ClickHouse was, kept in Redis from before its insert until its ack: its
    stream entries in order, and the events left out as already stored."""

    ids: list[str]
    stored: list[str] = []


NOTE_ENCODER = msgspec.msgpack.Encoder()
NOTE_DECODER = msgspec.msgpack.Decoder(BatchNote)


@dataclass
class SinkStats:
    inserted: int = 0
    scores: int = 0
    batches: int = 0
    malformed: int = 0
    replayed: int = 0  # events of a replayed batch found already stored, not inserted again
    claimed: int = 0  # entries taken over from another consumer that left them unacked
    retries: int = 0  # waits for ClickHouse or Redis to come back


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
        claim_idle_ms: int | None = None,
        claim_every_s: float | None = None,
        where: str = "",
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
        self._claim_idle_ms = CLAIM_IDLE_MS if claim_idle_ms is None else claim_idle_ms
        self._claim_every_s = CLAIM_EVERY_S if claim_every_s is None else claim_every_s
        self._where = where  # ClickHouse's URL with its password masked, for the log line of an outage
        self._prepared = False  # schema migrated and budgets reconciled (again after Redis was away)
        self._notes = f"{keys.outcomes}:batches"  # hash: a batch's first entry id -> its BatchNote
        self._down_since: float | None = None

    async def setup(self) -> None:
        if not self._prepared:
            await asyncio.to_thread(self._ch.migrate)
            if self._budgets is not None:
                await self._reconcile_budgets(self._budgets)
            self._prepared = True
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
        """Move events until stopped; with burst, until the stream has nothing new or pending.
        ClickHouse or Redis away: wait and start again (burst too), until they are back or `stop`."""
        stop = stop or asyncio.Event()
        delay = RETRY_FIRST_S
        while not stop.is_set():
            try:
                await self._move(burst, stop)
                return self.stats
            except Exception as e:
                away = outage(e)
                if away is None:
                    raise
                if self._down_since is None:  # a new outage, not the same one again
                    delay = RETRY_FIRST_S
                if away == "redis":
                    self._prepared = False  # it may be back empty: reconcile the budgets again
                self._wait_for(away, e, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_S)
        return self.stats

    def _wait_for(self, what: str, error: BaseException, delay: float) -> None:
        """One line per failed try: what is away, why (credentials masked), when the next try is."""
        self.stats.retries += 1
        self._counters.retry(what)
        if self._down_since is None:
            self._down_since = time.monotonic()
        where = {"clickhouse": self._where} if what == "clickhouse" and self._where else {}
        log.warning(
            f"{what} unavailable: outcomes wait in the stream, unacked", **where, error=describe(error),
            retry_in_s=delay, down_s=round(time.monotonic() - self._down_since, 1),
        )  # fmt: skip

    def _back(self) -> None:
        if self._down_since is not None:
            down_s = round(time.monotonic() - self._down_since, 1)
            log.info("clickhouse and redis answer again: moving outcomes", down_s=down_s)
            self._down_since = None

    async def _move(self, burst: bool, stop: asyncio.Event) -> None:
        await self.setup()
        await self._recover(await self._own_pending())
        self._back()
        await self._claim_stale()
        # One batch is inserted (in a thread: chdb and the HTTP client release the GIL) while the
        # next is read from the stream; a batch is acked only after its own insert returned.
        inserting: asyncio.Task[None] | None = None
        next_claim = time.monotonic() + self._claim_every_s
        try:
            while not stop.is_set():
                entries = await self._read(block=not burst)
                if inserting is not None:
                    await inserting
                    inserting = None
                if time.monotonic() >= next_claim:
                    await self._claim_stale()
                    next_claim = time.monotonic() + self._claim_every_s
                if entries:
                    inserting = asyncio.create_task(self._insert(entries))
                elif burst and await self._pending() == 0:
                    break
        except BaseException:
            if inserting is not None:  # its entries are acked only if it succeeded
                with contextlib.suppress(Exception):  # a second failure of the same outage, said once
                    await inserting
            raise
        if inserting is not None:
            await inserting

    async def _own_pending(self) -> list[Entry]:
        """Every entry delivered to this consumer and not acked: left by an earlier run under the
        same name, or by a failed insert of this one."""
        entries: list[Entry] = []
        start: Any = "0"
        while True:
            resp = await self._redis.xreadgroup(
                self._keys.sink_group, self.consumer, {self._keys.outcomes: start}, count=self._batch_size
            )
            got = resp[0][1] if resp else []
            if not got:
                return entries
            entries.extend(got)
            start = got[-1][0]

    async def _read(self, block: bool) -> list[Entry]:
        """Up to a batch of new entries, filled for up to `flush_interval` seconds: ClickHouse wants
        few large inserts, not one per event."""
        entries: list[Entry] = []
        deadline = time.monotonic() + self._flush_interval
        while len(entries) < self._batch_size:
            wait_ms = int((deadline - time.monotonic()) * 1000)
            resp = await self._redis.xreadgroup(
                self._keys.sink_group,
                self.consumer,
                {self._keys.outcomes: ">"},
                count=self._batch_size - len(entries),
                block=max(wait_ms, 1) if block else None,
            )
            got = resp[0][1] if resp else []
            entries.extend(got)
            if not got or wait_ms <= 0:
                break
        return entries

    async def _claim_stale(self) -> None:
        """Take over what other consumers have held unacked for claim_idle_ms (a sink that died)."""
        claimed: list[Entry] = []
        start: Any = "0-0"
        while True:
            resp = await self._redis.xautoclaim(
                self._keys.outcomes, self._keys.sink_group, self.consumer, self._claim_idle_ms, start, count=1000
            )
            start = resp[0]
            claimed.extend(resp[1])
            if start in (b"0-0", "0-0"):
                break
        if claimed:
            self.stats.claimed += len(claimed)
            log.info("claimed entries another consumer left unacked", entries=len(claimed))
            await self._recover(claimed)

    async def _recover(self, entries: list[Entry]) -> None:
        """Entries read by some sink (a dead one, or this one before a failure) and not acked.

        Those of a batch whose insert had begun (it has a note) are sent again exactly as that batch
        was, same rows in the same order, so ClickHouse's deduplication token drops whatever part of
        it was stored: the table's rows, the rollup's, or both (a sink that dies mid-insert, or an
        insert that fails midway, can leave one without the other, and no lookup by event id can
        tell what a rollup counted). The others never reached ClickHouse from that batch; they are
        inserted as replays, checked against what is stored.
        """
        if not entries:
            return
        by_id = {_text(entry_id): (entry_id, fields) for entry_id, fields in entries}
        notes: dict[bytes, bytes] = await self._redis.hgetall(self._notes)  # type: ignore[misc]
        for field, raw in notes.items():
            note = NOTE_DECODER.decode(raw)
            present = [by_id[i] for i in note.ids if i in by_id]
            if len(present) == len(note.ids):
                for i in note.ids:
                    del by_id[i]
                await self._insert(present, note=(_text(field), note))
            elif present:  # another sink claimed the rest of it at the same moment
                await self._redis.hdel(self._notes, _text(field))  # type: ignore[misc]
        rest = list(by_id.values())
        for at in range(0, len(rest), self._batch_size):
            await self._insert(rest[at : at + self._batch_size], replay=True)

    async def _pending(self) -> int:
        info = await self._redis.xpending(self._keys.outcomes, self._keys.sink_group)
        return int(info["pending"])

    async def _insert(
        self, entries: list[Entry], replay: bool = False, note: tuple[str, BatchNote] | None = None
    ) -> None:
        """Insert, then ack and delete, with the batch's note written before the insert and deleted
        with the ack. A replay may already be stored, perhaps as part of a differently composed batch
        that the deduplication token cannot recognise: those events are looked up and dropped."""
        ids = [entry_id for entry_id, _ in entries]
        pipe = self._redis.pipeline(transaction=True)
        outcomes, scores = self._decode(entries, pipe)
        if note is not None:
            field, batch = note
            for event_id in batch.stored:
                outcomes.pop(event_id, None)
        else:
            stored: set[str] = set()
            if outcomes and replay:
                stored = await asyncio.to_thread(self._ch.stored_event_ids, list(outcomes.values()))
                for event_id in stored:
                    del outcomes[event_id]
                self.stats.replayed += len(stored)
            field = _text(ids[0])
            if outcomes:
                batch = BatchNote([_text(i) for i in ids], sorted(stored))
                await self._redis.hset(self._notes, mapping={field: NOTE_ENCODER.encode(batch)})  # type: ignore[misc]
        if outcomes:
            await asyncio.to_thread(self._ch.insert_outcomes, list(outcomes.values()))
        if scores:
            await asyncio.to_thread(self._ch.insert_scores, list(scores.values()))
        pipe.xack(self._keys.outcomes, self._keys.sink_group, *ids)
        pipe.xdel(self._keys.outcomes, *ids)
        pipe.hdel(self._notes, field)
        await pipe.execute()
        self.stats.inserted += len(outcomes)
        self.stats.scores += len(scores)
        self.stats.batches += 1
        self._counters.batch(len(outcomes))
        log.debug("batch inserted", rows=len(outcomes))

    def _decode(self, entries: list[Entry], pipe: Any) -> tuple[dict[str, Outcome], dict[str, Score]]:
        """The batch's outcomes and scores by event id, in entry order; what cannot be decoded is
        set aside in `pipe` (the transaction that acks the batch)."""
        outcomes: dict[str, Outcome] = {}
        scores: dict[str, Score] = {}
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream while pending: nothing left to insert
                continue
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
        return outcomes, scores


def quiet_client_logs() -> None:
    """At a sink's start-up: the client libraries' warnings about failed connections are left out."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def outage(error: Exception) -> str | None:
    """What is away when waiting may cure `error`: "clickhouse" or "redis"; None for anything else."""
    if isinstance(error, ClickHouseError):
        return "clickhouse"
    if isinstance(error, REDIS_ERRORS) or (isinstance(error, ResponseError) and "NOGROUP" in str(error)):
        return "redis"
    return None


def describe(error: BaseException) -> str:
    """An exception as one line for a log: its class, then its text with secrets and URL passwords
    masked, cut at 400 characters (a connection error names its cause near the end)."""
    text = " ".join(redact(str(error)).split())
    return f"{type(error).__name__}: {text[:400]}" if text else type(error).__name__


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
