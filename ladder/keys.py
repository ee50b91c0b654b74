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

    def lane_pending(self, tier: str) -> str:
        """List: encoded TierTasks of the batch lane waiting to be submitted in a batch of the tier's model."""
        return f"{self.prefix}:lane:pending:{tier}"

    def lane_batch(self, draft: str) -> str:
        """Hash: a batch-lane batch's record (worker/batch_store.py), from its draft on."""
        return f"{self.prefix}:lane:batch:{draft}"

    def lane_batch_tasks(self, draft: str) -> str:
        """Hash: request index -> encoded TierTask of a batch-lane batch; an index is removed as it settles."""
        return f"{self.prefix}:lane:batch:{draft}:tasks"

    @property
    def lane_open(self) -> str:
        """Sorted set: draft ids of batches not yet done, by draft time."""
        return f"{self.prefix}:lane:open"

    @property
    def lane_provider_ids(self) -> str:
        """Hash: provider batch id -> draft id of every batch recorded (a recovery adopts none twice)."""
        return f"{self.prefix}:lane:provider-ids"

    @property
    def lane_leader(self) -> str:
        """The lease of the one `ladder batches run` process that submits and polls."""
        return f"{self.prefix}:lane:leader"

    @property
    def budget_limits(self) -> str:
        """Hash: customer -> "NANO_USD AT_LIMIT" ("-" for no limit), from the customers file."""
        return f"{self.prefix}:budget:limits"

    @property
    def budget_default(self) -> str:
        """The limit of customers the file does not name, as above; absent until a file is loaded."""
        return f"{self.prefix}:budget:default"

    def budget_spent(self, month: str) -> str:
        """Hash: customer -> nano-dollars spent in the UTC month "YYYY-MM"."""
        return f"{self.prefix}:budget:spent:{month}"

    def budget_held(self, month: str) -> str:
        """Hash: customer -> nano-dollars held by calls in flight that reserved in that month."""
        return f"{self.prefix}:budget:held:{month}"

    @property
    def budget_holds(self) -> str:
        """Hash: hold id -> "STATE MONTH NANO_USD CUSTOMER", one per call in flight."""
        return f"{self.prefix}:budget:holds"

    @property
    def budget_hold_deadlines(self) -> str:
        """Sorted set: hold id -> when (Redis ms) it is released as a crashed worker's, or forgotten."""
        return f"{self.prefix}:budget:hold-deadlines"

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
