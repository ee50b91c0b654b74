from __future__ import annotations

import pickle
from pathlib import Path

import msgspec
import pytest
from arq.connections import ArqRedis

from ladder.keys import ARQ_JOB_PREFIX, Keys
from ladder.messages import TIER_TASK_DECODER, Job, Rejection
from ladder.queueing import deserialize_arq
from policies.config import Policies
from producer.submit import Producer
from tests.helpers import line


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_file_is_routed_into_tier_queues_with_bad_lines_rejected(
    arq_redis: ArqRedis, keys: Keys, policies: Policies, tmp_path: Path
) -> None:
    f = _write(
        tmp_path / "jobs.jsonl",
        [
            line(id="a", prompt="What's my balance?"),
            line(id="b", prompt="Please analyze the churn numbers"),
            "{broken",
            line(id="c", prompt="x", feature="legal-analysis"),
            line(id="d", prompt="tell me about the weather in spring " * 40),
        ],
    )
    rejected: list[Rejection] = []
    report = await Producer(arq_redis, policies, keys).submit_file(f, "b1", rejected.append)
    assert (report.lines, report.accepted, report.rejected, report.duplicates) == (5, 4, 1, 0)
    assert report.routed == {"cheap": 1, "standard": 1, "premium": 1, "classify": 1}
    assert [r.line for r in rejected] == [3]
    for tier, n in report.routed.items():
        assert await arq_redis.zcard(keys.queue(tier)) == n
    assert [i.decode() for i in await arq_redis.lrange(keys.batch_ids("b1"), 0, -1)] == ["a", "b", "c", "d"]


async def test_resubmitting_the_same_ids_runs_nothing_twice(
    arq_redis: ArqRedis, keys: Keys, policies: Policies
) -> None:
    producer = Producer(arq_redis, policies, keys)
    jobs = [Job(id=f"j{i}", prompt="hello") for i in range(1200)]
    first = await producer.submit(jobs, "b1")
    again = await producer.submit(jobs, "b1")
    assert (first.accepted, first.duplicates) == (1200, 0)
    assert (again.accepted, again.duplicates, again.routed) == (0, 1200, {})
    assert await arq_redis.zcard(keys.queue("cheap")) == 1200
    assert await arq_redis.llen(keys.batch_ids("b1")) == 1200


async def test_arq_payload_is_msgpack_not_pickle(arq_redis: ArqRedis, keys: Keys, policies: Policies) -> None:
    await Producer(arq_redis, policies, keys).submit([Job(id="p", prompt="hi", customer="acme")], "b1")
    (task_id,) = await arq_redis.zrange(keys.queue("cheap"), 0, -1)
    raw = await arq_redis.get(ARQ_JOB_PREFIX + task_id.decode())
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)
    payload = deserialize_arq(raw)
    assert payload["f"] == "tier_task"
    task = TIER_TASK_DECODER.decode(payload["a"][0])
    assert (task.job.id, task.job.customer, task.route.tier, task.batch) == ("p", "acme", "cheap", "b1")


async def test_python_api_rejects_an_invalid_job_by_name(arq_redis: ArqRedis, keys: Keys, policies: Policies) -> None:
    with pytest.raises(ValueError, match="job 'x': tier_hint: 'gold' is not a tier"):
        await Producer(arq_redis, policies, keys).submit([Job(id="x", prompt="p", tier_hint="gold")], "b1")


def test_a_worker_reads_tasks_from_newer_and_older_producers() -> None:
    """Schema evolution: fields a newer producer adds are ignored; fields an older one lacks get defaults."""
    task = msgspec.to_builtins(TIER_TASK_DECODER.decode(msgspec.msgpack.encode(_task_dict())))
    newer = dict(_task_dict(), future_field=1)
    newer["job"] = dict(newer["job"], priority="high")
    assert msgspec.to_builtins(TIER_TASK_DECODER.decode(msgspec.msgpack.encode(newer))) == task
    older = _task_dict()
    del older["job"]["customer"], older["strategy"]
    decoded = TIER_TASK_DECODER.decode(msgspec.msgpack.encode(older))
    assert (decoded.job.customer, decoded.strategy) == ("default", "rules-v1")


def _task_dict() -> dict:  # type: ignore[type-arg]
    return {
        "job": {"id": "e", "prompt": "p", "customer": "acme"},
        "batch": "b",
        "route": {"tier": "cheap", "source": "rule", "reason": "default"},
        "first_tier": "cheap",
        "strategy": "s1",
    }
