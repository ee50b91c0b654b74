"""Metrics and probes: queue gauges against known arq state, counters against the outcome rows of a
real run, and the HTTP endpoints of real `ladder exporter`, `ladder worker` and `ladder sink` processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ladder.app import open_app
from ladder.keys import Keys
from ladder.messages import Job
from ladder.settings import Settings
from policies.config import Policies
from producer.submit import Producer
from tests.fake_provider import FakeProvider
from tests.helpers import FAKE_KEYS, THREE_TIERS, line
from tests.pipeline import process
from tests.processes import free_port, http_get
from worker.clickhouse import ClickHouse
from worker.health import Heartbeats, ProbeServer, reason
from worker.metrics import BatchLaneGauges, DeadLetters, QueueDepth, SinkLag
from worker.tier_worker import tier_worker

QUEUES = ["cheap", "standard", "premium", "classify", "shadow"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """Every sample of a /metrics page, by name and sorted labels (the page must parse)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def _metrics_page(server: ProbeServer) -> str:
    status, _, body = await server.answer(b"GET /metrics HTTP/1.1")
    assert status == 200
    return body.decode()


async def _enqueue(redis: ArqRedis, policies: Policies, keys: Keys, tier: str, n: int, prefix: str) -> list[str]:
    jobs = [Job(id=f"{prefix}{i}", prompt="hi", tier_hint=tier) for i in range(n)]
    await Producer(redis, policies, keys).submit(jobs, "b1")
    return [m.decode() for m in await redis.zrange(keys.queue(tier), 0, -1) if m.decode().startswith(prefix)]


# --- gauges read from Redis -----------------------------------------------------------------------


async def test_queue_gauges_count_ready_deferred_and_in_progress_jobs_exactly(
    arq_redis: ArqRedis, keys: Keys, policies: Policies
) -> None:
    cheap = await _enqueue(arq_redis, policies, keys, "cheap", 5, "c")
    await _enqueue(arq_redis, policies, keys, "premium", 2, "p")
    later = int(time.time() * 1000) + 3_600_000
    await arq_redis.zadd(keys.queue("cheap"), {cheap[0]: later}, xx=True)  # deferred an hour
    await arq_redis.set(f"arq:in-progress:{cheap[1]}", b"1", px=60_000)  # claimed by a worker
    await arq_redis.set("arq:in-progress:not-queued-here", b"1", px=60_000)  # another queue's job
    server = ProbeServer(CollectorRegistry(), ready={}, gauges=[QueueDepth(arq_redis, keys, QUEUES)])

    samples = _samples(await _metrics_page(server))

    expected = {"cheap": (3, 1, 1), "premium": (2, 0, 0), "standard": (0, 0, 0), "classify": (0, 0, 0),
                "shadow": (0, 0, 0)}  # fmt: skip
    for queue, (ready, deferred, running) in expected.items():
        assert _value(samples, "ladder_queue_ready_jobs", queue=queue) == ready, queue
        assert _value(samples, "ladder_queue_deferred_jobs", queue=queue) == deferred, queue
        assert _value(samples, "ladder_queue_in_progress_jobs", queue=queue) == running, queue


async def test_in_progress_jobs_are_looked_for_among_the_first_due_jobs_only(
    arq_redis: ArqRedis, keys: Keys, policies: Policies
) -> None:
    cheap = await _enqueue(arq_redis, policies, keys, "cheap", 4, "c")
    await arq_redis.zadd(keys.queue("cheap"), {cheap[3]: 1}, xx=True)  # the oldest score: head of the queue
    await arq_redis.set(f"arq:in-progress:{cheap[3]}", b"1", px=60_000)
    gauges = QueueDepth(arq_redis, keys, ["cheap"], scan=1)
    await gauges.refresh()
    samples = {(m.name, s.labels["queue"]): s.value for m in gauges.collect() for s in m.samples}
    assert samples[("ladder_queue_ready_jobs", "cheap")] == 3
    assert samples[("ladder_queue_in_progress_jobs", "cheap")] == 1


async def test_sink_lag_and_dead_letters_come_from_the_streams(arq_redis: ArqRedis, keys: Keys) -> None:
    server = ProbeServer(CollectorRegistry(), ready={}, gauges=[SinkLag(arq_redis, keys), DeadLetters(arq_redis, keys)])
    samples = _samples(await _metrics_page(server))
    assert _value(samples, "ladder_sink_stream_length") == 0
    assert _value(samples, "ladder_sink_oldest_pending_seconds") == 0  # no stream, no group yet
    assert _value(samples, "ladder_dead_letters") == 0

    now_ms = int(time.time() * 1000)
    for i, age_ms in enumerate((5_000, 2_000, 1_000)):
        await arq_redis.xadd(keys.outcomes, {"e": b"x"}, id=f"{now_ms - age_ms}-{i}")
    await arq_redis.xgroup_create(keys.outcomes, keys.sink_group, id="0")
    await arq_redis.xreadgroup(keys.sink_group, "sink-1", {keys.outcomes: ">"}, count=2)  # delivered, unacked
    for _ in range(2):
        await arq_redis.xadd(keys.deadletter, {"d": b"x"})

    samples = _samples(await _metrics_page(server))
    assert _value(samples, "ladder_sink_stream_length") == 3
    assert 5 <= (_value(samples, "ladder_sink_oldest_pending_seconds") or 0) < 30
    assert _value(samples, "ladder_dead_letters") == 2


async def test_batch_lane_gauges_count_waiting_jobs_open_batches_and_the_oldest_ones_age(
    arq_redis: ArqRedis, keys: Keys
) -> None:
    gauges = BatchLaneGauges(arq_redis, keys, ["cheap", "standard", "premium"])
    server = ProbeServer(CollectorRegistry(), ready={}, gauges=[gauges])
    samples = _samples(await _metrics_page(server))
    for tier in ("cheap", "standard", "premium"):
        assert _value(samples, "ladder_batch_lane_waiting_jobs", tier=tier) == 0, tier
    assert _value(samples, "ladder_batch_lane_open_batches") == 0
    assert _value(samples, "ladder_batch_lane_oldest_open_seconds") == 0  # nothing open: 0, not absent
    assert _value(samples, "ladder_batch_lane_lease_held") == 0

    await arq_redis.rpush(keys.lane_pending("cheap"), b"t1", b"t2", b"t3")  # type: ignore[misc]
    await arq_redis.rpush(keys.lane_pending("premium"), b"t4")  # type: ignore[misc]
    await arq_redis.rpush(keys.lane_pending("other"), b"t5")  # type: ignore[misc]  # not a tier here
    now = time.time()
    await arq_redis.zadd(keys.lane_open, {"d-old": now - 7200, "d-new": now - 60})
    await arq_redis.set(keys.lane_leader, b"holder", px=60_000)

    samples = _samples(await _metrics_page(server))
    waiting = {s[1][0][1]: v for s, v in samples.items() if s[0] == "ladder_batch_lane_waiting_jobs"}
    assert waiting == {"cheap": 3, "standard": 0, "premium": 1}
    assert _value(samples, "ladder_batch_lane_open_batches") == 2
    assert 7200 <= (_value(samples, "ladder_batch_lane_oldest_open_seconds") or 0) < 7260  # the oldest draft
    assert _value(samples, "ladder_batch_lane_lease_held") == 1

    await arq_redis.zrem(keys.lane_open, "d-old", "d-new")
    await arq_redis.delete(keys.lane_leader)
    samples = _samples(await _metrics_page(server))
    assert _value(samples, "ladder_batch_lane_open_batches") == 0
    assert _value(samples, "ladder_batch_lane_oldest_open_seconds") == 0
    assert _value(samples, "ladder_batch_lane_lease_held") == 0


async def test_gauges_that_cannot_be_read_are_left_out_not_stale(arq_redis: ArqRedis, keys: Keys) -> None:
    gauges = DeadLetters(arq_redis, keys)
    await gauges.refresh()
    assert [m.name for m in gauges.collect()] == ["ladder_dead_letters"]
    await arq_redis.set(keys.deadletter, b"not a stream")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await gauges.refresh()
    assert list(gauges.collect()) == []


# --- counters -------------------------------------------------------------------------------------

SHADOW_ALL = "\n[shadow]\nenabled = true\nsample = 1.0\n"


@pytest.fixture
def shadow_settings(settings_env: dict[str, str], tmp_path: Path, clickhouse: ClickHouse, chdb_url: str) -> Settings:
    path = tmp_path / "shadow_policies.toml"
    path.write_text(THREE_TIERS + SHADOW_ALL)
    env = dict(settings_env, CLICKHOUSE_URL=chdb_url, CLICKHOUSE_DATABASE=clickhouse.database)
    return Settings.from_env(str(path), env)


async def test_call_and_cost_counters_equal_the_outcome_rows_of_a_run(
    shadow_settings: Settings, fake: FakeProvider, tmp_path: Path
) -> None:
    fake.reply("gpt-4.1-nano", '{"complexity": "moderate", "confidence": 0.7, "reason": "clear"}')
    fake.fail("gpt-4o-mini", status=500, times=1)  # one escalation, with its error class
    lines = [
        line(id="a", prompt="What's my balance?"),
        line(id="b", prompt="Extract the date: paid on 2024-03-01", task="extraction"),
        line(id="c", prompt="Write about the spring weather in the valley. " * 40),  # classified
        line(id="d", prompt="Is this clause enforceable?", feature="legal-analysis"),
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    async with open_app(shadow_settings) as app:
        await process(app, jobs, "m1")
        rows = app.clickhouse().query(
            "SELECT tier, provider, model, status, error_class, route_source, count(), sum(cost) "
            "FROM {db}.outcomes FINAL GROUP BY tier, provider, model, status, error_class, route_source"
        )
        samples = _samples(await _metrics_page(ProbeServer(app.metrics.registry, ready={})))

    routes = {r[5] for r in rows}
    assert {"classifier", "escalation", "shadow"} <= routes  # every kind of call took part
    assert any(r[3] == "escalated" and r[4] for r in rows)
    calls = {k: v for k, v in samples.items() if k[0] == "ladder_calls_total"}
    assert calls == {
        ("ladder_calls_total", tuple(sorted(zip(
            ("tier", "provider", "model", "status", "error_class", "route"), r[:6], strict=True
        )))): r[6]
        for r in rows
    }  # fmt: skip
    costs: dict[tuple[str, ...], Decimal] = {}
    for tier, provider, model, _, _, route, _, cost in rows:
        costs[(tier, provider, model, route)] = costs.get((tier, provider, model, route), Decimal(0)) + Decimal(cost)
    for (tier, provider, model, route), cost in costs.items():
        counted = _value(samples, "ladder_cost_usd_total", tier=tier, provider=provider, model=model, route=route)
        assert counted == pytest.approx(float(cost), rel=1e-9, abs=1e-12)
    total_rows = sum(r[6] for r in rows)
    assert _value(samples, "ladder_sink_inserted_total") == total_rows
    assert (_value(samples, "ladder_sink_batches_total") or 0) >= 1
    assert _value(samples, "ladder_sink_malformed_total") == 0
    # Every tier and shadow call waited for its lane (the classifier's one call does not).
    waits = sum(v for (name, _), v in samples.items() if name == "ladder_rate_limit_wait_seconds_count")
    assert waits == sum(r[6] for r in rows if r[0] != "classify")


# --- probes ---------------------------------------------------------------------------------------


def test_a_probe_reason_is_one_line_without_credentials() -> None:
    error = ConnectionError("Error connecting to redis://user:hunter2-SECRET@10.0.0.1:6379/0.\nRefused")
    said = reason("redis", error)
    assert said == "redis: ConnectionError: Error connecting to redis://***@10.0.0.1:6379/0. Refused"
    assert reason("clickhouse", TimeoutError()) == "clickhouse: timed out"


async def test_healthz_fails_when_a_watched_worker_stops_polling(settings: Settings) -> None:
    async with open_app(settings) as app:
        worker = tier_worker(app.tier_runtime(), "cheap", handle_signals=False)
        beats = Heartbeats(max_age=0.05)
        server = ProbeServer(app.metrics.registry, ready={"redis": app.redis.ping}, live=[beats])
        beats.watch(worker)
        assert await server.answer(b"GET /healthz HTTP/1.1") == (200, "text/plain; charset=utf-8", b"ok\n")
        await asyncio.sleep(0.1)  # never polled: its grace is over
        status, _, body = await server.answer(b"GET /healthz HTTP/1.1")
        assert (status, body) == (503, b"ladder:queue:cheap: arq poll loop silent for 0s\n")
        worker._last_health_check = time.time()  # what arq's record_health does from the poll loop
        assert (await server.answer(b"GET /healthz HTTP/1.1"))[0] == 200
        assert (await server.answer(b"GET /readyz HTTP/1.1"))[:2] == (200, "text/plain; charset=utf-8")
        assert (await server.answer(b"GET /nope HTTP/1.1"))[0] == 404


# --- real processes over HTTP ---------------------------------------------------------------------


@contextlib.contextmanager
def _serving(env: dict[str, str], log: Path, *args: str) -> Iterator[int]:
    """A `ladder` process with --metrics-port, once it answers; stopped with SIGTERM afterwards."""
    port = free_port()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ladder.cli", *args, "--metrics-port", str(port)], env=env, stdout=err, stderr=err
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, f"ladder {args} exited {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"ladder {args} never served:\n{log.read_text()}"
                with contextlib.suppress(OSError):
                    http_get(port, "/healthz")
                    break
                time.sleep(0.2)
            yield port
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _no_secret(text: str) -> None:
    for secret in FAKE_KEYS.values():
        assert secret not in text


async def test_exporter_serves_queue_gauges_and_probes(
    cli_env: dict[str, str], arq_redis: ArqRedis, keys: Keys, policies: Policies, tmp_path: Path
) -> None:
    await _enqueue(arq_redis, policies, keys, "cheap", 3, "c")
    with _serving(cli_env, tmp_path / "exporter.log", "exporter") as port:
        status, page = await asyncio.to_thread(http_get, port, "/metrics")
        assert status == 200
        samples = _samples(page)
        assert _value(samples, "ladder_queue_ready_jobs", queue="cheap") == 3
        for queue in QUEUES:
            for gauge in ("ladder_queue_ready_jobs", "ladder_queue_deferred_jobs", "ladder_queue_in_progress_jobs"):
                assert _value(samples, gauge, queue=queue) is not None, (gauge, queue)
        assert _value(samples, "ladder_sink_stream_length") == 0
        assert _value(samples, "ladder_dead_letters") == 0
        for tier in policies.tier_names:
            assert _value(samples, "ladder_batch_lane_waiting_jobs", tier=tier) == 0, tier
        assert _value(samples, "ladder_batch_lane_open_batches") == 0
        assert await asyncio.to_thread(http_get, port, "/readyz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, port, "/healthz") == (200, "ok\n")
        _no_secret(page)
    assert "ladder:queue:cheap" not in page  # labels are queue names, not Redis keys


def test_exporter_is_alive_but_not_ready_while_redis_is_away(cli_env: dict[str, str], tmp_path: Path) -> None:
    dead = f"redis://:pw-LADDERCANARY-0004@127.0.0.1:{free_port()}/0"  # the canary watches it too
    with _serving(dict(cli_env, REDIS_URL=dead), tmp_path / "exporter.log", "exporter") as port:
        status, body = http_get(port, "/readyz")
        assert status == 503
        assert body.startswith("redis: ") and body.count("\n") == 1
        assert "pw-LADDERCANARY" not in body
        assert http_get(port, "/healthz") == (200, "ok\n")
        status, page = http_get(port, "/metrics")
        assert status == 200
        assert not any(name.startswith("ladder_queue") for name, _ in _samples(page))
        _no_secret(page)
        assert "pw-LADDERCANARY" not in page
    assert "pw-LADDERCANARY" not in (tmp_path / "exporter.log").read_text()


async def test_worker_and_sink_processes_serve_their_counters_and_probes(
    cli_env: dict[str, str], arq_redis: ArqRedis, keys: Keys, policies: Policies, tmp_path: Path
) -> None:
    await _enqueue(arq_redis, policies, keys, "cheap", 2, "c")
    with _serving(cli_env, tmp_path / "worker.log", "worker", "--tier", "cheap") as worker_port:
        assert await asyncio.to_thread(http_get, worker_port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, worker_port, "/readyz") == (200, "ok\n")
        ok = {"tier": "cheap", "provider": "openai", "model": "gpt-4o-mini", "status": "ok", "error_class": "",
              "route": "hint"}  # fmt: skip
        deadline = time.monotonic() + 60
        while _value(_samples((await asyncio.to_thread(http_get, worker_port, "/metrics"))[1]), "ladder_calls_total",
                     **ok) != 2:  # fmt: skip
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.2)
        worker_page = (await asyncio.to_thread(http_get, worker_port, "/metrics"))[1]
    assert not any(name.startswith(("ladder_queue", "ladder_sink")) for name, _ in _samples(worker_page))
    _no_secret(worker_page)

    with _serving(cli_env, tmp_path / "sink.log", "sink") as sink_port:
        assert await asyncio.to_thread(http_get, sink_port, "/readyz") == (200, "ok\n")  # Redis and ClickHouse
        deadline = time.monotonic() + 60
        while _value(_samples((await asyncio.to_thread(http_get, sink_port, "/metrics"))[1]),
                     "ladder_sink_inserted_total") != 2:  # fmt: skip
            assert time.monotonic() < deadline, (tmp_path / "sink.log").read_text()
            await asyncio.sleep(0.2)
        sink_page = (await asyncio.to_thread(http_get, sink_port, "/metrics"))[1]
    assert _value(_samples(sink_page), "ladder_sink_stream_length") == 0
    _no_secret(sink_page)
