"""A stand-in model for the embedded demo when a provider has no API key.

Deterministic: the same prompt gives the same answer and usage. A small, deterministic share of
calls fails, so the demo shows escalation. Every answer starts with "[simulated", and every
outcome row it produces is flagged `simulated`, so it can never pass for a real run.
"""

from __future__ import annotations

import hashlib
import json

from policies.tokens import estimate_tokens
from worker.provider import Completion, CompletionRequest, Transient


class SimulatedProvider:
    def __init__(self, name: str, failure_rate: float = 0.0) -> None:
        self.name = name
        self._failure_per_mille = int(failure_rate * 1000)

    async def complete(self, request: CompletionRequest) -> Completion:
        text = "\n".join(m.content for m in request.messages)
        digest = hashlib.blake2b(f"{request.model}\n{text}".encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") % 1000 < self._failure_per_mille:
            raise Transient(f"simulated failure of {request.model}", status=500)
        last = request.messages[-1].content if request.messages else ""
        if request.json_mode:
            answer = _simulated_rating(last, digest)
        else:
            answer = f"[simulated {request.model}] " + " ".join(last.split()[:40])
        # A well-behaved model answers within its budget: the simulated one shortens its answer to fit
        # rather than being cut off, so the demo's escalations come only from its deliberate failures.
        limit = request.max_output_tokens * 4
        if len(answer) > limit:
            answer = answer[:limit].rsplit(" ", 1)[0] if " " in answer[:limit] else answer[:limit]
        finish = "stop"
        return Completion(
            text=answer,
            input_tokens=estimate_tokens(text),
            output_tokens=estimate_tokens(answer),
            finish_reason=finish,
        )

    async def aclose(self) -> None:
        return None


def _simulated_rating(text: str, digest: bytes) -> str:
    """A classifier-shaped JSON answer: longer texts rate harder, with a deterministic wobble."""
    wobble = digest[0] / 255 * 0.2
    if len(text) < 1200:
        complexity, confidence = "simple", 0.75 + wobble
    elif len(text) < 3000:
        complexity, confidence = "moderate", 0.65 + wobble
    else:
        complexity, confidence = "complex", 0.7 + wobble
    return json.dumps({"complexity": complexity, "confidence": round(confidence, 2), "reason": "simulated"})
