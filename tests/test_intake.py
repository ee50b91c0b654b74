from __future__ import annotations

from pathlib import Path

from ladder.messages import Job, Rejection
from policies.config import Policies
from producer.intake import JobValidator, read_lines
from tests.helpers import line

BAD_LINES = {
    "broken json": ('{"id": "x", "prompt": ', "not valid JSON"),
    "missing prompt": (line(id="m"), "prompt: a job needs a prompt or messages"),
    "unknown tier hint": (line(id="t", prompt="hi", tier_hint="ultra"), "tier_hint: 'ultra' is not a tier"),
    "wrong type": (line(id="w", prompt="hi", max_output_tokens="ten"), "Expected `int`, got `str`"),
    "empty line": ("", "empty line"),
    "oversized prompt": (line(id="o", prompt="x" * 400_001), "over the limit of 400,000"),
    "missing id": (line(prompt="hi"), "missing required field `id`"),
    "unknown task kind": (line(id="k", prompt="hi", task="poetry"), "Invalid enum value 'poetry'"),
    "both prompt and messages": (
        '{"id":"b","prompt":"a","messages":[{"role":"user","content":"b"}]}',
        "either prompt or messages",
    ),
    "zero output tokens": (line(id="z", prompt="hi", max_output_tokens=0), "max_output_tokens: 0 is outside"),
    "broken json schema": (line(id="s", prompt="hi", json_schema={"type": "objekt"}), "json_schema: not a valid"),
}


def test_every_bad_line_is_named_with_its_number_and_reason(policies: Policies) -> None:
    v = JobValidator(policies)
    for number, (name, (text, reason)) in enumerate(BAD_LINES.items(), start=10):
        got = v.parse_line(number, text.encode())
        assert isinstance(got, Rejection), name
        assert got.line == number
        assert reason in got.reason, (name, got.reason)


def test_good_lines_keep_every_field(policies: Policies) -> None:
    v = JobValidator(policies)
    job = v.parse_line(
        1,
        line(
            id="g", customer="acme", feature="f", task="extraction", prompt="p",
            max_output_tokens=20, json_schema={"type": "object"}, metadata={"k": "v"}, tier_hint="premium",
        ).encode(),
    )  # fmt: skip
    assert isinstance(job, Job)
    assert (job.customer, job.feature, job.task, job.max_output_tokens) == ("acme", "f", "extraction", 20)
    assert job.json_schema == {"type": "object"} and job.metadata == {"k": "v"} and job.tier_hint == "premium"


def test_lines_are_streamed_with_numbers_and_progress(tmp_path: Path) -> None:
    f = tmp_path / "j.jsonl"
    f.write_bytes(b"a\n\nccc\n")
    assert [(n, raw, done) for n, raw, done in read_lines(f)] == [(1, b"a\n", 2), (2, b"\n", 3), (3, b"ccc\n", 7)]
