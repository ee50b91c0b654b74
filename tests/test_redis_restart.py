"""Redis restarted under running `ladder worker` and `ladder sink` processes: a redis-server of the
test's own (a tmp data folder, a free port) is stopped and started again on the same port and folder
while jobs are queued, in flight at the provider, settled and on their way to ClickHouse.

With AOF (`appendonly yes`, `appendfsync everysec`: the configuration the README recommends for
production) Redis comes back with everything: both processes stay up, reconnect and go on, and
every job ends exactly once. A graceful stop (SIGTERM, what Kubernetes sends) fsyncs the AOF; a
SIGKILL does not, and loses nothing either: Redis write(2)s each command to the AOF before it
replies, and a killed process leaves its written pages to the kernel. everysec's window of up to
about a second is lost only when the host itself goes down (power, kernel, node) before the fsync:
no test here can pull that plug, so that case is reasoned in the README, not shown. `appendfsync
always` would close that window at the cost of an fsync per write; these tests would pass the same
with it, since none of their restarts loses the page cache.

Without persistence Redis comes back empty, and the tests show what that loses: queued jobs, job
records and batch counts, outcome events the sink had not moved yet, the budgets' limits and
month-to-date spend (the sink raises the spend back to ClickHouse's figure when it starts), and the
record of which job ids ran, so a re-enqueued file runs, and is paid for, again.

The provider is a small OpenAI-compatible server whose answers wait while its gate is closed, so a
test decides whether a call ends before, during or after the outage.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from ladder.app import open_app
from ladder.keys import Keys
from ladder.messages import Job
from ladder.settings import Settings
from policies.customers import Customer
from producer.submit import SubmitReport
from tests.helpers import ladder
from tests.processes import Process, clickhouse_rows, free_port, http_get, wait_for
from tests.slow_provider import SLOW_POLICIES, send_chat_answer
from worker.budget import BudgetBook, BudgetRow

KEYS = Keys("ladder")
REDIS_SERVER = "/usr/bin/redis-server"
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
NO_PERSISTENCE = ("--appendonly", "no")
# A job whose bookkeeping failed waits for its in-progress key: job_timeout_s + settle_margin_s + 10 s.
SHORT_TIMEOUTS = "\n[limits]\njob_timeout_s = 3\nsettle_margin_s = 1\n\n[faults]\ncrash_retry_delay_s = 0.2\n"
WORKER = ("worker", "--tier", "cheap", "--concurrency")  # then how many jobs at once
REDIS_LOST = "redis lost during the job"  # worker/arq_worker.py's warning for a job whose Redis write failed


class RedisServer:
    """A redis-server of this test: its own data folder and port, the same across restarts."""

    def __init__(self, data_dir: Path, persistence: tuple[str, ...]) -> None:
        data_dir.mkdir()
        self.port = free_port()
        self.args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--save", "", *persistence, "--logfile", str(data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 30, "redis-server to answer")

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.client.connection_pool.disconnect()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.client.close()


class GatedProvider(ThreadingHTTPServer):
    """OpenAI chat completions, answered at once while `gate` is set and held until it is set again
    while it is clear. `prompts` logs every call as it arrives; `answered` counts answers sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GatedHandler)
        self.gate = threading.Event()
        self.gate.set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.prompts: list[str] = []
        self.answered = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def calls(self) -> dict[str, int]:
        """Calls per job id."""
        with self.lock:
            found: dict[str, int] = {}
            for prompt in self.prompts:
                job = prompt.removeprefix("question ").removesuffix("?")
                found[job] = found.get(job, 0) + 1
            return found

    def count(self) -> int:
        with self.lock:
            return len(self.prompts)


class _GatedHandler(BaseHTTPRequestHandler):
    server: GatedProvider
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.prompts.append(prompt)
        while not self.server.gate.wait(0.05):
            if self.server.stopping.is_set():
                return
        if not send_chat_answer(self, body["model"], prompt):
            return
        with self.server.lock:
            self.server.answered += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[GatedProvider]:
    server = GatedProvider()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[tuple[str, ...]], RedisServer]]:
    started: list[RedisServer] = []

    def make(persistence: tuple[str, ...]) -> RedisServer:
        """A server on a port of its own, not started yet."""
        started.append(RedisServer(tmp_path / f"redis-{len(started)}", persistence))
        return started[-1]

    yield make
    for server in started:
        server.close()


def env_for(cli_env: dict[str, str], server: RedisServer, provider: GatedProvider, tmp_path: Path) -> dict[str, str]:
    policies = tmp_path / "gated.toml"
    policies.write_text(SLOW_POLICIES.format(url=provider.url) + SHORT_TIMEOUTS)
    return dict(cli_env, REDIS_URL=server.url, LADDER_POLICIES=str(policies))


def in_app(env: dict[str, str], use: Callable[[Any], Any]) -> Any:
    """`use(app)` in this process against the test's Redis (a `ladder` process takes seconds to start)."""

    async def run() -> Any:
        async with open_app(Settings.from_env(env["LADDER_POLICIES"], env)) as app:
            return await use(app)

    return asyncio.run(run())


def enqueue(env: dict[str, str], ids: list[str], batch: str) -> SubmitReport:
    jobs = [Job(id=i, customer="acme", prompt=f"question {i}?") for i in ids]
    report: SubmitReport = in_app(env, lambda app: app.producer().submit(jobs, batch=batch))
    return report


def budgets(env: dict[str, str]) -> dict[str, BudgetRow]:
    """What `ladder budgets` shows, by customer."""
    rows: list[BudgetRow] = in_app(env, lambda app: BudgetBook(app.redis, app.keys).status())
    return {r.customer: r for r in rows}


def counts(db: redis.Redis, batch: str) -> dict[str, int]:
    found = {k.decode(): int(v) for k, v in db.hgetall(KEYS.batch_counts(batch)).items()}
    return {k: found.get(k, 0) for k in ("accepted", "ok", "final")}


def drained(db: redis.Redis) -> bool:
    """Every outcome event inserted and acked: the sink deletes what it acked."""
    return db.exists(KEYS.outcomes) == 1 and db.xlen(KEYS.outcomes) == 0


def rows_per_job(env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per job in ClickHouse: (final outcome rows, outcome rows in all)."""
    sql = "SELECT job_id, countIf(final), count() FROM {db}.outcomes FINAL GROUP BY job_id"
    return {r[0]: (int(r[1]), int(r[2])) for r in clickhouse_rows(env, sql)}


def assert_alive(*procs: Process) -> None:
    for p in procs:
        assert p.proc.poll() is None, f"{p.log.name} exited {p.proc.returncode}:\n{p.output()[-4000:]}"


def stop_cleanly(*procs: Process) -> None:
    """SIGTERM to each, then each must exit 0 without a traceback."""
    for p in procs:
        p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        code = p.proc.wait(timeout=60)
        assert code == 0, p.output()[-4000:]
        assert "Traceback" not in p.output(), p.output()[-4000:]


def wait_started(db: redis.Redis, worker: Process, sink: Process) -> None:
    """Both processes past their start-up (which takes seconds on a busy machine): polling, reading."""

    def sink_reading() -> bool:
        return db.exists(KEYS.outcomes) == 1 and any(g["name"] == b"sink" for g in db.xinfo_groups(KEYS.outcomes))

    wait_for(lambda: "worker started" in worker.output(), 120, "the worker to start")
    wait_for(sink_reading, 120, "the sink to start")


def ids_of(batch: str, n: int) -> list[str]:
    return [f"{batch}-{i}" for i in range(n)]


def test_with_aof_worker_and_sink_ride_out_a_restart_and_a_kill_and_every_job_ends_once(
    cli_env: dict[str, str], tmp_path: Path, provider: GatedProvider, servers: Any, processes: Any
) -> None:
    server = servers(AOF)
    env, db = env_for(cli_env, server, provider, tmp_path), server.client
    worker_port, sink_port = free_port(), free_port()
    worker = processes(env, tmp_path / "worker.log", *WORKER, "4", "--metrics-port", str(worker_port))
    # Started before Redis: arq's create_pool tries 5 more times, a second apart, then gives up.
    wait_for(lambda: "retries remaining" in worker.output(), 120, "the worker to try Redis")
    server.start()
    sink = processes(env, tmp_path / "sink.log", "sink", "--metrics-port", str(sink_port))
    wait_started(db, worker, sink)

    # 1. A graceful restart (SIGTERM: the AOF is fsynced) while four calls are in flight and six jobs
    # queued; the calls end on the restarted server.
    provider.gate.clear()
    graceful = ids_of("graceful", 10)
    enqueue(env, graceful, "graceful")
    wait_for(lambda: provider.count() == 4, 30, "four calls in flight")
    server.stop(signal.SIGTERM)
    server.start()
    provider.gate.set()
    wait_for(lambda: counts(db, "graceful")["final"] == 10 and drained(db), 60, "every job settled and sunk")
    assert_alive(worker, sink)
    assert counts(db, "graceful") == {"accepted": 10, "ok": 10, "final": 10}  # the six queued were kept
    assert provider.calls() == dict.fromkeys(graceful, 1)  # none lost, none asked twice

    # 2. A kill (SIGKILL: no fsync) while four calls are in flight, and the calls end during the
    # outage: their settles fail, so each job keeps its in-progress key (the AOF kept it, like
    # every write Redis had acknowledged) and runs again once it expires. The provider answers
    # those four jobs twice; nothing of a failed settle was written, so ClickHouse holds one row.
    provider.gate.clear()
    killed = ids_of("killed", 8)
    enqueue(env, killed, "killed")
    wait_for(lambda: provider.count() == 10 + 4, 30, "four calls in flight")
    in_flight = sorted(set(provider.calls()) - set(graceful))
    server.stop(signal.SIGKILL)
    provider.gate.set()
    wait_for(lambda: worker.output().count(REDIS_LOST) == 4, 30, "the four settles to fail")
    for port in (worker_port, sink_port):  # not ready while Redis is away; alive, so not restarted
        status, body = http_get(port, "/readyz")
        assert status == 503 and body.startswith("redis: ConnectionError"), body
        assert http_get(port, "/healthz") == (200, "ok\n")
    server.start()
    for port in (worker_port, sink_port):
        wait_for(lambda p=port: http_get(p, "/readyz")[0] == 200, 30, "ready again")  # type: ignore[misc]
    wait_for(lambda: counts(db, "killed")["final"] == 8 and drained(db), 60, "every job settled and sunk")

    assert_alive(worker, sink)
    assert counts(db, "killed") == {"accepted": 8, "ok": 8, "final": 8}
    calls = provider.calls()
    assert {i: calls[i] for i in killed} == {i: 2 if i in in_flight else 1 for i in killed}
    stop_cleanly(worker, sink)
    assert rows_per_job(env) == dict.fromkeys(graceful + killed, (1, 1))  # one row each: no cost counted twice


def test_without_persistence_a_restart_loses_queued_jobs_records_and_budgets_and_worker_and_sink_go_on(
    cli_env: dict[str, str], tmp_path: Path, provider: GatedProvider, servers: Any, processes: Any
) -> None:
    server = servers(NO_PERSISTENCE)
    server.start()
    env, db = env_for(cli_env, server, provider, tmp_path), server.client
    limit = [Customer(id="acme", monthly_budget=Decimal(100))]  # what `ladder customers load` writes to Redis
    in_app(env, lambda app: BudgetBook(app.redis, app.keys).set_limits(limit, None, "reject"))
    worker = processes(env, tmp_path / "worker.log", *WORKER, "2")
    sink = processes(env, tmp_path / "sink.log", "sink")
    wait_started(db, worker, sink)
    before = ids_of("before", 3)
    enqueue(env, before, "before")
    wait_for(lambda: counts(db, "before")["final"] == 3 and drained(db), 60, "a first batch settled and sunk")
    spent_before = budgets(env)["acme"].spent
    assert budgets(env)["acme"].limit == Decimal(100) and spent_before > 0

    provider.gate.clear()
    ids = ids_of("b", 6)
    enqueue(env, ids, "b")
    wait_for(lambda: provider.count() == 3 + 2, 30, "two calls in flight")
    in_flight = sorted(set(provider.calls()) - set(before))
    server.stop(signal.SIGTERM)
    server.start()  # empty

    # Gone: the four queued jobs, every job record, the batch's ids and counts, the customers' limits.
    assert db.zcard(KEYS.queue("cheap")) == 0 and not db.exists(KEYS.batch_ids("b"), KEYS.batch_counts("b"))
    assert not db.exists(*(KEYS.job(i) for i in before + ids))
    # The month's spend is gone too, until the sink, seeing Redis back, raises it to ClickHouse's
    # figure; the limit stays gone (the policies' default: none) until the customers file is loaded again.
    wait_for(lambda: "acme" in budgets(env) and budgets(env)["acme"].spent == spent_before, 60, "the reconcile")
    assert budgets(env)["acme"].limit is None

    provider.gate.set()  # the two calls in flight settle on the empty Redis: records and events anew
    wait_for(lambda: counts(db, "b")["final"] == 2 and drained(db), 60, "the two settled and sunk")
    assert_alive(worker, sink)
    assert counts(db, "b") == {"accepted": 0, "ok": 2, "final": 2}  # counts no longer add up
    # Their holds went with the restart, so their settles had no hold to turn into spend: Redis
    # misses their cost until the sink's next reconcile (at its next start) finds it in ClickHouse.
    assert budgets(env)["acme"].spent == spent_before
    # Nothing is left that could run: no queue entry, no job in progress.
    assert db.zcard(KEYS.queue("cheap")) == 0 and not list(db.scan_iter(match="arq:in-progress:*"))
    assert provider.calls() == dict.fromkeys(before + in_flight, 1)
    stop_cleanly(worker, sink)
    assert rows_per_job(env) == dict.fromkeys(before + in_flight, (1, 1))  # the four queued jobs: never run


def test_without_persistence_unsunk_outcomes_are_lost_and_a_re_enqueued_job_runs_and_is_paid_again(
    cli_env: dict[str, str], tmp_path: Path, provider: GatedProvider, servers: Any, processes: Any
) -> None:
    server = servers(NO_PERSISTENCE)
    server.start()
    env, db = env_for(cli_env, server, provider, tmp_path), server.client
    worker = processes(env, tmp_path / "worker.log", *WORKER, "4")
    sink = processes(env, tmp_path / "sink.log", "sink")
    wait_started(db, worker, sink)
    sunk = ids_of("sunk", 2)
    enqueue(env, sunk, "sunk")
    wait_for(lambda: counts(db, "sunk")["final"] == 2 and drained(db), 60, "a first batch settled and sunk")
    stop_cleanly(sink)
    unsunk = ids_of("unsunk", 2)
    enqueue(env, unsunk, "unsunk")
    wait_for(lambda: counts(db, "unsunk")["final"] == 2, 60, "a second batch settled")
    assert db.xlen(KEYS.outcomes) == 2  # its outcome events wait for a sink

    server.stop(signal.SIGTERM)
    server.start()
    assert not db.exists(KEYS.outcomes)  # the two events are gone: those calls never reach ClickHouse

    # Which ids ran was in the job records: the same ids enqueued again all run, and are paid, again.
    report = enqueue(env, sunk + unsunk, "again")
    assert (report.accepted, report.duplicates) == (4, 0)
    wait_for(lambda: counts(db, "again")["final"] == 4, 60, "the re-enqueued jobs settled")
    assert_alive(worker)
    assert provider.calls() == dict.fromkeys(sunk + unsunk, 2)
    stop_cleanly(worker)
    ladder(env, "sink", "--burst")
    sql = "SELECT job_id, batch, count() FROM {db}.outcomes FINAL GROUP BY job_id, batch ORDER BY job_id"
    # One row per job, each the re-run's: an unsunk first run never arrived, and a sunk one's row was
    # replaced by the re-run's, which has the same event id (job id and attempt): of the two calls
    # the provider billed for each job, ClickHouse counts one.
    assert clickhouse_rows(env, sql) == [[i, "again", "1"] for i in sorted(sunk + unsunk)]
