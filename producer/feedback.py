"""Feedback: a person's (or a downstream system's) score on a finished job, streamed like any score.

The score lands on the job's arm of any experiment and, when low on a tier below the top, labels
the job one tier up for the next strategy version; a later feedback on the same job replaces it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import ENCODER, JOB_RECORD_DECODER, JobRecord, Rejection, Routing, Score, ScoreSource
from policies.config import Policies
from producer.intake import excerpt, read_lines

CORRECTION_CHARS = 20_000


class FeedbackError(ValueError):
    """The feedback cannot be stored; the message says why."""


def feedback_score(record: JobRecord, policies: Policies, score: float, correction: str, at: float) -> Score:
    if isinstance(score, bool) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise FeedbackError(f"score: {score} must be a number from 0 to 1")
    if record.status != "ok":
        raise FeedbackError(f"job {record.id!r} is {record.status}, not finished with an answer to score")
    if len(correction) > CORRECTION_CHARS:
        raise FeedbackError(f"correction: {len(correction):,} characters is over the limit of {CORRECTION_CHARS:,}")
    above = policies.next_tier(record.tier) if record.tier in policies.tier_names else None
    if score < policies.learning.feedback_low_score:
        # Low on the top tier says nothing about routing: there was nowhere higher to send it.
        routing, label = (Routing.WRONG, above) if above is not None else (Routing.UNKNOWN, "")
    else:
        routing, label = Routing.RIGHT, record.tier
    return Score(
        event_id=f"{record.id}#feedback",
        job_id=record.id,
        batch=record.batch,
        customer=record.customer,
        feature=record.feature,
        task=record.task,
        strategy=record.strategy,
        experiment=record.experiment,
        arm=record.arm,
        tier=record.tier,
        source=ScoreSource.FEEDBACK,
        score=score,
        routing=routing,
        label_tier=label,
        method="feedback",
        detail="",
        text="",  # the job record keeps no prompt; `ladder strategy build --jobs FILE` fills it in
        correction=correction,
        at=at,
    )


async def give_feedback(
    redis: Redis, keys: Keys, policies: Policies, job_id: str, score: float, correction: str = ""
) -> Score:
    """Store a score from 0 to 1 on a finished job (its record must still exist: limits.result_ttl_s)."""
    raw = await redis.get(keys.job(job_id))
    if raw is None:
        raise FeedbackError(f"job {job_id!r}: no record (unknown, or older than limits.result_ttl_s)")
    scored = feedback_score(JOB_RECORD_DECODER.decode(raw), policies, score, correction, time.time())
    await redis.xadd(keys.outcomes, {"s": ENCODER.encode(scored)})
    return scored


class FeedbackLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job_id: str
    score: float
    correction: str = ""


class FeedbackReport(msgspec.Struct):
    lines: int = 0
    stored: int = 0
    rejected: int = 0


_line_decoder = msgspec.json.Decoder(FeedbackLine)
CHUNK = 500


async def give_feedback_file(
    redis: Redis, keys: Keys, policies: Policies, path: Path, on_reject: Callable[[Rejection], None]
) -> FeedbackReport:
    """JSONL lines {"job_id", "score", "correction"?}: each bad line goes to `on_reject` with its
    number and reason, in file order; the good ones are stored, a chunk of lines per round trip."""
    report = FeedbackReport()
    chunk: list[tuple[int, bytes, FeedbackLine | str]] = []
    for number, raw, _ in read_lines(path):
        report.lines += 1
        text = raw.strip()
        try:
            chunk.append((number, text, _line_decoder.decode(text)))
        except msgspec.DecodeError as e:
            chunk.append((number, text, f"invalid feedback line: {e}"))
        if len(chunk) >= CHUNK:
            await _store_chunk(redis, keys, policies, chunk, report, on_reject)
    await _store_chunk(redis, keys, policies, chunk, report, on_reject)
    return report


async def _store_chunk(
    redis: Redis,
    keys: Keys,
    policies: Policies,
    chunk: list[tuple[int, bytes, FeedbackLine | str]],
    report: FeedbackReport,
    on_reject: Callable[[Rejection], None],
) -> None:
    if not chunk:
        return
    ids = [keys.job(line.job_id) for _, _, line in chunk if isinstance(line, FeedbackLine)]
    records = iter(await redis.mget(ids) if ids else [])
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for number, text, line in chunk:
        try:
            if isinstance(line, str):
                raise FeedbackError(line)
            raw = next(records)
            if raw is None:
                raise FeedbackError(f"job {line.job_id!r}: no record (unknown, or older than limits.result_ttl_s)")
            scored = feedback_score(JOB_RECORD_DECODER.decode(raw), policies, line.score, line.correction, now)
        except FeedbackError as e:
            report.rejected += 1
            on_reject(Rejection(number, str(e), excerpt(text)))
            continue
        pipe.xadd(keys.outcomes, {"s": ENCODER.encode(scored)})
        report.stored += 1
    await pipe.execute()
    chunk.clear()
