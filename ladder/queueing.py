"""Putting tasks on arq queues: msgpack job serialization and a pipelined, deduplicating enqueue.

arq's `enqueue_job` costs one WATCH/MULTI round trip per job. Here one Lua call writes a whole
chunk of jobs (record, arq job, queue entry, batch membership) atomically, and a job id whose
record already exists is counted as a duplicate instead of running again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from ladder.keys import ARQ_JOB_PREFIX, Keys
from ladder.messages import ENCODER, JobRecord, TierTask
from policies.config import CLASSIFY_QUEUE

TIER_FUNCTION = "tier_task"
CLASSIFY_FUNCTION = "classify_task"
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


# KEYS: batch ids list, batch counts hash, then per job: record key, arq job key, queue key.
# ARGV: record ttl ms, arq ttl ms, then per job: record, payload, score, arq id, job id, queue name.
_ENQUEUE_NEW = """
local accepted = {}
local n = (#KEYS - 2) / 3
for i = 0, n - 1 do
  local rk, jk, qk = KEYS[3 + i * 3], KEYS[4 + i * 3], KEYS[5 + i * 3]
  local a = 3 + i * 6
  if redis.call('EXISTS', rk) == 1 then
    redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
    accepted[i + 1] = 0
  else
    redis.call('SET', rk, ARGV[a], 'PX', ARGV[1])
    redis.call('SET', jk, ARGV[a + 1], 'PX', ARGV[2])
    redis.call('ZADD', qk, ARGV[a + 2], ARGV[a + 3])
    redis.call('RPUSH', KEYS[1], ARGV[a + 4])
    redis.call('HINCRBY', KEYS[2], 'accepted', 1)
    redis.call('HINCRBY', KEYS[2], 'routed:' .. ARGV[a + 5], 1)
    accepted[i + 1] = 1
  end
end
return accepted
"""


@dataclass
class Enqueuer:
    """Writes new jobs of one batch onto their queues, a chunk per round trip."""

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
        keys: list[str] = [self.keys.batch_ids(batch), self.keys.batch_counts(batch)]
        args: list[Any] = [self.record_ttl_ms, ARQ_JOB_TTL_MS]
        for task in tasks:
            tid = task_id(task)
            record = JobRecord(id=task.job.id, batch=batch, status="queued", first_tier=task.first_tier)
            keys += [self.keys.job(task.job.id), ARQ_JOB_PREFIX + tid, self.keys.queue(task.route.tier)]
            args += [ENCODER.encode(record), arq_payload(task, now_ms), now_ms, tid, task.job.id, task.route.tier]
        flags: list[int] = await self._script(keys=keys, args=args)
        return [bool(f) for f in flags]


def add_to_queue(pipe: Any, keys: Keys, task: TierTask) -> None:
    """Queue an already-known job (escalation, classification) inside the caller's transaction."""
    now_ms = int(time.time() * 1000)
    tid = task_id(task)
    pipe.set(ARQ_JOB_PREFIX + tid, arq_payload(task, now_ms), px=ARQ_JOB_TTL_MS)
    pipe.zadd(keys.queue(task.route.tier), {tid: now_ms})
