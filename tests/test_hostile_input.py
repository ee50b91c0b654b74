"""Hostile JSONL into the producer (the path of `ladder enqueue`), against the real test Redis.

Properties, for any mix of good and bad lines over two submits: nothing raises; every bad line is
rejected with its own line number and a reason that names the field or the problem; every good
line's job is in Redis exactly once (queue entry, job record, batch list), whatever the producer
says it did. Duplicate ids: the first occurrence is queued, every later one (in the same file or a
later submit) is skipped, counted and reported with its line number, never rejected.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ladder.keys import ARQ_JOB_PREFIX, Keys
from ladder.messages import JOB_RECORD_DECODER, TIER_TASK_DECODER, Job, Rejection
from ladder.queueing import deserialize_arq
from policies.config import CLASSIFY_QUEUE, Policies, parse_policies
from producer.intake import BOM, JobValidator, max_line_bytes, read_lines
from producer.submit import Producer, SubmitReport
from tests.helpers import THREE_TIERS, ladder

POLICIES = parse_policies(THREE_TIERS)
LIMITS = POLICIES.limits
KEYS = Keys("ladder")
QUEUES = [*POLICIES.tier_names, CLASSIFY_QUEUE]


@dataclass(frozen=True)
class Line:
    raw: bytes  # without its line ending
    job_id: str | None  # a good line's id; None for a bad line
    reasons: tuple[str, ...] = ()  # a bad line's reason contains one of these


def _bad(raw: bytes, *reasons: str) -> Line:
    return Line(raw, None, reasons)


def _dumps(fields: dict[str, object], ascii_only: bool) -> bytes:
    return json.dumps(fields, ensure_ascii=ascii_only).encode()


# A small pool of ids so that duplicates, within a file and across submits, come up often.
ids = st.one_of(
    st.sampled_from([f"job-{i}" for i in range(12)]),
    st.text(min_size=1, max_size=30).filter(lambda s: bool(s.strip())),
)
prompts = st.text(min_size=1, max_size=200).filter(lambda s: bool(s.strip()))


@st.composite
def good_lines(draw: st.DrawFn) -> Line:
    job_id = draw(ids)
    fields: dict[str, object] = {"id": job_id}
    if draw(st.booleans()):
        fields["prompt"] = draw(prompts)
    else:
        roles = st.sampled_from(["system", "user", "assistant"])
        messages = [{"role": draw(roles), "content": draw(prompts)} for _ in range(draw(st.integers(1, 3)))]
        fields["messages"] = messages
    optional: dict[str, st.SearchStrategy[object]] = {
        "customer": st.text(max_size=40),
        "feature": st.sampled_from(["default", "legal-analysis", "faq", "é ✓ 中"]),
        "task": st.sampled_from(["extraction", "summarization", "classification", "generation"]),
        "max_output_tokens": st.integers(1, LIMITS.max_output_tokens),
        "json_schema": st.sampled_from([None, {"type": "object"}, {"$defs": {"a": {}}, "$ref": "#/$defs/a"}]),
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "tier_hint": st.sampled_from([None, *POLICIES.tier_names]),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(values)
    return Line(_dumps(fields, draw(st.booleans())), job_id)


# A value of the wrong type (or an out-of-range one) for each field, and what the reason names.
WRONG = {
    "id": [1, None, [], {"a": 1}, "", "   "],
    "prompt": [5, ["p"], {"x": 1}, "   "],
    "messages": ["hi", [1], [{"role": "user"}], [{"role": "wizard", "content": "x"}], [{"role": 1, "content": "x"}]],
    "customer": [7, None, ["a"]],
    "feature": [1.5, {}, True],
    "task": ["poetry", 3, None],
    "max_output_tokens": ["ten", 1.5, True, 0, -1, 10**30, LIMITS.max_output_tokens + 1],
    "json_schema": [[1], "object", 3, {"type": "objekt"}, {"$ref": "http://127.0.0.1:1/x.json"}, {"$ref": "#/nope"}],
    "metadata": [{"k": 1}, [], "x", {"k": None}],
    "tier_hint": [7, "ultra", CLASSIFY_QUEUE],
}


def _names(reason: str, field: str) -> bool:
    return reason.startswith(field) or f"`$.{field}" in reason


@st.composite
def wrong_type_lines(draw: st.DrawFn) -> Line:
    field = draw(st.sampled_from(sorted(WRONG)))
    fields: dict[str, object] = {"id": "w", "prompt": "p"}
    if field == "messages":
        del fields["prompt"]
    fields[field] = draw(st.sampled_from(WRONG[field]))
    return _bad(_dumps(fields, True), field)


@st.composite
def huge_lines(draw: st.DrawFn) -> Line:
    over = LIMITS.max_prompt_chars + draw(st.sampled_from([1, 1000, 1_600_000]))
    field = draw(st.sampled_from(["prompt", "messages", "id", "customer", "feature", "task", "tier_hint"]))
    fields: dict[str, object] = {"id": "h", "prompt": "p"}
    if field == "messages":
        del fields["prompt"]
        fields["messages"] = [{"role": "user", "content": "x" * (over // 2)}, {"role": "user", "content": "y" * over}]
        return _bad(_dumps(fields, True), "prompt:")
    fields[field] = "z" * (over if field == "prompt" else draw(st.sampled_from([300, over])))
    return _bad(_dumps(fields, True), field)


@st.composite
def invalid_utf8_lines(draw: st.DrawFn) -> Line:
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]))
    where = draw(st.sampled_from(["id", "prompt", "customer"]))
    fields = {"id": "u", "prompt": "p", "customer": "c"}
    raw = _dumps(fields, True).replace(f'"{fields[where]}"'.encode(), b'"a' + bad + b'b"', 1)
    return _bad(raw, "not valid JSON")


@st.composite
def deep_lines(draw: st.DrawFn) -> Line:
    depth = draw(st.sampled_from([65, 200, 1000, 10_000]))
    closed = draw(st.booleans())
    nested = b"[" * depth + (b"]" * depth if closed else b"")
    where = draw(st.sampled_from(["top", "json_schema", "prompt", "metadata", "messages", "schema_objects"]))
    if where == "top":
        return _bad(nested, "Expected `object`")
    if where == "schema_objects":
        schema = b'{"items":' * depth + b"{}" + b"}" * depth
        return _bad(b'{"id":"d","prompt":"p","json_schema":' + schema + b"}", "json_schema")
    if where == "json_schema":
        return _bad(b'{"id":"d","prompt":"p","json_schema":{"x":' + nested + b"}}", "json_schema", "not valid JSON")
    return _bad(b'{"id":"d","prompt":"p","' + where.encode() + b'":' + nested + b"}", where, "not valid JSON")


non_objects = st.sampled_from([b"1", b'"job"', b"null", b"true", b"[]", b"1.5", b'[{"id":"x","prompt":"p"}]']).map(
    lambda raw: _bad(raw, "Expected `object`")
)
blank_lines = st.sampled_from([b"", b" ", b"\t", b"\r", b"  \t \r", BOM, BOM + b"  "]).map(
    lambda raw: _bad(raw, "empty line")
)
broken_json = st.sampled_from(
    [
        b'{"id": "x", "prompt": ',
        b'{"id":"x","prompt":"p"',
        b'{"id":"x","prompt":"p\x00"}',  # a raw NUL byte inside a string
        b"\x00\x00",
        b'{"id":"x","prompt":"p","max_output_tokens":NaN}',
        b'{"id":"\\ud800","prompt":"p"}',  # a lone surrogate escape
        b"{'id': 'x', 'prompt': 'p'}",
        b'{"id":"x","prompt":"p"} trailing',
    ]
).map(lambda raw: _bad(raw, "not valid JSON"))
# Arbitrary bytes: only the no-crash and line-number properties are checked (reason: any).
garbage = st.binary(max_size=80).filter(lambda b: b"\n" not in b).map(lambda raw: _bad(raw, ""))
unknown_field = st.just(_bad(b'{"id":"x","prompt":"p","promt":"q"}', "unknown field `promt`"))


@st.composite
def decorated(draw: st.DrawFn, lines: st.SearchStrategy[Line]) -> Line:
    """A line with a BOM before it or NUL escapes in its text, which a good line survives."""
    line = draw(lines)
    if draw(st.integers(0, 9)) == 0:
        return Line(BOM + line.raw, line.job_id, line.reasons)
    return line


any_line = st.one_of(
    decorated(good_lines()),
    good_lines().map(lambda line: Line(line.raw.replace(b'"prompt": "', b'"prompt": "\\u0000', 1), line.job_id)),
    wrong_type_lines(),
    huge_lines(),
    invalid_utf8_lines(),
    deep_lines(),
    non_objects,
    blank_lines,
    broken_json,
    garbage,
    unknown_field,
)
files = st.lists(any_line, min_size=1, max_size=25)
endings = st.sampled_from([b"\n", b"\r\n"])


def _write(path: Path, lines: list[Line], ending: bytes, final_newline: bool) -> Path:
    # An empty last line without its ending is no line at all: give it one.
    final = final_newline or lines[-1].raw == b""
    path.write_bytes(ending.join(line.raw for line in lines) + (ending if final else b""))
    return path


async def _queued_job_ids(client: redis.asyncio.Redis) -> Counter[str]:
    """Every job id with a task on a tier or classify queue, as often as it is there."""
    found: Counter[str] = Counter()
    for queue in QUEUES:
        for member in await client.zrange(KEYS.queue(queue), 0, -1):
            job_id, _tier, _attempts = member.decode().rsplit("~", 2)
            found[job_id] += 1
    return found


async def _submit_and_check(
    client: redis.asyncio.Redis, path: Path, batch: str, lines: list[Line], seen: list[str]
) -> SubmitReport:
    rejected: list[Rejection] = []
    duplicates: list[tuple[int, str]] = []
    report = await Producer(client, POLICIES, KEYS).submit_file(
        path, batch, rejected.append, on_duplicate=lambda n, i: duplicates.append((n, i))
    )
    want_rejected = [(n, line) for n, line in enumerate(lines, start=1) if line.job_id is None]
    assert [r.line for r in rejected] == [n for n, _ in want_rejected]
    for rejection, (_, line) in zip(rejected, want_rejected, strict=True):
        assert rejection.reason, rejection
        assert any(_names(rejection.reason, r) or r in rejection.reason for r in line.reasons), (
            line.raw[:120],
            line.reasons,
            rejection.reason,
        )
        assert len(rejection.reason) < 1000 and len(rejection.text) <= 500  # bounded, whatever the line
    want_accepted, want_duplicates = [], []
    for n, line in enumerate(lines, start=1):
        if line.job_id is None:
            continue
        if line.job_id in seen:
            want_duplicates.append((n, line.job_id))
        else:
            seen.append(line.job_id)
            want_accepted.append(line.job_id)
    assert duplicates == want_duplicates
    assert (report.lines, report.accepted, report.duplicates, report.rejected) == (
        len(lines),
        len(want_accepted),
        len(want_duplicates),
        len(want_rejected),
    )
    assert [i.decode() for i in await client.lrange(KEYS.batch_ids(batch), 0, -1)] == want_accepted
    return report


async def _check_redis_holds_each_once(client: redis.asyncio.Redis, accepted: list[str]) -> None:
    assert await _queued_job_ids(client) == Counter(accepted)
    records = [key async for key in client.scan_iter(match=KEYS.job("*"), count=1000)]
    assert len(records) == len(accepted)
    for job_id in accepted:
        record = JOB_RECORD_DECODER.decode(await client.get(KEYS.job(job_id)))
        assert (record.id, record.status) == (job_id, "queued")


# No example database: it would be a folder in the work tree, and CI starts fresh anyway.
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=files, second=files, ending=endings, final_newline=st.booleans())
def test_hostile_lines_are_rejected_by_number_and_good_ones_queued_exactly_once(
    clean_redis: str, tmp_path: Path, first: list[Line], second: list[Line], ending: bytes, final_newline: bool
) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(clean_redis)
        try:
            await client.flushdb()
            seen: list[str] = []
            for batch, lines in (("b1", first), ("b2", second)):
                path = _write(tmp_path / f"{batch}.jsonl", lines, ending, final_newline)
                await _submit_and_check(client, path, batch, lines, seen)
            await _check_redis_holds_each_once(client, seen)
        finally:
            await client.aclose()

    asyncio.run(run())


async def test_duplicates_across_chunks_keep_the_first_occurrence(
    clean_redis: str, tmp_path: Path, policies: Policies
) -> None:
    """Chunks are pipelined, and the first call may have to load the Lua script (NOSCRIPT, load,
    call again): the first occurrence of an id still wins, and later ones are named by line."""
    redis.Redis.from_url(clean_redis).script_flush()
    lines = [json.dumps({"id": f"j{i % 700}", "prompt": f"copy {i // 700}"}) for i in range(1400)]
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(lines) + "\n")
    client = redis.asyncio.Redis.from_url(clean_redis)
    duplicates: list[tuple[int, str]] = []
    report = await Producer(client, policies, KEYS).submit_file(
        path, "b", lambda r: None, on_duplicate=lambda n, i: duplicates.append((n, i))
    )
    assert (report.accepted, report.duplicates) == (700, 700)
    assert duplicates == [(n, f"j{(n - 1) % 700}") for n in range(701, 1401)]
    record = JOB_RECORD_DECODER.decode(await client.get(KEYS.job("j5")))
    assert record.batch == "b"
    (member,) = [m for m in await client.zrange(KEYS.queue("cheap"), 0, -1) if m.startswith(b"j5~")]
    task = TIER_TASK_DECODER.decode(deserialize_arq(await client.get(ARQ_JOB_PREFIX + member.decode()))["a"][0])
    assert task.job.prompt == "copy 0"
    await client.aclose()


def test_a_line_longer_than_any_job_is_rejected_without_being_read_whole(tmp_path: Path) -> None:
    cap = max_line_bytes(LIMITS)
    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:
        f.write(b'{"id":"ok","prompt":"p"}\n')
        f.write(b'{"id":"long","prompt":"' + b"x" * (cap + 3_000_000) + b'"}\n')
        f.write(b'{"id":"after","prompt":"p"}')
    read = list(read_lines(path, cap))
    assert [(n, len(raw) <= cap + 1) for n, raw, _ in read] == [(1, True), (2, True), (3, True)]
    assert read[-1][2] == path.stat().st_size
    parsed = [JobValidator(POLICIES).parse_line(n, raw) for n, raw, _ in read]
    assert isinstance(parsed[1], Rejection) and parsed[1].line == 2
    assert parsed[1].reason.startswith("line: longer than")
    assert [getattr(p, "id", None) for p in parsed] == ["ok", None, "after"]


def test_schema_limits_keep_the_worker_checks_safe() -> None:
    """What intake lets through, the answer check can run without recursing out or fetching."""
    v = JobValidator(POLICIES)
    deep_ok = {"type": "array"}
    for _ in range(30):
        deep_ok = {"type": "array", "items": deep_ok}
    good = v.parse_line(1, _dumps({"id": "s", "prompt": "p", "json_schema": deep_ok}, True))
    assert not isinstance(good, Rejection)
    local = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    assert not isinstance(v.parse_line(2, _dumps({"id": "r", "prompt": "p", "json_schema": local}, True)), Rejection)
    remote = v.parse_line(3, _dumps({"id": "r", "prompt": "p", "json_schema": {"$ref": "https://x.test/s"}}, True))
    assert isinstance(remote, Rejection) and "$ref 'https://x.test/s' does not resolve" in remote.reason


def test_ladder_enqueue_names_each_hostile_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(
        b"\r\n".join(
            [
                BOM + b'{"id":"a","prompt":"hello"}',
                b'{"id":"b","prompt":"caf\xe9"}',  # Latin-1, not UTF-8
                b"[" * 10_000,
                b'{"id":"c","prompt":"p","json_schema":{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
                b'{"id":"a","prompt":"again"}',
                b"",
                b'{"id":"d","prompt":"p","max_output_tokens":"many"}',
                b'{"id":"e","prompt":"p\x00"}',
                b'{"id":"f","messages":[{"role":"user","content":"hi"}]}',
            ]
        )
        + b"\r\n"
    )
    result = ladder(cli_env, "enqueue", str(path), "--batch", "hostile", "--format", "json")
    summary = json.loads(result.stdout)
    assert (summary["lines"], summary["accepted"], summary["duplicates"], summary["rejected"]) == (9, 2, 1, 6)
    rejects = [json.loads(r) for r in (tmp_path / "hostile.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
        (2, "not valid JSON"),
        (3, "invalid job"),
        (4, "json_schema"),
        (6, "empty line"),
        (7, "invalid job"),
        (8, "not valid JSON"),
    ]
    assert "`$.max_output_tokens`" in rejects[4]["reason"]
    table = ladder(cli_env, "enqueue", str(path), "--batch", "again")
    assert "line 4: json_schema: nested deeper than 64 levels" in table.stderr
    assert "0 accepted, 3 duplicates skipped, 6 rejected" in " ".join(table.stdout.split())


@pytest.mark.parametrize("field", ["id", "customer", "feature"])
def test_python_api_names_an_oversized_name(field: str, policies: Policies) -> None:
    fields = {"id": "x", "prompt": "p", field: "n" * 257}
    assert JobValidator(policies).problem(Job(**fields)) == f"{field}: 257 characters is over the limit of 256"
