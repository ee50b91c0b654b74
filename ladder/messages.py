"""Every message that crosses a process boundary, as msgspec Structs.

Schema evolution rule (msgspec's): new fields are appended with defaults, existing fields keep
their order and type, so producers and workers of different versions can share the queues.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec


class TaskKind(enum.StrEnum):
    EXTRACTION = "extraction"
    SUMMARIZATION = "summarization"
    CLASSIFICATION = "classification"
    GENERATION = "generation"


class RouteSource(enum.StrEnum):
    RULE = "rule"
    HINT = "hint"
    CLASSIFIER = "classifier"
    EMBEDDING = "embedding"
    ESCALATION = "escalation"
    SHADOW = "shadow"  # the premium tier asked again for a sample of cheap answers, to judge them


class Status(enum.StrEnum):
    OK = "ok"
    ESCALATED = "escalated"  # this attempt failed; the job moved one tier up
    DEAD = "dead"  # this attempt failed on the top tier (or the job is malformed); dead-lettered
    RETRIED = "retried"  # rate limited: the same model is asked again once the lane allows
    FAILOVER = "failover"  # this candidate failed; the next candidate of the same tier is asked


class Lane(enum.StrEnum):
    """How a job's calls are made: one at a time as workers take it (sync), or collected into a
    provider's batch API at about half the price, answered within the provider's window (batch).
    Not the rate limiter's lanes, which are a model's limits on one account."""

    SYNC = "sync"
    BATCH = "batch"


class Message(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant"
    content: str


class Job(msgspec.Struct, frozen=True):
    """One unit of work as a user submits it (one JSONL line)."""

    id: str
    prompt: str | None = None
    messages: list[Message] | None = None
    customer: str = "default"
    feature: str = "default"
    task: TaskKind = TaskKind.GENERATION
    max_output_tokens: int = 512
    json_schema: dict[str, Any] | None = None
    metadata: dict[str, str] = {}
    tier_hint: str | None = None
    # When the answer is needed by (with a timezone); far enough away (batch.min_deadline_s), the
    # job goes through the batch lane.
    deadline: datetime | None = None

    def conversation(self) -> list[Message]:
        """The job as chat messages, whichever of prompt or messages it was given with."""
        if self.messages:
            return list(self.messages)
        return [Message(role="user", content=self.prompt or "")]

    def text(self) -> str:
        return "\n".join(m.content for m in self.conversation())


class RouteDecision(msgspec.Struct, frozen=True):
    tier: str  # a tier name, or "classify" for the rules' undecided band
    source: RouteSource
    reason: str


class Attempt(msgspec.Struct, frozen=True):
    """One provider call made for a job, carried along when the job escalates."""

    number: int
    tier: str
    provider: str
    model: str
    status: Status
    error_class: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)


class TierTask(msgspec.Struct, frozen=True):
    """The payload of an arq job on a tier queue or the classify queue."""

    job: Job
    batch: str
    route: RouteDecision
    first_tier: str
    attempts: list[Attempt] = []
    strategy: str = "rules-v1"
    experiment: str = ""  # the experiment that chose the strategy, if any
    arm: str = ""
    lane: Lane = Lane.SYNC


class Outcome(msgspec.Struct, frozen=True):
    """One attempt's outcome, streamed to ClickHouse. One row per provider call, classifier included."""

    event_id: str
    job_id: str
    batch: str
    customer: str
    feature: str
    task: str
    route_source: RouteSource
    intended_tier: str
    tier: str
    provider: str
    model: str
    attempt: int
    status: Status
    error_class: str
    error_message: str
    input_tokens: int
    output_tokens: int
    cost: Decimal
    counterfactual_cost: Decimal
    latency_ms: float
    started_at: float  # unix seconds, UTC
    finished_at: float
    strategy: str
    simulated: bool
    final: bool  # this attempt settled the job (ok, or dead on the top tier)
    middle_tier_cost: Decimal = Decimal(0)  # the same tokens on the middle tier's first model
    experiment: str = ""
    arm: str = ""
    lane: Lane = Lane.SYNC
    # The same tokens on the same model at its synchronous price: equal to cost on the sync lane;
    # on the batch lane, sync_cost - cost is what the batch discount saved.
    sync_cost: Decimal = Decimal(0)


class JobRecord(msgspec.Struct, frozen=True):
    """The state of a job in Redis: written at enqueue, replaced when the job settles."""

    id: str
    batch: str
    status: str  # "queued" | "ok" | "dead"
    first_tier: str = ""
    tier: str = ""
    provider: str = ""
    model: str = ""
    output: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    path: list[str] = []
    reason: str = ""
    simulated: bool = False
    # Who and what the job was for, so a score given later (feedback) lands on the right arm.
    customer: str = ""
    feature: str = ""
    task: str = ""
    strategy: str = ""
    experiment: str = ""
    arm: str = ""


def about_job(task: TierTask) -> dict[str, Any]:
    """Who and what the job of `task` is for, as every row and record about it carries them: one
    list, so a field added here reaches outcomes, scores and job records alike."""
    job = task.job
    return {
        "batch": task.batch,
        "customer": job.customer,
        "feature": job.feature,
        "task": job.task.value,
        "strategy": task.strategy,
        "experiment": task.experiment,
        "arm": task.arm,
    }


def job_record(task: TierTask, status: str, **fields: Any) -> JobRecord:
    """The job's record, with who and what it is for taken from its task."""
    first_tier = fields.pop("first_tier", task.first_tier)
    return JobRecord(id=task.job.id, status=status, first_tier=first_tier, **about_job(task), **fields)


def task_score(task: TierTask, **fields: Any) -> Score:
    """A score on the job of `task`, with who and what it is for taken from the task."""
    return Score(job_id=task.job.id, **about_job(task), **fields)


class DeadLetter(msgspec.Struct, frozen=True):
    job_id: str
    batch: str
    reason: str
    attempts: list[Attempt]
    job: Job


class ScoreSource(enum.StrEnum):
    ESCALATION = "escalation"  # the tier's answer failed the checks: the job needed a higher tier
    SHADOW = "shadow"  # a cheap answer compared with the premium tier's answer to the same job
    FEEDBACK = "feedback"  # a person's (or a downstream system's) score


class Routing(enum.IntEnum):
    """Whether the tier the job finished on was the right one, as far as a score can tell."""

    WRONG = 0
    RIGHT = 1
    UNKNOWN = -1


class Score(msgspec.Struct, frozen=True):
    """A quality score on one job's answer, streamed to ClickHouse beside the outcomes.

    Scores with a routing mark and a label tier are the loop's labelled examples: `text` is the
    job's text (cut to policy length) so a new strategy can be built from them without the input file.
    """

    event_id: str  # one per job and source: a later feedback on the same job replaces the earlier
    job_id: str
    batch: str
    customer: str
    feature: str
    task: str
    strategy: str
    experiment: str
    arm: str
    tier: str  # the tier whose answer is scored
    source: ScoreSource
    score: float  # 0..1
    routing: Routing
    label_tier: str  # the tier the job should have gone to; "" when the score does not say
    method: str  # how it was scored: exact, normalized, json, judge, feedback, or the failed check
    detail: str
    text: str
    correction: str
    at: float  # unix seconds, UTC


class ShadowTask(msgspec.Struct, frozen=True):
    """The payload of an arq job on the shadow queue: a cheap answer to judge against the premium tier."""

    task: TierTask
    tier: str  # where the cheap answer came from
    provider: str
    model: str
    answer: str


class LaneBatch(msgspec.Struct, frozen=True):
    """A batch of the batch lane as Redis keeps it (worker/batch_store.py), from its draft (jobs taken
    off the tier's pending list, before the provider is asked) to done (every request settled)."""

    draft: str  # Ladder's id; each request's custom id is "<draft>-<index>"
    tier: str
    provider: str
    model: str
    state: str  # "drafted" | "submitted" | "done"
    drafted_at: float  # unix seconds
    size: int = 0  # requests sent (jobs over budget at submission went to the sync lane instead)
    provider_batch_id: str = ""
    submitted_at: float = 0.0
    canceled_at: float = 0.0  # when Ladder asked the provider to cancel it (batch.cancel_after_s)
    ended_at: float = 0.0
    answered: int = 0  # settled from an answer (ok, escalated or dead)
    fell_back: int = 0  # sent to the sync lane: expired, canceled or errored by the provider
    failed: int = 0  # errored for a reason of the job's own (an invalid request): settled as a sync call's would be


class Rejection(msgspec.Struct, frozen=True):
    """A bad input line, as written to the rejects file."""

    line: int
    reason: str
    text: str


TIER_TASK_DECODER = msgspec.msgpack.Decoder(TierTask)
OUTCOME_DECODER = msgspec.msgpack.Decoder(Outcome)
JOB_RECORD_DECODER = msgspec.msgpack.Decoder(JobRecord)
SCORE_DECODER = msgspec.msgpack.Decoder(Score)
SHADOW_TASK_DECODER = msgspec.msgpack.Decoder(ShadowTask)
LANE_BATCH_DECODER = msgspec.msgpack.Decoder(LaneBatch)
ENCODER = msgspec.msgpack.Encoder()
