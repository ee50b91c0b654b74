"""One rate limit per lane (provider, model, account), shared by every worker process through Redis.

Each limited dimension (requests, input tokens, output tokens per minute) is a token bucket that
refills continuously, as Anthropic and OpenAI describe their own limits; concurrency is a set of
leases that expire if a worker dies holding one. One Lua script checks and takes from all of them
at once, so fifty processes share one budget without drift. A call reserves its estimated tokens;
`settle` corrects the buckets with the real usage; `observe` tightens them to what the provider
says is left and blocks the lane for as long as a 429 asks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

from policies.config import Policies, RateLimit
from policies.tokens import estimate_tokens
from worker.metrics import Metrics
from worker.provider import Completion, ProviderError, RateLimited, SpendLimited
from worker.steps import Call, Handler

log = structlog.get_logger("ladder.limits")

# Every script reads Redis's own clock: workers' clocks (and a busy event loop's idea of "now")
# differ, and a bucket whose refill time moved backwards would refill the same interval twice.
_NOW = (
    "local clock = redis.call('TIME')\nlocal now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)\n"
)

# Dimensions: r requests, i input tokens, o output tokens, t tokens in and out together (OpenAI's TPM).
# KEYS: buckets hash, leases zset, blocked-until key.
# ARGV: (unused), lease id, lease ttl ms, concurrency limit (0: none), then per dimension:
#       capacity, refill per ms, cost (capacity 0: the dimension is not limited).
# Returns 0 when granted (and the lease taken), else the milliseconds to wait.
_ACQUIRE = (
    _NOW
    + """
local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
if blocked > now then return blocked - now end
local limit = tonumber(ARGV[4])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= limit then return 25 end
end
local dims = {'r', 'i', 'o', 't'}
local wait, levels = 0, {}
for d = 1, 4 do
  local cap = tonumber(ARGV[5 + (d - 1) * 3])
  if cap > 0 then
    local rate = tonumber(ARGV[6 + (d - 1) * 3])
    local cost = math.min(tonumber(ARGV[7 + (d - 1) * 3]), cap)
    local state = redis.call('HMGET', KEYS[1], dims[d], dims[d] .. 't')
    local level = tonumber(state[1] or cap)
    local at = tonumber(state[2] or now)
    level = math.min(cap, level + math.max(0, now - at) * rate)
    levels[d] = {level, cost}
    if level < cost then wait = math.max(wait, math.ceil((cost - level) / rate)) end
  end
end
if wait > 0 then return wait end
for d = 1, 4 do
  if levels[d] then
    redis.call('HSET', KEYS[1], dims[d], levels[d][1] - levels[d][2], dims[d] .. 't', now)
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
if limit > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[2], 3600000)
end
return 0
"""
)

# KEYS: buckets hash, leases zset. ARGV: lease id, then per dimension (r, i, o, t): token delta.
_SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local dims = {'r', 'i', 'o', 't'}
for d = 1, 4 do
  local delta = tonumber(ARGV[1 + d])
  if delta ~= 0 and redis.call('HEXISTS', KEYS[1], dims[d]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[1], dims[d], delta)
  end
end
return 0
"""

# KEYS: buckets hash, blocked-until key. ARGV: (unused), block for ms (0: none), then per
# dimension (r, i, o, t): what the provider says is left (-1: unknown). Only ever tightens.
_OBSERVE = (
    _NOW
    + """
local until_ms = now + tonumber(ARGV[2])
if until_ms > now then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ms > current then redis.call('SET', KEYS[2], until_ms, 'PX', until_ms - now) end
end
local dims = {'r', 'i', 'o', 't'}
for d = 1, 4 do
  local left = tonumber(ARGV[2 + d])
  if left >= 0 then
    local level = redis.call('HGET', KEYS[1], dims[d])
    if not level or left < tonumber(level) then redis.call('HSET', KEYS[1], dims[d], left, dims[d] .. 't', now) end
  end
end
return 0
"""
)


class LaneBlocked(ProviderError):
    """The lane is stopped for longer than a job should wait (a spend limit, a long retry-after):
    the job moves on to another candidate instead of holding a worker slot."""

    error_class = "lane_blocked"


LEASE_TTL_MS = 600_000  # a lease outlives any sane call; a dead worker's lease frees itself then


@dataclass(frozen=True)
class Usage:
    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Lease:
    lane: str
    lease_id: str
    reserved: Usage


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._observe = redis.register_script(_OBSERVE)

    def _keys(self, lane: str) -> tuple[str, str, str]:
        base = f"{self._prefix}:rl:{lane}"
        return f"{base}:buckets", f"{base}:leases", f"{base}:blocked"

    async def try_acquire(self, lane: str, limit: RateLimit, want: Usage) -> tuple[Lease | None, float]:
        """(lease, 0) when granted, else (None, seconds to wait before asking again)."""
        buckets, leases, blocked = self._keys(lane)
        lease_id = uuid.uuid4().hex
        args: list[int | float | str] = [0, lease_id, LEASE_TTL_MS, limit.concurrency]
        for cap, cost in (
            (limit.rpm, want.requests),
            (limit.input_tpm, want.input_tokens),
            (limit.output_tpm, want.output_tokens),
            (limit.tpm, want.tokens),
        ):
            effective = cap * limit.headroom
            args += [effective, effective / 60_000, cost]
        wait_ms: int = await self._acquire(keys=[buckets, leases, blocked], args=args)
        if wait_ms == 0:
            return Lease(lane, lease_id, want), 0.0
        return None, wait_ms / 1000

    async def acquire(self, lane: str, limit: RateLimit, want: Usage, max_wait: float = float("inf")) -> Lease:
        """Wait for the lane's budget; a lane blocked longer than `max_wait` raises LaneBlocked."""
        while True:
            lease, wait = await self.try_acquire(lane, limit, want)
            if lease is not None:
                return lease
            if wait > max_wait:
                raise LaneBlocked(f"{lane} is blocked for {wait:.0f}s more")
            await asyncio.sleep(wait)

    async def settle(self, lease: Lease, used: Usage | None) -> None:
        """Release the lease; give back (or take) the difference between reserved and real usage."""
        buckets, leases, _ = self._keys(lease.lane)
        r = lease.reserved
        deltas = (0, 0, 0, 0) if used is None else (
            r.requests - used.requests, r.input_tokens - used.input_tokens, r.output_tokens - used.output_tokens,
            r.tokens - used.tokens,
        )  # fmt: skip
        await self._settle(keys=[buckets, leases], args=[lease.lease_id, *deltas])

    async def observe(
        self,
        lane: str,
        *,
        block_for: float | None = None,
        requests_left: int | None = None,
        input_tokens_left: int | None = None,
        output_tokens_left: int | None = None,
        tokens_left: int | None = None,
    ) -> None:
        """What the provider said: its remaining budget, or a retry-after that blocks the lane."""
        buckets, _, blocked = self._keys(lane)
        block_ms = int(block_for * 1000) if block_for else 0
        left = [-1 if v is None else v for v in (requests_left, input_tokens_left, output_tokens_left, tokens_left)]
        await self._observe(keys=[buckets, blocked], args=[0, block_ms, *left])


UNLIMITED = RateLimit()
SPEND_BLOCK_S = 3600.0  # a spend-limited lane stays stopped this long; a person raises the limit


class RateLimitStep:
    """The step around a provider call: wait for the lane's budget, give back what was not used,
    and pass on what the provider said (remaining budget, retry-after, spend limit) to every worker."""

    def __init__(
        self, limiter: RateLimiter, policies: Policies, accounts: Mapping[str, str], metrics: Metrics | None = None
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics or Metrics()
        self._limits = policies.rate_limits
        self._accounts = accounts
        self._max_wait = float(policies.faults.max_lane_wait_s)

    async def __call__(self, call: Call, proceed: Handler) -> Completion:
        model = f"{call.candidate.provider}/{call.candidate.model}"
        lane = f"{model}/{self._accounts.get(call.candidate.provider, 'default')}"
        limit = self._limits.get(model, UNLIMITED)
        text_tokens = sum(estimate_tokens(m.content) for m in call.request.messages)
        want = Usage(1, text_tokens, call.request.max_output_tokens)
        asked = time.perf_counter()
        try:
            lease = await self._limiter.acquire(lane, limit, want, self._max_wait)
        finally:  # a wait that ended blocked (LaneBlocked) or cancelled was waited all the same
            self._metrics.record_lane_wait(call.candidate.provider, call.candidate.model, time.perf_counter() - asked)
        try:
            completion = await proceed(call)
        except SpendLimited:
            await self._limiter.settle(lease, Usage(1, 0, 0))
            await self._limiter.observe(lane, block_for=SPEND_BLOCK_S)
            log.error("ALERT spend limit reached: lane stopped", lane=lane, for_s=SPEND_BLOCK_S)
            raise
        except RateLimited as e:
            await self._limiter.settle(lease, Usage(1, 0, 0))
            await self._limiter.observe(lane, block_for=e.retry_after or 1.0)
            raise
        except ProviderError:
            await self._limiter.settle(lease, Usage(1, 0, 0))
            raise
        await self._limiter.settle(lease, Usage(1, completion.input_tokens, completion.output_tokens))
        await self._limiter.observe(
            lane,
            requests_left=completion.requests_left,
            input_tokens_left=completion.input_tokens_left,
            output_tokens_left=completion.output_tokens_left,
            tokens_left=completion.tokens_left,
        )
        return completion
