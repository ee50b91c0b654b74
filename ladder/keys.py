"""Names of everything Ladder keeps in Redis, in one place."""

from __future__ import annotations

from dataclasses import dataclass

ARQ_JOB_PREFIX = "arq:job:"  # arq's own, fixed


@dataclass(frozen=True)
class Keys:
    prefix: str = "ladder"

    def queue(self, tier: str) -> str:
        """The arq queue (a sorted set) of a tier, or of the classify step."""
        return f"{self.prefix}:queue:{tier}"

    def job(self, job_id: str) -> str:
        """The job's JobRecord; its existence is what deduplicates a resubmitted job id."""
        return f"{self.prefix}:job:{job_id}"

    def settled(self, task_id: str) -> str:
        """Marks an arq task whose attempt was settled, so a re-run after a crash does not bill twice."""
        return f"{self.prefix}:settled:{task_id}"

    def classify_cache(self, digest: str) -> str:
        """A classification decision, by digest of the normalized prompt."""
        return f"{self.prefix}:classify-cache:{digest}"

    def cooldown(self, model: str) -> str:
        """Present while a "provider/model" is cooling down after overload or outage."""
        return f"{self.prefix}:cooldown:{model}"

    def batch_ids(self, batch: str) -> str:
        return f"{self.prefix}:batch:{batch}:ids"

    def batch_counts(self, batch: str) -> str:
        return f"{self.prefix}:batch:{batch}:counts"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}:outcomes"

    @property
    def malformed_outcomes(self) -> str:
        """Outcome entries the sink could not decode, kept for a person to look at."""
        return f"{self.prefix}:outcomes:malformed"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    @property
    def sink_group(self) -> str:
        return "sink"
