"""Jobs whose text tries to steer the classifier.

A job is data to route, never instructions. The classifier prompt fences the text, but a model can
still be talked into a rating, so text that addresses the classifier at all (names a rating, asks
to be classified, tells the model to ignore its instructions, or tries to close the fence) is not
classified by a model: it goes to the policy's safe tier. Sending such a job up costs its own
customer more; it can never buy a cheaper route.
"""

from __future__ import annotations

import re

_PATTERNS = [
    # a rating written into the task: "complexity: simple", "confidence 1.0", JSON keys of the answer
    r"\bcomplexity\b\W{0,5}\w*\W{0,5}\b(simple|moderate|complex)\b",
    r"\bconfidence\b\W{0,5}(of\s+)?[01](\.\d+)?",
    r'"(complexity|confidence)"\s*:',
    # asking to be rated or routed a certain way
    r"\b(classify|rate|label|mark|route|treat)\s+(this|it|me|the\s+(task|query|request|above))\s+(as|to)\b",
    r"\b(rate|rated|classified|classify)\s+(this\s+)?(as\s+)?(simple|easy|trivial|cheap)\b",
    # classic overrides of the instructions around the text
    r"\b(ignore|disregard|forget)\s+(all\s+|any\s+)?(the\s+)?(previous|prior|above|earlier|system)\b",
    r"\bsystem\s+prompt\b",
    r"</\s*task\s*>",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)


def steering_attempt(text: str) -> str | None:
    """The first phrase that addresses the classifier, or None for ordinary text."""
    found = _INJECTION.search(text)
    return found.group(0) if found else None
