"""Every message that crosses a process boundary, as msgspec Structs.

Schema evolution rule (msgspec's): new fields are appended with defaults, existing fields keep
their order and type, so producers and workers of different versions can share the queues.
"""

from __future__ import annotations

import enum
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


class Status(enum.StrEnum):
    OK = "ok"
    ESCALATED = "escalated"  # this attempt failed; the job moved one tier up
    DEAD = "dead"  # this attempt failed on the top tier (or the job is malformed); dead-lettered
    RETRIED = "retried"  # rate limited: the same model is asked again once the lane allows
    FAILOVER = "failover"  # this candidate failed; the next candidate of the same tier is asked


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


class DeadLetter(msgspec.Struct, frozen=True):
    job_id: str
    batch: str
    reason: str
    attempts: list[Attempt]
    job: Job


class Rejection(msgspec.Struct, frozen=True):
    """A bad input line, as written to the rejects file."""

    line: int
    reason: str
    text: str


TIER_TASK_DECODER = msgspec.msgpack.Decoder(TierTask)
OUTCOME_DECODER = msgspec.msgpack.Decoder(Outcome)
JOB_RECORD_DECODER = msgspec.msgpack.Decoder(JobRecord)
ENCODER = msgspec.msgpack.Encoder()
