"""Shared test helpers: policies text, job lines, and a Settings object for the test services."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

# Recognizable fake keys, shaped like real ones, with the canary marker: tests/canary.py fails any
# test where it reaches output, a log, a row or a file.
FAKE_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-LADDERCANARY-anthropic-0001",
    "OPENAI_API_KEY": "sk-proj-LADDERCANARY-openai-0002",
    "GEMINI_API_KEY": "AIzaSyLADDERCANARY-gemini-0003",
}


def ladder(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `ladder` command in its own process, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "ladder.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ladder {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


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
