"""The article's rule-based router, driven by the policies file.

Order: a valid tier hint, a premium feature, a long input, a premium keyword, the undecided band
(sent to the classify queue), then the default tier. The first rule that matches decides.
"""

from __future__ import annotations

import re

from ladder.messages import Job, RouteDecision, RouteSource
from policies.config import CLASSIFY_QUEUE, Policies
from policies.tokens import estimate_tokens


class RuleRouter:
    def __init__(self, policies: Policies) -> None:
        self._rules = policies.rules
        self._tiers = set(policies.tier_names)
        self._premium_features = frozenset(self._rules.premium_features)
        self._band_tasks = frozenset(self._rules.classify.tasks)
        self._keyword_texts = [k.lower() for k in self._rules.premium_keywords]
        keywords = [re.escape(k) for k in self._keyword_texts]
        self._keywords = re.compile(r"\b(" + "|".join(keywords) + r")") if keywords else None

    def route(self, job: Job) -> RouteDecision:
        r = self._rules
        if job.tier_hint is not None and job.tier_hint in self._tiers:
            return RouteDecision(job.tier_hint, RouteSource.HINT, "tier hint")
        if job.feature in self._premium_features:
            return RouteDecision(r.premium_tier, RouteSource.RULE, f"premium feature {job.feature}")
        text = job.text()
        tokens = estimate_tokens(text)
        if tokens > r.input_token_threshold:
            return RouteDecision(r.long_input_tier, RouteSource.RULE, f"input ~{tokens} tokens")
        lowered = text.lower()
        # A substring test first: most texts hold no keyword, and `in` is far cheaper than the
        # word-boundary regex over a long prompt, which then only confirms a likely match.
        if self._keywords is not None and any(k in lowered for k in self._keyword_texts):
            found = self._keywords.search(lowered)
            if found:
                return RouteDecision(r.keyword_tier, RouteSource.RULE, f"keyword '{found.group(1)}'")
        band = r.classify
        if band.enabled and job.task in self._band_tasks and tokens >= band.min_input_tokens:
            return RouteDecision(CLASSIFY_QUEUE, RouteSource.RULE, "undecided by rules")
        return RouteDecision(r.default_tier, RouteSource.RULE, "default")
