"""`ladder results`: one JSON line per job of a batch, from the job records in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import JOB_RECORD_DECODER, JobRecord

PAGE = 1000


class ResultLine(msgspec.Struct, omit_defaults=True):
    id: str
    status: str
    tier: str
    provider: str
    model: str
    output: str
    input_tokens: int
    output_tokens: int
    cost: str
    path: list[str]
    first_tier: str
    reason: str
    simulated: bool
    strategy: str = ""
    experiment: str = ""  # with arm: omitted from the line when the job was in no experiment
    arm: str = ""


def result_line(record: JobRecord) -> ResultLine:
    return ResultLine(
        id=record.id,
        status=record.status,
        tier=record.tier,
        provider=record.provider,
        model=record.model,
        output=record.output,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cost=str(record.cost),
        path=record.path,
        first_tier=record.first_tier,
        reason=record.reason,
        simulated=record.simulated,
        strategy=record.strategy,
        experiment=record.experiment,
        arm=record.arm,
    )


async def batch_records(redis: Redis, keys: Keys, batch: str) -> AsyncIterator[JobRecord]:
    """Every job of the batch in submission order, a page of records per round trip."""
    start = 0
    while True:
        ids: list[bytes] = await redis.lrange(keys.batch_ids(batch), start, start + PAGE - 1)  # type: ignore[misc]
        if not ids:
            return
        raw = await redis.mget([keys.job(i.decode()) for i in ids])
        for job_id, value in zip(ids, raw, strict=True):
            if value is None:
                yield JobRecord(id=job_id.decode(), batch=batch, status="expired")
            else:
                yield JOB_RECORD_DECODER.decode(value)
        start += PAGE


async def batch_counts(redis: Redis, keys: Keys, batch: str) -> dict[str, int]:
    raw: dict[bytes, bytes] = await redis.hgetall(keys.batch_counts(batch))  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}
