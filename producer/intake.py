"""Reading job lines: each line becomes a Job or a Rejection that names the line and the reason.

Hostile input is rejected here, never passed on: a line longer than any valid job could be is not
read into memory whole, a json_schema nested deeper than the checks can recurse or pointing at a
$ref that cannot be resolved is refused (it would raise in the worker after the paid call), and
names that become Redis keys and ClickHouse labels have a bounded size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import referencing.exceptions
from referencing import Registry
from referencing.jsonschema import DRAFT202012, specification_with

from ladder.messages import Job, Rejection
from policies.answer_checks import schema_problem
from policies.config import Limits, Policies


class JobLine(Job, frozen=True, forbid_unknown_fields=True):
    """A job as read from a file: strict, so a misspelled field is an error, not silently dropped.
    Between processes Job stays lenient, so newer producers can add fields older workers ignore."""


_job_decoder = msgspec.json.Decoder(JobLine)
REJECT_TEXT_CHARS = 500
REASON_CHARS = 300
BOM = b"\xef\xbb\xbf"
MAX_NAME_CHARS = 256  # id, customer, feature: Redis keys and ClickHouse labels, not content
# jsonschema recurses several frames per level: 64 levels stays far inside Python's recursion limit.
MAX_SCHEMA_DEPTH = 64
ROLES = ("system", "user", "assistant")


def max_line_bytes(limits: Limits) -> int:
    """The longest line a valid job can take: its text escaped as \\uXXXX surrogate pairs (12 bytes
    a character at worst), plus 1 MiB for every other field."""
    return 12 * limits.max_prompt_chars + (1 << 20)


class JobValidator:
    """Checks a decoded job against the policies: what msgspec's types cannot say."""

    def __init__(self, policies: Policies) -> None:
        self._tiers = policies.tier_names
        self._limits = policies.limits
        self.max_line_bytes = max_line_bytes(policies.limits)

    def problem(self, job: Job) -> str | None:
        return _names_problem(job) or self._content_problem(job) or _schema_field_problem(job.json_schema)

    def _content_problem(self, job: Job) -> str | None:
        if job.prompt is None and not job.messages:
            return "prompt: a job needs a prompt or messages"
        if job.prompt is not None and job.messages:
            return "prompt: give either prompt or messages, not both"
        for i, message in enumerate(job.messages or []):
            if message.role not in ROLES:
                return f"messages[{i}].role: '{message.role[:40]}' is not one of {', '.join(ROLES)}"
        if job.tier_hint is not None and job.tier_hint not in self._tiers:
            return f"tier_hint: '{job.tier_hint[:40]}' is not a tier ({', '.join(self._tiers)})"
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
        if job.deadline is not None and job.deadline.tzinfo is None:
            return "deadline: give a timezone (e.g. 2026-12-01T09:00:00Z)"
        return None

    def parse_line(self, number: int, raw: bytes) -> Job | Rejection:
        if len(raw) > self.max_line_bytes:
            return Rejection(
                number, f"line: longer than {self.max_line_bytes:,} bytes, more than any valid job takes", excerpt(raw)
            )
        text = raw.strip().removeprefix(BOM).strip()  # a BOM starts a file, or each of several joined by cat
        if not text:
            return Rejection(number, "empty line", "")
        try:
            job = _job_decoder.decode(text)
        except msgspec.ValidationError as e:
            return Rejection(number, f"invalid job: {_shortened(str(e))}", excerpt(text))
        except msgspec.DecodeError as e:
            return Rejection(number, f"not valid JSON: {_shortened(str(e))}", excerpt(text))
        except RecursionError:
            # Every other field's type stops msgspec at the first nested value; only json_schema
            # (free-form JSON) is decoded level by level until Python's recursion limit.
            return Rejection(number, f"json_schema: nested deeper than {MAX_SCHEMA_DEPTH} levels", excerpt(text))
        problem = self.problem(job)
        if problem is not None:
            return Rejection(number, problem, excerpt(text))
        return job


def _names_problem(job: Job) -> str | None:
    if not job.id.strip():
        return "id: must not be empty"
    for field, value in (("id", job.id), ("customer", job.customer), ("feature", job.feature)):
        if len(value) > MAX_NAME_CHARS:
            return f"{field}: {len(value):,} characters is over the limit of {MAX_NAME_CHARS}"
    return None


def _schema_field_problem(schema: dict[str, Any] | None) -> str | None:
    if schema is None:
        return None
    depth, refs = _depth_and_refs(schema)
    if depth > MAX_SCHEMA_DEPTH:
        return f"json_schema: nested deeper than {MAX_SCHEMA_DEPTH} levels"
    bad_schema = schema_problem(schema)
    if bad_schema is not None:
        return f"json_schema: not a valid JSON Schema: {bad_schema}"
    return _unresolvable_ref(schema, refs)


def _depth_and_refs(value: Any) -> tuple[int, list[str]]:
    """How deep `value` nests and every "$ref" in it, without recursion (the input may be hostile)."""
    deepest, refs = 0, []
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_SCHEMA_DEPTH:  # past the limit the answer is known: stop walking
            stack.extend((child, depth + 1) for child in children)
    return deepest, refs


def _unresolvable_ref(schema: dict[str, Any], refs: list[str]) -> str | None:
    """A $ref the answer check could not follow: nothing is fetched, so only references inside the
    schema itself resolve."""
    if not refs:
        return None
    dialect = schema.get("$schema")
    spec = specification_with(dialect, default=DRAFT202012) if isinstance(dialect, str) else DRAFT202012
    resolver = Registry().resolver_with_root(spec.create_resource(schema))
    for ref in refs:
        try:
            resolver.lookup(ref)
        except (referencing.exceptions.Unresolvable, referencing.exceptions.NoSuchResource):
            return f"json_schema: $ref '{ref[:80]}' does not resolve inside the schema (nothing is fetched)"
    return None


def _shortened(message: str) -> str:
    """msgspec quotes the bad value (an enum value can be megabytes) and names the field at the end."""
    if len(message) <= REASON_CHARS:
        return message
    return f"{message[: REASON_CHARS // 2]}...{message[-REASON_CHARS // 2 :]}"


def excerpt(raw: bytes) -> str:
    """The start of a bad line, as kept with its rejection."""
    return raw[:REJECT_TEXT_CHARS].decode("utf-8", errors="replace")


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """(line number from 1, raw line, bytes read so far), streaming: memory stays flat in file size.

    With `max_bytes`, a longer line is not held whole: its first max_bytes + 1 bytes stand for it
    (so the parser can reject it as too long) and the rest is skipped.
    """
    done = 0
    limit = -1 if max_bytes is None else max_bytes + 1
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(limit):
            number += 1
            done += len(raw)
            if not raw.endswith(b"\n") and len(raw) == limit:
                done += _skip_rest_of_line(f)
            yield number, raw, done


def _skip_rest_of_line(f: BinaryIO) -> int:
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def parse_jobs(validator: JobValidator, lines: Iterable[tuple[int, bytes]]) -> Iterator[Job | Rejection]:
    for number, raw in lines:
        yield validator.parse_line(number, raw)
