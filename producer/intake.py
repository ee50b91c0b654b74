"""Reading job lines: each line becomes a Job or a Rejection that names the line and the reason."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from ladder.messages import Job, Rejection
from policies.answer_checks import schema_problem
from policies.config import Policies


class JobLine(Job, frozen=True, forbid_unknown_fields=True):
    """A job as read from a file: strict, so a misspelled field is an error, not silently dropped.
    Between processes Job stays lenient, so newer producers can add fields older workers ignore."""


_job_decoder = msgspec.json.Decoder(JobLine)
REJECT_TEXT_CHARS = 500


class JobValidator:
    """Checks a decoded job against the policies: what msgspec's types cannot say."""

    def __init__(self, policies: Policies) -> None:
        self._tiers = policies.tier_names
        self._limits = policies.limits

    def problem(self, job: Job) -> str | None:
        if not job.id.strip():
            return "id: must not be empty"
        if job.prompt is None and not job.messages:
            return "prompt: a job needs a prompt or messages"
        if job.prompt is not None and job.messages:
            return "prompt: give either prompt or messages, not both"
        if job.tier_hint is not None and job.tier_hint not in self._tiers:
            return f"tier_hint: '{job.tier_hint}' is not a tier ({', '.join(self._tiers)})"
        if job.json_schema is not None:
            bad_schema = schema_problem(job.json_schema)
            if bad_schema is not None:
                return f"json_schema: not a valid JSON Schema: {bad_schema}"
        if not 1 <= job.max_output_tokens <= self._limits.max_output_tokens:
            return f"max_output_tokens: {job.max_output_tokens} is outside 1..{self._limits.max_output_tokens}"
        text = job.text()
        size = len(text)
        if size > self._limits.max_prompt_chars:
            return (
                f"prompt: {size:,} characters is over the limit of {self._limits.max_prompt_chars:,} "
                "(limits.max_prompt_chars)"
            )
        if not text.strip():
            return "prompt: must not be empty"
        return None

    def parse_line(self, number: int, raw: bytes) -> Job | Rejection:
        text = raw.strip()
        if not text:
            return Rejection(number, "empty line", "")
        try:
            job = _job_decoder.decode(text)
        except msgspec.ValidationError as e:
            return Rejection(number, f"invalid job: {e}", excerpt(text))
        except msgspec.DecodeError as e:
            return Rejection(number, f"not valid JSON: {e}", excerpt(text))
        problem = self.problem(job)
        if problem is not None:
            return Rejection(number, problem, excerpt(text))
        return job


def excerpt(raw: bytes) -> str:
    """The start of a bad line, as kept with its rejection."""
    return raw[:REJECT_TEXT_CHARS].decode("utf-8", errors="replace")


def read_lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(line number from 1, raw line, bytes read so far), streaming: memory stays flat in file size."""
    done = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            done += len(raw)
            yield number, raw, done


def parse_jobs(validator: JobValidator, lines: Iterable[tuple[int, bytes]]) -> Iterator[Job | Rejection]:
    for number, raw in lines:
        yield validator.parse_line(number, raw)
