"""Which lane a job takes: answered at once (sync), or collected into a provider's batch API (batch)."""

from __future__ import annotations

from datetime import UTC, datetime

from ladder.messages import Job, Lane
from policies.config import Candidate, Policies, PolicyError
from policies.prices import PriceBook


class Lanes:
    """The lane of each job, and the model each tier's batch-lane jobs go to: the tier's first
    candidate with a batch API Ladder speaks (Policies.batch_candidate) whose batch price is known
    (batch.discounts, else genai-prices). A tier without one answers batch-lane jobs on the sync lane:
    `unpriced` names it, for the lane process to say so at start-up."""

    def __init__(self, policies: Policies, prices: PriceBook | None = None) -> None:
        prices = prices or PriceBook(policies)
        self._policies = policies
        self.batch_models: dict[str, Candidate] = {}
        self.unpriced: dict[str, str] = {}  # tier -> why its batch-lane jobs take the sync lane
        for tier in policies.tier_names:
            candidate = policies.batch_candidate(tier)
            if candidate is None or not policies.batch.enabled:
                continue
            try:
                prices.batch_cost(candidate, 1, 1)
            except PolicyError as e:
                self.unpriced[tier] = str(e)
            else:
                self.batch_models[tier] = candidate

    def chosen(self, job: Job, requested: Lane | None) -> Lane:
        """The lane asked for (`--lane`), else the batch lane for a job whose deadline is at least
        batch.min_deadline_s away, else sync. The batch lane only when it is enabled. The clock is read
        only for a job with a deadline: this runs once per enqueued job."""
        if not self._policies.batch.enabled:
            return Lane.SYNC
        if requested is not None:
            return requested
        deadline = job.deadline
        if (
            deadline is not None
            and (deadline - datetime.now(UTC)).total_seconds() >= self._policies.batch.min_deadline_s
        ):
            return Lane.BATCH
        return Lane.SYNC

    def on_tier(self, lane: Lane, tier: str) -> Lane:
        """The lane a job takes on `tier`: a batch-lane job on a tier with no batch model is answered
        on the sync lane (the classify queue keeps the lane for the tier it decides)."""
        if lane is Lane.BATCH and tier in self._policies.tier_names and tier not in self.batch_models:
            return Lane.SYNC
        return lane

    def after_escalation(self, lane: Lane, next_tier: str) -> Lane:
        """Where a job whose answer failed the checks goes on the next tier: a batch-lane job to the next
        tier's batch when batch.escalate_to says so, else (and every sync job) to its sync queue."""
        if lane is Lane.BATCH and self._policies.batch.escalate_to == "batch":
            return self.on_tier(Lane.BATCH, next_tier)
        return Lane.SYNC
