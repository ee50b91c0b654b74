"""What a file of jobs would cost under the current policies, before any provider is called.

Each job is routed as the producer routes it (policies/rules.py), and a job of the undecided band as
far as can be known offline: text that addresses the classifier goes to `classifier.safe_tier`
(the steering guard, no model call); with a band router (the embedding router over a local
embedder) a job close enough to the labelled examples takes their tier; any other band job is
*undecided* and is priced at the safe tier, the conservative choice, plus one classifier call.

Jobs are counted by (tier, input tokens, output tokens) and each group is priced once, exactly in
Decimal, on the tier's first candidate: a million jobs are a few thousand multiplications. Input
tokens are estimate_tokens(job text); output tokens are the job's `max_output_tokens`, an upper
bound. A classifier call is its prompt's tokens plus the job's text (cut as the worker cuts it) in,
and a small fixed answer out; repeated prompts share the worker's decision cache, so the count of
calls is an upper bound too.

With the batch lane on, a second scenario prices the same split with every job sent through it: each
tier's jobs at its batch model's batch price (a tier without one at its synchronous price).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, localcontext

import msgspec

from ladder.messages import Job
from policies.config import CLASSIFY_QUEUE, Candidate, Policies
from policies.injection import steering_attempt
from policies.lanes import Lanes
from policies.prices import PriceBook
from policies.rules import RuleRouter
from policies.tokens import estimate_tokens

# A band job's tier from its text, or None when no example vouches for one (batched: texts in, tiers out).
BandRouter = Callable[[Sequence[str]], Sequence[str | None]]

CLASSIFIER_ANSWER_TOKENS = 40  # {"complexity": "...", "confidence": 0.9, "reason": "a few words"}
# Routes kept by (text, feature, task, hint), so repeated prompts are routed once; the cache is
# cleared when it holds this many routes or characters of text: memory stays flat.
ROUTE_CACHE_SIZE = 65_536
ROUTE_CACHE_CHARS = 32_000_000
BAND_BATCH = 256  # band texts embedded together
_PRECISION = 60  # digits for the sums: a million jobs at catalogue prices stay exact

_GUARDED, _BAND = "guarded", "band"


class TierSplit(msgspec.Struct, frozen=True):
    tier: str
    model: str  # provider/model of the tier's first candidate, the one a job is priced on
    jobs: int
    share: float  # of all jobs
    undecided: int  # undecided band jobs priced here (the safe tier)
    input_tokens: int
    output_tokens: int  # the jobs' max_output_tokens: an upper bound
    cost: Decimal


class Scenario(msgspec.Struct, frozen=True):
    name: str  # "current policies" or "all on <tier>"
    jobs_cost: Decimal
    routing_cost: Decimal  # classifier calls (current policies only)
    cost: Decimal
    saving: Decimal  # against the all-top-tier scenario
    saving_pct: float


class Estimate(msgspec.Struct, frozen=True):
    jobs: int
    tiers: list[TierSplit]
    scenarios: list[Scenario]
    safe_tier: str
    undecided: int  # band jobs no rule, guard or example decided: priced at the safe tier
    guarded: int  # band jobs whose text addresses the classifier: the safe tier, no call
    embedded: int  # band jobs the band router decided
    classifier_calls: int
    classifier_model: str
    classifier_cost: Decimal


class Estimator:
    """Consumes Jobs (`add`, `add_all`), then `result()` prices what was counted."""

    def __init__(
        self,
        policies: Policies,
        *,
        band_router: BandRouter | None = None,
        classifier_prompt_tokens: int = 0,
        classifier_text_chars: int | None = None,
        classifier_answer_tokens: int = CLASSIFIER_ANSWER_TOKENS,
    ) -> None:
        self._policies = policies
        self._book = PriceBook(policies)
        self._rules = RuleRouter(policies)
        self._band_router = band_router
        self._safe = policies.classifier.safe_tier
        self._prompt_tokens = classifier_prompt_tokens
        self._text_tokens = None if classifier_text_chars is None else estimate_tokens("x" * classifier_text_chars)
        self._answer_tokens = classifier_answer_tokens
        self._routes: dict[tuple[str, str, str, str | None], str] = {}
        self._route_chars = 0
        self._groups: Counter[tuple[str, int, int]] = Counter()
        self._calls: Counter[int] = Counter()  # classifier calls by their input tokens
        self._pending: list[tuple[str, int, int]] = []  # band texts waiting for the band router
        self.undecided = self.guarded = self.embedded = 0

    def add_all(self, jobs: Iterable[Job]) -> Estimator:
        for job in jobs:
            self.add(job)
        return self

    def add(self, job: Job) -> None:
        text = job.text()
        tokens = estimate_tokens(text)
        out = job.max_output_tokens
        tier = self._route(job, text)
        if tier == _GUARDED:
            self.guarded += 1
            self._groups[self._safe, tokens, out] += 1
        elif tier != _BAND:
            self._groups[tier, tokens, out] += 1
        elif self._band_router is None:
            self._undecided(tokens, out)
        else:
            self._pending.append((text, tokens, out))
            if len(self._pending) >= BAND_BATCH:
                self._flush()

    def _route(self, job: Job, text: str) -> str:
        """The job's tier, or _GUARDED / _BAND for the undecided band; cached by what the rules read."""
        key = (text, job.feature, job.task.value, job.tier_hint)
        tier = self._routes.get(key)
        if tier is None:
            tier = self._rules.route(job).tier
            if tier == CLASSIFY_QUEUE:
                tier = _GUARDED if steering_attempt(text) is not None else _BAND
            self._route_chars += len(text)
            if len(self._routes) >= ROUTE_CACHE_SIZE or self._route_chars > ROUTE_CACHE_CHARS:
                self._routes.clear()
                self._route_chars = len(text)
            self._routes[key] = tier
        return tier

    def _undecided(self, tokens: int, out: int) -> None:
        self.undecided += 1
        self._groups[self._safe, tokens, out] += 1
        seen = tokens if self._text_tokens is None else min(tokens, self._text_tokens)
        self._calls[self._prompt_tokens + seen] += 1

    def _flush(self) -> None:
        if not self._pending or self._band_router is None:
            return
        tiers = self._band_router([text for text, _, _ in self._pending])
        for (_, tokens, out), tier in zip(self._pending, tiers, strict=True):
            if tier is None:
                self._undecided(tokens, out)
            else:
                self.embedded += 1
                self._groups[tier, tokens, out] += 1
        self._pending.clear()

    def result(self) -> Estimate:
        self._flush()
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            return self._priced()

    def _priced(self) -> Estimate:
        p = self._policies
        tiers = [self._split(t.name, t.candidates[0]) for t in p.tiers]
        jobs_cost = sum((t.cost for t in tiers), Decimal(0))
        classifier = Candidate(p.classifier.provider, p.classifier.model)
        routing = sum(
            (self._book.cost(classifier, i, self._answer_tokens) * n for i, n in self._calls.items()), Decimal(0)
        )
        by_size: Counter[tuple[int, int]] = Counter()
        for (_, i, o), n in self._groups.items():
            by_size[i, o] += n
        fixed = {t.name: self._all_on(t.candidates[0], by_size) for t in p.tiers}
        top = fixed[p.top_tier.name]
        scenarios = [_scenario("current policies", jobs_cost, routing, top)]
        lanes = Lanes(p, self._book)
        if lanes.batch_models:
            batched = sum((self._on_batch_lane(t.name, t.candidates[0], lanes) for t in p.tiers), Decimal(0))
            scenarios.append(_scenario("current policies, batch lane", batched, routing, top))
        scenarios += [_scenario(f"all on {name}", cost, Decimal(0), top) for name, cost in fixed.items()]
        return Estimate(
            jobs=sum(t.jobs for t in tiers),
            tiers=tiers,
            scenarios=scenarios,
            safe_tier=self._safe,
            undecided=self.undecided,
            guarded=self.guarded,
            embedded=self.embedded,
            classifier_calls=sum(self._calls.values()),
            classifier_model=f"{classifier.provider}/{classifier.model}",
            classifier_cost=routing,
        )

    def _split(self, tier: str, candidate: Candidate) -> TierSplit:
        groups = [(i, o, n) for (t, i, o), n in self._groups.items() if t == tier]
        total = sum(self._groups.values())
        jobs = sum(n for _, _, n in groups)
        return TierSplit(
            tier=tier,
            model=f"{candidate.provider}/{candidate.model}",
            jobs=jobs,
            share=jobs / total if total else 0.0,
            undecided=self.undecided if tier == self._safe else 0,
            input_tokens=sum(i * n for i, _, n in groups),
            output_tokens=sum(o * n for _, o, n in groups),
            cost=sum((self._book.cost(candidate, i, o) * n for i, o, n in groups), Decimal(0)),
        )

    def _on_batch_lane(self, tier: str, candidate: Candidate, lanes: Lanes) -> Decimal:
        groups = [(i, o, n) for (t, i, o), n in self._groups.items() if t == tier]
        model = lanes.batch_models.get(tier)
        if model is None:
            return sum((self._book.cost(candidate, i, o) * n for i, o, n in groups), Decimal(0))
        return sum((self._book.batch_cost(model, i, o) * n for i, o, n in groups), Decimal(0))

    def _all_on(self, candidate: Candidate, by_size: Counter[tuple[int, int]]) -> Decimal:
        return sum((self._book.cost(candidate, i, o) * n for (i, o), n in by_size.items()), Decimal(0))


def _scenario(name: str, jobs_cost: Decimal, routing_cost: Decimal, top: Decimal) -> Scenario:
    cost = jobs_cost + routing_cost
    saving = top - cost
    return Scenario(name, jobs_cost, routing_cost, cost, saving, float(saving / top * 100) if top else 0.0)


def estimate(policies: Policies, jobs: Iterable[Job], band_router: BandRouter | None = None) -> Estimate:
    return Estimator(policies, band_router=band_router).add_all(jobs).result()
