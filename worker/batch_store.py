"""The batch lane's state in Redis: pending jobs, each batch's record and requests, and the lease.

Nothing lives only in memory, so the lane process can die anywhere and its successor carries on:

- a tier's batch-lane jobs wait on its pending list (ladder/queueing.py pushes them there);
- `draft` moves up to N of them, in one Lua call, into a new batch's request hash (index -> task)
  and writes the batch's record as "drafted" before any provider is asked;
- the record turns "submitted" with the provider's batch id; a draft found still "drafted" after a
  crash is looked up at the provider (BatchAPI.find) before it is sent again;
- each request settles through a transaction guarded by its own settled mark (worker/settle.py),
  so results read again settle nothing twice; the record turns "done" when every index is settled.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import ENCODER, LANE_BATCH_DECODER, TIER_TASK_DECODER, LaneBatch, TierTask
from ladder.queueing import add_to_queue

DONE_TTL_S = 7 * 24 * 3600  # a done batch's record stays this long, for `ladder batches list`

# KEYS: pending list, request hash, record, open set. ARGV: how many, record, draft time, draft id.
_DRAFT = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], #items, -1)
for start = 1, #items, 500 do
  local fields = {}
  for i = start, math.min(start + 499, #items) do
    fields[#fields + 1] = tostring(i - 1)
    fields[#fields + 1] = items[i]
  end
  redis.call('HSET', KEYS[2], unpack(fields))
end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
return #items
"""

# KEYS: lease. ARGV: holder, ttl ms. Taken when free, kept (ttl renewed) when ours.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: holder. Released only by its holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def custom_id(draft: str, index: int) -> str:
    return f"{draft}-{index}"


def request_index(draft: str, custom: str) -> int | None:
    """The index in `draft` a result's custom id names; None for an id of another batch."""
    head, _, tail = custom.rpartition("-")
    return int(tail) if head == draft and tail.isdigit() else None


def new_draft_id() -> str:
    return uuid.uuid4().hex[:20]  # custom ids must stay short: providers allow 64 characters


class LaneStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._draft = redis.register_script(_DRAFT)
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)

    async def pending(self, tier: str) -> int:
        return int(await self._redis.llen(self._keys.lane_pending(tier)))  # type: ignore[misc]

    async def peek(self, tier: str, count: int) -> list[TierTask]:
        """The first `count` jobs waiting on the tier's pending list, without taking them."""
        raw = await self._redis.lrange(self._keys.lane_pending(tier), 0, count - 1)  # type: ignore[misc]
        return [TIER_TASK_DECODER.decode(r) for r in raw]

    async def draft(self, batch: LaneBatch, count: int) -> int:
        """Move the first `count` pending jobs of the batch's tier into it, recorded as drafted;
        returns how many there were (0: none, and nothing is recorded)."""
        k = self._keys
        return int(
            await self._draft(
                keys=[
                    k.lane_pending(batch.tier),
                    k.lane_batch_tasks(batch.draft),
                    k.lane_batch(batch.draft),
                    k.lane_open,
                ],
                args=[count, ENCODER.encode(batch), batch.drafted_at, batch.draft],
            )
        )

    async def record(self, draft: str) -> LaneBatch | None:
        raw = await self._redis.get(self._keys.lane_batch(draft))
        return LANE_BATCH_DECODER.decode(raw) if raw is not None else None

    async def save(self, batch: LaneBatch) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._keys.lane_batch(batch.draft), ENCODER.encode(batch))
        if batch.provider_batch_id:
            pipe.hset(self._keys.lane_provider_ids, batch.provider_batch_id, batch.draft)
        await pipe.execute()

    async def open_drafts(self) -> list[str]:
        """Drafts of batches not done yet, oldest first."""
        return [
            d.decode() if isinstance(d, bytes) else str(d)
            for d in await self._redis.zrange(self._keys.lane_open, 0, -1)
        ]

    async def known_provider_ids(self) -> set[str]:
        ids = await self._redis.hkeys(self._keys.lane_provider_ids)  # type: ignore[misc]
        return {i.decode() if isinstance(i, bytes) else str(i) for i in ids}

    async def indices(self, draft: str) -> list[int]:
        """The request indices of the batch still held (not sent to the sync lane before submission)."""
        return sorted(int(i) for i in await self._redis.hkeys(self._keys.lane_batch_tasks(draft)))  # type: ignore[misc]

    async def tasks(self, draft: str, indices: Sequence[int]) -> dict[int, TierTask]:
        if not indices:
            return {}
        raw = await self._redis.hmget(self._keys.lane_batch_tasks(draft), [str(i) for i in indices])  # type: ignore[misc]
        return {i: TIER_TASK_DECODER.decode(r) for i, r in zip(indices, raw, strict=True) if r is not None}

    async def to_sync_lane(self, draft: str, moved: dict[int, TierTask]) -> None:
        """Take requests out of a draft before submission and queue their jobs on the sync lane, in one
        transaction (`moved`: index -> the task as it is queued)."""
        if not moved:
            return
        pipe: Any = self._redis.pipeline(transaction=True)
        pipe.hdel(self._keys.lane_batch_tasks(draft), *(str(i) for i in moved))
        for task in moved.values():
            add_to_queue(pipe, self._keys, task)
        await pipe.execute()

    async def finish(self, batch: LaneBatch) -> None:
        """The batch is done: its record kept a while, its requests dropped, out of the open set."""
        k = self._keys
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(k.lane_batch(batch.draft), ENCODER.encode(msgspec.structs.replace(batch, state="done")), ex=DONE_TTL_S)
        pipe.delete(k.lane_batch_tasks(batch.draft))
        pipe.zrem(k.lane_open, batch.draft)
        await pipe.execute()

    async def take_lease(self, holder: str, ttl_s: float) -> bool:
        return bool(await self._lease(keys=[self._keys.lane_leader], args=[holder, int(ttl_s * 1000)]))

    async def release_lease(self, holder: str) -> None:
        await self._release(keys=[self._keys.lane_leader], args=[holder])
