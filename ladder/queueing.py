"""Putting tasks on arq queues: msgpack job serialization and a pipelined, deduplicating enqueue.

arq's `enqueue_job` costs one WATCH/MULTI round trip per job. Here one Lua call writes a whole
chunk of jobs (record, arq job, queue entry, batch membership) atomically, and a job id whose
record already exists is counted as a duplicate instead of running again.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from ladder.keys import ARQ_JOB_PREFIX, Keys
from ladder.messages import ENCODER, Lane, ShadowTask, TierTask, job_record
from policies.config import CLASSIFY_QUEUE, SHADOW_QUEUE

TIER_FUNCTION = "tier_task"
CLASSIFY_FUNCTION = "classify_task"
SHADOW_FUNCTION = "shadow_task"
ARQ_JOB_TTL_MS = 7 * 24 * 3600 * 1000

_arq_decoder = msgspec.msgpack.Decoder()


def serialize_arq(data: dict[str, Any]) -> bytes:
    """arq's job_serializer: msgpack via msgspec instead of pickle."""
    return ENCODER.encode(data)


def deserialize_arq(raw: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = _arq_decoder.decode(raw)
    return decoded


def task_id(task: TierTask) -> str:
    """The arq job id of a task: unique per job, queue and attempt count, so escalation re-enqueues."""
    return f"{task.job.id}~{task.route.tier}~{len(task.attempts)}"


def arq_payload(task: TierTask, now_ms: int) -> bytes:
    function = CLASSIFY_FUNCTION if task.route.tier == CLASSIFY_QUEUE else TIER_FUNCTION
    return serialize_arq({"t": None, "f": function, "a": [ENCODER.encode(task)], "k": {}, "et": now_ms})


# One blob per chunk instead of nine arguments per job: redis-py's per-argument packing was the
# bulk of enqueue time. Each job in the blob is six length-prefixed fields: job id, queue name,
# task id, record, payload, lane ("sync" | "batch"). A sync job's payload is its arq job; a batch-lane
# job's is its encoded task, pushed on its tier's pending list for the batch submitter instead of an
# arq queue. Queue writes and counters are grouped per chunk.
# KEYS: batch ids list, batch counts hash.
# ARGV: record ttl ms, arq ttl ms, score, job key prefix, blob, queue key prefix, arq job key prefix,
#       pending list key prefix.
_ENQUEUE_NEW = """
local blob, pos = ARGV[5], 1
local function take()
  local n, after = struct.unpack('>I4', blob, pos)
  pos = after + n
  return string.sub(blob, after, pos - 1)
end
local flags, ids, queued, pending, routed = {}, {}, {}, {}, {}
local accepted, duplicates = 0, 0
while pos <= #blob do
  local job_id, queue, tid, record, payload, lane = take(), take(), take(), take(), take(), take()
  local rk = ARGV[4] .. job_id
  if redis.call('EXISTS', rk) == 1 then
    duplicates = duplicates + 1
    flags[#flags + 1] = '0'
  else
    redis.call('SET', rk, record, 'PX', ARGV[1])
    if lane == 'batch' then
      pending[queue] = pending[queue] or {}
      table.insert(pending[queue], payload)
      routed['batch:' .. queue] = (routed['batch:' .. queue] or 0) + 1
    else
      redis.call('SET', ARGV[7] .. tid, payload, 'PX', ARGV[2])
      queued[queue] = queued[queue] or {}
      table.insert(queued[queue], ARGV[3])
      table.insert(queued[queue], tid)
      routed[queue] = (routed[queue] or 0) + 1
    end
    ids[#ids + 1] = job_id
    accepted = accepted + 1
    flags[#flags + 1] = '1'
  end
end
for queue, members in pairs(queued) do
  redis.call('ZADD', ARGV[6] .. queue, unpack(members))
end
for queue, items in pairs(pending) do
  redis.call('RPUSH', ARGV[8] .. queue, unpack(items))
end
for queue, n in pairs(routed) do
  redis.call('HINCRBY', KEYS[2], 'routed:' .. queue, n)
end
if accepted > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ids))
  redis.call('HINCRBY', KEYS[2], 'accepted', accepted)
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates) end
return table.concat(flags)
"""
_LENGTH = struct.Struct(">I")


def _field(value: bytes) -> bytes:
    return _LENGTH.pack(len(value)) + value


@dataclass
class Enqueuer:
    """Writes new jobs of one batch onto their queues: one Lua call per chunk, atomic per chunk."""

    redis: Redis
    keys: Keys
    record_ttl_ms: int

    def __post_init__(self) -> None:
        self._script = self.redis.register_script(_ENQUEUE_NEW)

    async def enqueue_new(self, batch: str, tasks: Sequence[TierTask]) -> list[bool]:
        """Enqueue tasks whose job ids are new; returns, per task, whether it was accepted."""
        if not tasks:
            return []
        now_ms = int(time.time() * 1000)
        parts: list[bytes] = []
        for task in tasks:
            record = job_record(task, "queued")
            batched = to_batch_lane(task)
            parts += [
                _field(task.job.id.encode()),
                _field(task.route.tier.encode()),
                _field(task_id(task).encode()),
                _field(ENCODER.encode(record)),
                _field(ENCODER.encode(task) if batched else arq_payload(task, now_ms)),
                _field(b"batch" if batched else b"sync"),
            ]
        keys = [self.keys.batch_ids(batch), self.keys.batch_counts(batch)]
        blob = b"".join(parts)
        args: list[bytes | str | int] = [
            self.record_ttl_ms,
            ARQ_JOB_TTL_MS,
            now_ms,
            self.keys.job(""),
            blob,
            self.keys.queue(""),
            ARQ_JOB_PREFIX,
            self.keys.lane_pending(""),
        ]
        flags: bytes = await self._script(keys=keys, args=args)
        return [f == ord("1") for f in flags]


def to_batch_lane(task: TierTask) -> bool:
    """Whether the task waits for the batch submitter: a batch-lane job routed to a tier (one the
    rules left undecided is classified first, on the classify queue)."""
    return task.lane is Lane.BATCH and task.route.tier != CLASSIFY_QUEUE


def add_to_queue(pipe: Any, keys: Keys, task: TierTask) -> None:
    """Queue an already-known job (escalation, classification, a batch's leftovers) inside the
    caller's transaction: on its tier's arq queue, or its tier's batch-lane pending list."""
    if to_batch_lane(task):
        pipe.rpush(keys.lane_pending(task.route.tier), ENCODER.encode(task))
        return
    now_ms = int(time.time() * 1000)
    tid = task_id(task)
    pipe.set(ARQ_JOB_PREFIX + tid, arq_payload(task, now_ms), px=ARQ_JOB_TTL_MS)
    pipe.zadd(keys.queue(task.route.tier), {tid: now_ms})


def add_shadow(pipe: Any, keys: Keys, shadow: ShadowTask) -> None:
    """Queue a shadow evaluation inside the caller's transaction; one per job (its arq id says so)."""
    now_ms = int(time.time() * 1000)
    tid = f"{shadow.task.job.id}~{SHADOW_QUEUE}"
    payload = serialize_arq({"t": None, "f": SHADOW_FUNCTION, "a": [ENCODER.encode(shadow)], "k": {}, "et": now_ms})
    pipe.set(ARQ_JOB_PREFIX + tid, payload, px=ARQ_JOB_TTL_MS)
    pipe.zadd(keys.queue(SHADOW_QUEUE), {tid: now_ms})
