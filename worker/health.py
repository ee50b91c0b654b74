"""/metrics, /healthz and /readyz over HTTP, answered by the process's own event loop.

The loop answers, not a thread: a blocked loop answers nothing, the kubelet's probe times out, and
that is the liveness failure a blocked loop deserves. /healthz also fails (503) when a watched arq
poll loop, or another watched loop (the batch lane's), has gone quiet; /readyz fails (503, one line
saying why) when Redis, or ClickHouse where the process writes to it, does not answer. Reasons name
the exception, with any credentials in a URL masked; nothing here logs or serves a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog
from arq import Worker
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from worker.clickhouse import ClickHouse
from worker.metrics import RedisGauges

log = structlog.get_logger("ladder.probes")

ReadyCheck = Callable[[], Awaitable[object]]  # raises (or times out) when not ready
LiveCheck = Callable[[], str | None]  # a reason when not alive

POLL_MAX_AGE_S = 60.0  # arq records its health every 30 s from its poll loop: two missed beats
READY_TIMEOUT_S = 2.0  # below the probe's own timeout (set timeoutSeconds >= 3)
REQUEST_TIMEOUT_S = 10.0
MAX_HEADERS = 100
_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")
TEXT = "text/plain; charset=utf-8"


class LoopBeat:
    """The pulse of a loop that is not an arq Worker (the batch lane): the loop calls it once a pass,
    and once it has gone `max_age` seconds without a call the loop counts as stuck."""

    def __init__(self, name: str, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._max_age = max_age
        self._clock = clock
        self._last = clock()  # a loop that has not begun its first pass gets its grace from here

    def __call__(self) -> None:
        self._last = self._clock()

    def silence(self) -> str | None:
        """None while the loop beats, else the reason."""
        quiet = self._clock() - self._last
        return f"{self.name}: loop silent for {quiet:.0f}s" if quiet > self._max_age else None


class Heartbeats:
    """Liveness of the arq Workers this process runs: each must have polled its queue lately; and of
    the loops watched with `watch_loop`: each must have beaten within its own max age."""

    def __init__(self, max_age: float = POLL_MAX_AGE_S) -> None:
        self._max_age = max_age
        self._watched: list[tuple[Worker, float]] = []
        self._loops: list[LoopBeat] = []

    def watch(self, worker: Worker) -> None:
        self._watched.append((worker, time.time()))

    def watch_loop(self, beat: LoopBeat) -> LoopBeat:
        """Watch a loop's beat; returns it, for the loop to call once a pass."""
        self._loops.append(beat)
        return beat

    def __call__(self) -> str | None:
        for beat in self._loops:
            if (silent := beat.silence()) is not None:
                return silent
        now = time.time()
        for worker, since in self._watched:
            # arq's own beat (0.28, pinned): record_health stamps it from the poll loop only, at most
            # every health_check_interval, and only when Redis answers; a LadderWorker also stamps
            # each poll, so a loop waiting out a Redis outage is alive. `since` gives a worker that
            # has not polled yet its grace.
            last = max(worker._last_health_check, getattr(worker, "polled_at", 0.0), since)
            if now - last > self._max_age:
                return f"{worker.queue_name}: arq poll loop silent for {now - last:.0f}s"
        return None


class ClickHouseCheck:
    """SELECT 1 in a thread (the client is synchronous), one at a time: a probe that times out
    must not leave threads piling up in the small pool the sink's inserts use too."""

    def __init__(self, clickhouse: ClickHouse) -> None:
        self._clickhouse = clickhouse
        self._inflight: asyncio.Future[list[tuple[object, ...]]] | None = None

    async def __call__(self) -> None:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._clickhouse.query, "SELECT 1"))
            self._inflight.add_done_callback(_retrieve)
        await asyncio.shield(self._inflight)


def _retrieve(future: asyncio.Future[list[tuple[object, ...]]]) -> None:
    if not future.cancelled():
        future.exception()  # seen, even when every waiter timed out first


def reason(name: str, error: BaseException) -> str:
    """One line naming what failed, fit for a probe's body: credentials in URLs masked."""
    detail = " ".join(_CREDENTIALS.sub("***@", str(error)).split())[:200]
    kind = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
    return f"{name}: {kind}" + (f": {detail}" if detail else "")


class ProbeServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Mapping[str, ReadyCheck],
        live: Sequence[LiveCheck] = (),
        gauges: Sequence[RedisGauges] = (),
    ) -> None:
        self._registry = registry
        self._ready = dict(ready)
        self._live = list(live)
        self._gauges = list(gauges)
        for gauge in self._gauges:
            registry.register(gauge)
        self._server: asyncio.Server | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - scraped and probed from outside the pod
        """Serve on host:port; returns the port (the one chosen when port is 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("metrics and probes served", port=bound, paths=["/metrics", "/healthz", "/readyz"])
        return bound

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for gauge in self._gauges:
            self._registry.unregister(gauge)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
                for _ in range(MAX_HEADERS):
                    if (await reader.readline()).strip() == b"":
                        break
                status, content_type, body = await self.answer(request)
                method = request.split(b" ", 1)[0]
                head = (
                    f"HTTP/1.1 {status} {_PHRASES[status]}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + (b"" if method == b"HEAD" else body))
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # a client that went away or sent nonsense gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    async def answer(self, request_line: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request line such as b"GET /readyz HTTP/1.1"."""
        parts = request_line.decode("latin-1").split()
        if len(parts) < 2:
            return 400, TEXT, b"bad request\n"
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_PLAIN_0_0_4, await self.metrics()
        if path == "/healthz":
            problem = self.alive()
        elif path == "/readyz":
            problem = await self.ready()
        else:
            return 404, TEXT, b"not found: /metrics, /healthz, /readyz\n"
        return (503, TEXT, f"{problem}\n".encode()) if problem else (200, TEXT, b"ok\n")

    async def metrics(self) -> bytes:
        results = await asyncio.gather(*(g.refresh() for g in self._gauges), return_exceptions=True)
        for gauge, result in zip(self._gauges, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("gauges not read", gauges=type(gauge).__name__, error=reason("redis", result))
        return generate_latest(self._registry)

    def alive(self) -> str | None:
        """None when alive (this answer itself says the loop runs), else the reason."""
        return next((p for p in (check() for check in self._live) if p), None)

    async def ready(self) -> str | None:
        names = list(self._ready)
        results = await asyncio.gather(*(self._check(self._ready[n]) for n in names), return_exceptions=True)
        problems = [reason(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        return "; ".join(problems) or None

    @staticmethod
    async def _check(check: ReadyCheck) -> None:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await check()


_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
