"""The shared limiter: atomic across concurrent callers, corrected by real usage, tightened by the provider."""

from __future__ import annotations

import asyncio
import time

from arq.connections import ArqRedis

from policies.config import RateLimit
from worker.providers import account_of
from worker.rate_limiter import RateLimiter, Usage

LANE = "openai:gpt-4o-mini:acct"


async def _grants_within(limiter: RateLimiter, limit: RateLimit, callers: int, seconds: float) -> list[float]:
    granted: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < deadline:
            lease, wait = await limiter.try_acquire(LANE, limit, Usage())
            if lease is None:
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                continue
            granted.append(time.monotonic())
            await limiter.settle(lease, Usage())

    await asyncio.gather(*(caller() for _ in range(callers)))
    return granted


async def test_many_callers_never_exceed_the_bucket(arq_redis: ArqRedis) -> None:
    # 600 rpm = 10/s with a burst of 600 * headroom; two limiters stand for two worker processes.
    limit = RateLimit(rpm=600, headroom=1.0)
    a, b = RateLimiter(arq_redis, "t"), RateLimiter(arq_redis, "t")
    # Drain the initial burst first so the test measures the steady rate.
    await a.observe(LANE, requests_left=0)
    grants = await asyncio.gather(_grants_within(a, limit, 20, 2.0), _grants_within(b, limit, 20, 2.0))
    total = len(grants[0]) + len(grants[1])
    assert 17 <= total <= 21  # 10/s for 2 s, from an empty bucket; never more
    assert grants[0] and grants[1]  # both processes got their share of one budget


async def test_concurrency_leases_cap_calls_in_flight(arq_redis: ArqRedis) -> None:
    limiter = RateLimiter(arq_redis, "t")
    limit = RateLimit(concurrency=3)
    in_flight, peak = 0, 0

    async def call() -> None:
        nonlocal in_flight, peak
        lease = await limiter.acquire(LANE, limit, Usage())
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        await limiter.settle(lease, Usage())

    await asyncio.gather(*(call() for _ in range(12)))
    assert peak == 3


async def test_settle_returns_unused_tokens_and_charges_overruns(arq_redis: ArqRedis) -> None:
    limiter = RateLimiter(arq_redis, "t")
    limit = RateLimit(input_tpm=1000, headroom=1.0)
    lease, _ = await limiter.try_acquire(LANE, limit, Usage(input_tokens=900))
    assert lease is not None
    assert (await limiter.try_acquire(LANE, limit, Usage(input_tokens=500)))[0] is None
    await limiter.settle(lease, Usage(input_tokens=100))  # the estimate was 800 too high
    lease2, _ = await limiter.try_acquire(LANE, limit, Usage(input_tokens=500))
    assert lease2 is not None
    await limiter.settle(lease2, Usage(input_tokens=1400))  # the estimate was 900 too low: debt
    _, wait = await limiter.try_acquire(LANE, limit, Usage(input_tokens=100))
    assert wait > 30  # roughly a minute of refill to pay the debt back


async def test_a_retry_after_blocks_the_lane_for_every_process(arq_redis: ArqRedis) -> None:
    a, b = RateLimiter(arq_redis, "t"), RateLimiter(arq_redis, "t")
    await a.observe(LANE, block_for=2.0)
    lease, wait = await b.try_acquire(LANE, RateLimit(rpm=1000), Usage())
    assert lease is None and 1.5 < wait <= 2.0


def test_a_lane_names_the_account_by_digest_only() -> None:
    label = account_of("sk-live-SECRET-123")
    assert "SECRET" not in label and len(label) == 12 and label == account_of("sk-live-SECRET-123")


async def test_a_combined_tpm_reserves_input_and_max_output_then_settles_to_real_use(arq_redis: ArqRedis) -> None:
    limiter = RateLimiter(arq_redis, "t")
    limit = RateLimit(tpm=1000, headroom=1.0)  # OpenAI's one token figure, input and output together
    first, _ = await limiter.try_acquire(LANE, limit, Usage(input_tokens=300, output_tokens=500))
    assert first is not None
    assert (await limiter.try_acquire(LANE, limit, Usage(input_tokens=300, output_tokens=500)))[0] is None
    await limiter.settle(first, Usage(input_tokens=100, output_tokens=100))  # 600 of the 800 come back
    assert (await limiter.try_acquire(LANE, limit, Usage(input_tokens=300, output_tokens=500)))[0] is not None
    await limiter.observe(LANE, tokens_left=0)  # the provider says nothing is left: believe it
    assert (await limiter.try_acquire(LANE, limit, Usage(input_tokens=1, output_tokens=1)))[0] is None
