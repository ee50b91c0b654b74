"""Shared test helpers: policies text, job lines, and a Settings object for the test services."""

from __future__ import annotations

import json
from typing import Any

ARTICLE_PRICES = """
[prices."claude-3-5-sonnet-20241022"]
input_per_mtok = "3"
output_per_mtok = "15"

[prices."claude-3-5-haiku-20241022"]
input_per_mtok = "1"
output_per_mtok = "5"
"""

THREE_TIERS = """
[[tiers]]
name = "cheap"
candidates = [{ provider = "openai", model = "gpt-4o-mini" }]

[[tiers]]
name = "standard"
candidates = [{ provider = "gemini", model = "gemini-2.0-flash" }]

[[tiers]]
name = "premium"
candidates = [{ provider = "anthropic", model = "claude-3-5-sonnet-20241022" }]

[rules]
premium_features = ["legal-analysis"]
input_token_threshold = 2000
premium_keywords = ["analyze", "compare"]

[rules.classify]
enabled = true
min_input_tokens = 300

[classifier]
provider = "openai"
model = "gpt-4.1-nano"
"""


def line(**fields: Any) -> str:
    return json.dumps(fields)
