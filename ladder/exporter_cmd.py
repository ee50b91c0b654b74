"""`ladder exporter`, and the metrics and probes endpoint of every long-running command.

`--metrics-port N` on `ladder worker`, `ladder sink`, `ladder batches run` and `ladder exporter`
serves /metrics, /healthz and /readyz on 0.0.0.0:N (worker/health.py). The exporter is one small
always-on replica that consumes nothing: it reads the queue depths of every queue, the sink's lag,
the dead-letter stream and the batch lane's waiting jobs and open batches from Redis when scraped.
KEDA scales tier workers on its `ladder_queue_ready_jobs`, since a worker scaled to zero cannot
report its own queue. It opens no ClickHouse (chdb allows one process per data folder), so its
/readyz asks Redis only; and it connects lazily, so that it keeps serving, not ready, while Redis is
away instead of restarting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ladder.app import App
from ladder.keys import Keys
from ladder.settings import EmbeddedRedis, Settings
from policies.config import CLASSIFY_QUEUE, SHADOW_QUEUE, Policies
from worker.health import ClickHouseCheck, ProbeServer, ReadyCheck
from worker.metrics import BatchLaneGauges, DeadLetters, QueueDepth, RedisGauges, SinkLag

log = structlog.get_logger("ladder.exporter")

EXPORTER_PORT = 9100  # what the manifests scrape; the exporter has no other use, so it is on by default
REDIS_TIMEOUT_S = 5.0  # a scrape or probe against a hung Redis fails instead of waiting forever


def add_metrics_port(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=default,
        metavar="N",
        help=f"serve /metrics, /healthz and /readyz on 0.0.0.0:N (0: off; default {default})",
    )


def add_exporter_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    x = sub.add_parser("exporter", help="serve queue, sink, dead-letter and batch lane gauges to Prometheus (and KEDA)")
    add_metrics_port(x, EXPORTER_PORT)


def queue_names(policies: Policies) -> list[str]:
    """Every arq queue: each tier's, the classifier's and the shadow worker's."""
    return [*policies.tier_names, CLASSIFY_QUEUE, SHADOW_QUEUE]


def stream_bound(policies: Policies) -> tuple[int, float]:
    """The outcome stream's bound and warn share, served beside its length for the alerts."""
    return policies.limits.outcome_stream_max, policies.limits.outcome_stream_warn_share


def _redis(settings: Settings, embedded: EmbeddedRedis | None) -> Redis:
    """A client that connects on first use (arq's create_pool insists on a PING at start)."""
    if embedded is not None:
        return Redis(unix_socket_path=embedded.socket_path)
    client: Redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )
    return client


async def run_exporter(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    if args.metrics_port <= 0:
        log.error("ladder exporter needs --metrics-port N (N > 0)")
        return 2
    embedded = EmbeddedRedis(settings.data_dir / "redis") if settings.embedded_redis else None
    redis = _redis(settings, embedded)
    keys = Keys(settings.prefix)
    gauges: list[RedisGauges] = [
        QueueDepth(redis, keys, queue_names(settings.policies)),
        SinkLag(redis, keys, *stream_bound(settings.policies)),
        DeadLetters(redis, keys),
        BatchLaneGauges(redis, keys, settings.policies.tier_names),
    ]
    server = ProbeServer(CollectorRegistry(), ready={"redis": redis.ping}, gauges=gauges)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(args.metrics_port)
        await stop.wait()
    finally:
        await server.aclose()
        await redis.aclose()
    log.info("exporter stopped")
    return 0


@contextlib.asynccontextmanager
async def probes_served(app: App, args: argparse.Namespace) -> AsyncIterator[None]:
    """For the length of a command: its metrics and probes, when it was given --metrics-port.
    A worker's liveness also needs its arq poll loop: cmd_worker hands the Worker to app.heartbeats;
    `ladder batches run` hands it the beat of the lane's loop."""
    port: int = getattr(args, "metrics_port", 0)
    if port <= 0:
        yield
        return
    ready: dict[str, ReadyCheck] = {"redis": app.redis.ping}
    gauges: list[RedisGauges] = []
    if args.command == "sink":
        ready["clickhouse"] = ClickHouseCheck(app.clickhouse())
        gauges.append(SinkLag(app.redis, app.keys, *stream_bound(app.settings.policies)))
    server = ProbeServer(app.metrics.registry, ready=ready, live=[app.heartbeats], gauges=gauges)
    await server.start(port)
    try:
        yield
    finally:
        await server.aclose()
