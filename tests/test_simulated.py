"""The stand-in model of the embedded demo: deterministic, labelled, and failing only on purpose."""

from __future__ import annotations

from ladder.messages import Message
from worker.provider import CompletionRequest, Transient
from worker.simulated_provider import SimulatedProvider


def _request(text: str, max_tokens: int = 100, json_mode: bool = False) -> CompletionRequest:
    return CompletionRequest("gpt-4o-mini", [Message("user", text)], max_tokens, json_mode)


async def test_answers_are_labelled_deterministic_and_fit_their_budget() -> None:
    sim = SimulatedProvider("openai")
    long_prompt = "Classify this support ticket as billing, bug or account: my card was charged twice."
    a = await sim.complete(_request(long_prompt, max_tokens=10))
    assert a == await sim.complete(_request(long_prompt, max_tokens=10))
    assert a.text.startswith("[simulated gpt-4o-mini]")
    assert len(a.text) <= 40 and a.finish_reason == "stop"  # a short budget gets a short answer, not a cut one
    assert a.input_tokens > 0 and a.output_tokens > 0


async def test_failures_happen_at_the_configured_rate_only() -> None:
    never, sometimes = SimulatedProvider("openai", 0.0), SimulatedProvider("openai", 0.2)
    failed = 0
    for i in range(500):
        await never.complete(_request(f"question {i}"))
        try:
            await sometimes.complete(_request(f"question {i}"))
        except Transient:
            failed += 1
    assert 60 <= failed <= 140  # 20% of 500, give or take


async def test_json_mode_gets_a_classifier_shaped_answer() -> None:
    from worker.classifier_worker import parse_answer

    answer = await SimulatedProvider("openai").complete(_request("short task", json_mode=True))
    parsed = parse_answer(answer.text)
    assert parsed is not None and parsed.complexity == "simple"
