"""Feedback: a person's (or a downstream system's) score on a finished job, streamed like any score.

The score lands on the job's arm of any experiment and, when low on a tier below the top, labels
the job one tier up for the next strategy version; a later feedback on the same job replaces it.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from ladder.keys import Keys
from ladder.messages import ENCODER, JOB_RECORD_DECODER, JobRecord, Routing, Score, ScoreSource
from policies.config import Policies

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
