"""Monthly budgets per customer, enforced atomically in Redis when a worker is about to call a model.

A call first *holds* its estimated cost (its estimated input tokens and its max_output_tokens,
priced on its model) against the customer's budget for the UTC month; one Lua script checks
spent + held + estimate against the limit and takes the hold, so any number of workers share one
budget without overspending it. When the call ends, `settle` replaces the hold with the real cost.
A worker that dies holding money does not lock it away: a hold older than its TTL (twice the
tier's time budget) is released by the next reservation, on Redis's own clock; if that call does
settle later after all, its real cost is still counted. Over budget, the customer's at_limit says
what happens: reject (the job is dead-lettered, reason over_budget) or downgrade (a cheaper tier
whose estimate still fits).

What is guaranteed: spent never passes the limit while each call's real cost stays within its hold
(tests/test_budget_race.py: worker processes racing one budget), and a customer at its limit gets no
provider call. The hold's output part is a bound (max_output_tokens), its input part an estimate
(characters / 4): a call whose provider counts more input tokens than that (non-Latin text, chat
framing) settles above its hold, and the customer can end its month past the limit by that
difference, summed over the calls in flight when the limit was reached. The classifier's calls
are charged without a hold.

Amounts are integers of nano-dollars (1e-9 USD) so that Redis adds them exactly (HINCRBY).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Literal, cast

import msgspec
import structlog
from redis.asyncio import Redis

from ladder.keys import Keys
from policies.config import Budgets, Candidate, Policies
from policies.customers import AtLimit, Customer
from policies.prices import PriceBook
from policies.tokens import estimate_tokens
from worker.provider import Completion, OverBudget
from worker.steps import Call, Handler, Step

log = structlog.get_logger("ladder.budget")

Verdict = Literal["ok", "reject", "downgrade"]  # "ok": the hold is taken; else over budget, and what to do

NANO = Decimal(10) ** 9
MONTH_TTL_S = 400 * 24 * 3600  # a month's spent and held hashes outlive the month, for the record
FORGET_MS = 24 * 3600 * 1000  # a released hold is remembered this long, so a late settle still counts
STALE_PER_CALL = 100  # stale holds a reservation releases at most (the rest: the next reservations)
UNLIMITED = "-"


def to_nano(usd: Decimal) -> int:
    """USD as whole nano-dollars, rounded UP: prices per token have more digits than a nano-dollar,
    and a cost rounded down would let Redis count less than was really spent; rounded up, the sum
    of the rounded costs is never below the real spend (it is above by at most 1e-9 USD a call)."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: int) -> Decimal:
    """Exact USD, without trailing zeros (2.5, not 2.500000000)."""
    usd = Decimal(nano).scaleb(-9)
    return usd.quantize(Decimal(1)) if usd == usd.to_integral_value() else usd.normalize()


def month_of(when: datetime) -> str:
    """The UTC calendar month "YYYY-MM" of an aware datetime (a budget month is the same everywhere)."""
    return when.astimezone(UTC).strftime("%Y-%m")


def previous_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def _now() -> datetime:
    return datetime.now(UTC)


# Shared by the scripts: Redis's clock in ms, and giving back a hold's amount to a held hash.
_LUA_HEAD = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function release(held, who, amount)
  if redis.call('HINCRBY', held, who, '-' .. amount) <= 0 then redis.call('HDEL', held, who) end
end
"""

# Amounts travel as decimal strings and are written with HINCRBY / HSET as received: Lua numbers are
# doubles, printed as "1e+15" past 14 digits. They are compared as numbers, exact up to 2^53 nano
# (about 9 million USD a customer a month).
#
# KEYS: limits, default, spent (this month), held (this month), held (last month), holds, deadlines
# ARGV: customer, hold id, estimate, hold ttl ms, this month, last month, fallback "NANO ACTION",
#       month ttl s, forget ms, stale per call
# Returns "ok" (hold taken) or the customer's at_limit action.
_RESERVE = (
    _LUA_HEAD
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, tonumber(ARGV[10]))
for _, id in ipairs(stale) do
  local rec = redis.call('HGET', KEYS[6], id)
  local state, month, amount, who = false, '', '', ''
  if rec then state, month, amount, who = string.match(rec, '^(%a) (%S+) (%d+) (.*)$') end
  if state == 'h' then
    -- a crashed worker's hold: release it, but remember it for a while in case it settles after all
    if month == ARGV[5] then
      release(KEYS[4], who, amount)
    elseif month == ARGV[6] then
      release(KEYS[5], who, amount)
    end
    redis.call('HSET', KEYS[6], id, 'r ' .. month .. ' ' .. amount .. ' ' .. who)
    redis.call('ZADD', KEYS[7], now + tonumber(ARGV[9]), id)
  else
    redis.call('HDEL', KEYS[6], id)
    redis.call('ZREM', KEYS[7], id)
  end
end
local entry = redis.call('HGET', KEYS[1], ARGV[1]) or redis.call('GET', KEYS[2]) or ARGV[7]
local limit, action = string.match(entry, '^(%S+) (%S+)$')
if limit ~= '-' then
  local spent = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  local held = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
  if spent + held + tonumber(ARGV[3]) > tonumber(limit) then return action end
end
redis.call('HINCRBY', KEYS[4], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[8])
redis.call('HSET', KEYS[6], ARGV[2], 'h ' .. ARGV[5] .. ' ' .. ARGV[3] .. ' ' .. ARGV[1])
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[4]), ARGV[2])
return 'ok'
"""
)

# KEYS: spent (this month), held (this month), spent (last month), held (last month), holds, deadlines
# ARGV: hold id, cost, this month, last month, month ttl s
# A hold settles once: its record is deleted, so settling it again finds nothing (returns 0). Its
# month is this month or the last (a call ends within the tier's time budget); older, the cost
# counts in this month.
_SETTLE = (
    _LUA_HEAD
    + """
local rec = redis.call('HGET', KEYS[5], ARGV[1])
if not rec then return 0 end
local state, month, amount, who = string.match(rec, '^(%a) (%S+) (%d+) (.*)$')
local spent, held = KEYS[1], KEYS[2]
if month == ARGV[4] then spent, held = KEYS[3], KEYS[4] elseif month ~= ARGV[3] then held = false end
if state == 'h' and held then release(held, who, amount) end
if ARGV[2] ~= '0' then
  redis.call('HINCRBY', spent, who, ARGV[2])
  redis.call('EXPIRE', spent, ARGV[5])
end
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""
)

# KEYS: spent (the month). ARGV: month ttl s, then customer, amount pairs. Only ever raises.
_RECONCILE = """
local raised = 0
for i = 2, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    raised = raised + 1
  end
end
if raised > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return raised
"""


class BudgetRow(msgspec.Struct, frozen=True):
    """One customer's month so far; limit and remaining are None when it has no limit."""

    customer: str
    limit: Decimal | None
    spent: Decimal
    held: Decimal
    remaining: Decimal | None
    at_limit: AtLimit


def _entry(usd: Decimal | None, action: AtLimit) -> str:
    return f"{UNLIMITED if usd is None else to_nano(usd)} {action}"


def _parse_entry(raw: bytes | str) -> tuple[int | None, AtLimit]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    limit, action = text.split(" ", 1)
    return (None if limit == UNLIMITED else int(limit)), cast(AtLimit, action)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class BudgetBook:
    """Limits, spend and holds in Redis. `defaults` (the policies' [budgets]) applies until a
    customers file is loaded; from then on, the default stored with the file does."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        defaults: Budgets | None = None,
        hold_ttl_s: float = 600.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._redis = redis
        self._keys = keys
        defaults = defaults or Budgets()
        self._fallback = _entry(defaults.default_monthly_usd, defaults.at_limit)
        self._hold_ttl_ms = max(1, int(hold_ttl_s * 1000))
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._reconcile = redis.register_script(_RECONCILE)

    @classmethod
    def for_policies(cls, redis: Redis, keys: Keys, policies: Policies) -> BudgetBook | None:
        """The book the workers use, or None when budgets are off. A hold lives twice the tier's time
        budget: a call cannot outlast it, so only a crashed worker's hold gets that old."""
        if not policies.budgets.enabled:
            return None
        return cls(redis, keys, policies.budgets, hold_ttl_s=2 * policies.limits.job_timeout_s)

    def month(self) -> str:
        return month_of(self._clock())

    async def set_limits(
        self, customers: Iterable[Customer], default_monthly_usd: Decimal | None, default_action: AtLimit
    ) -> None:
        """Replace every limit at once: each customer's own budget (else the default; a default of
        None is no limit) and its own at_limit (else the default action)."""
        limits = {
            c.id: _entry(c.monthly_budget if c.monthly_budget is not None else default_monthly_usd,
                         c.at_limit or default_action)
            for c in customers
        }  # fmt: skip
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._keys.budget_limits)
        if limits:
            pipe.hset(self._keys.budget_limits, mapping=limits)
        pipe.set(self._keys.budget_default, _entry(default_monthly_usd, default_action))
        await pipe.execute()

    async def reserve(self, customer: str, hold_id: str, estimate: Decimal) -> Verdict:
        """Hold `estimate` against the customer's budget of this month if it fits: "ok"; else take
        nothing and return the customer's at_limit ("reject" or "downgrade")."""
        month, k = self.month(), self._keys
        last = previous_month(month)
        result = await self._reserve(
            keys=[k.budget_limits, k.budget_default, k.budget_spent(month), k.budget_held(month),
                  k.budget_held(last), k.budget_holds, k.budget_hold_deadlines],
            args=[customer, hold_id, to_nano(estimate), self._hold_ttl_ms, month, last, self._fallback,
                  MONTH_TTL_S, FORGET_MS, STALE_PER_CALL],
        )  # fmt: skip
        return cast(Verdict, _text(result))

    async def settle(self, hold_id: str, cost: Decimal) -> bool:
        """Drop the hold and count the real cost in the hold's month; False when there was nothing
        to settle (settled already), so settling twice counts once."""
        month, k = self.month(), self._keys
        last = previous_month(month)
        done = await self._settle(
            keys=[k.budget_spent(month), k.budget_held(month), k.budget_spent(last), k.budget_held(last),
                  k.budget_holds, k.budget_hold_deadlines],
            args=[hold_id, to_nano(cost), month, last, MONTH_TTL_S],
        )  # fmt: skip
        return bool(done)

    async def charge(self, customer: str, cost: Decimal) -> None:
        """Count spend without a hold (the classifier's own call, billed to the job's customer)."""
        amount = to_nano(cost)
        if amount == 0:
            return
        spent = self._keys.budget_spent(self.month())
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(spent, customer, amount)
        pipe.expire(spent, MONTH_TTL_S)
        await pipe.execute()

    async def reconcile(self, month: str, spent_in_clickhouse: Mapping[str, Decimal]) -> int:
        """Raise Redis's spend of `month` to ClickHouse's month-to-date figure wherever Redis holds
        less (it restarted without persistence); never lower it (Redis is ahead of the sink). Returns
        how many customers were raised."""
        args: list[str | int] = [MONTH_TTL_S]
        for customer, usd in spent_in_clickhouse.items():
            args += [customer, to_nano(usd)]
        raised = await self._reconcile(keys=[self._keys.budget_spent(month)], args=args)
        if raised:
            log.warning("budget spend raised to ClickHouse's figures", month=month, customers=raised)
        return int(raised)

    async def status(self) -> list[BudgetRow]:
        """Every customer with a limit, spend or a hold this month, by customer id."""
        month, k = self.month(), self._keys
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(k.budget_limits)
        pipe.get(k.budget_default)
        pipe.hgetall(k.budget_spent(month))
        pipe.hgetall(k.budget_held(month))
        raw_limits, raw_default, raw_spent, raw_held = await pipe.execute()
        limits = {_text(c): _parse_entry(v) for c, v in raw_limits.items()}
        default = _parse_entry(raw_default if raw_default is not None else self._fallback)
        spent = {_text(c): int(v) for c, v in raw_spent.items()}
        held = {_text(c): int(v) for c, v in raw_held.items()}
        rows = []
        for customer in sorted({*limits, *spent, *held}):
            limit, action = limits.get(customer, default)
            used = spent.get(customer, 0) + held.get(customer, 0)
            rows.append(
                BudgetRow(
                    customer=customer,
                    limit=None if limit is None else from_nano(limit),
                    spent=from_nano(spent.get(customer, 0)),
                    held=from_nano(held.get(customer, 0)),
                    remaining=None if limit is None else from_nano(limit - used),
                    at_limit=action,
                )
            )
        return rows

    async def default_limit(self) -> tuple[Decimal | None, AtLimit, bool]:
        """The limit of customers the file does not name: (USD or None, at_limit, from a loaded file)."""
        raw = await self._redis.get(self._keys.budget_default)
        limit, action = _parse_entry(raw if raw is not None else self._fallback)
        return (None if limit is None else from_nano(limit)), action, raw is not None


class BudgetStep:
    """The step around a provider call: hold the call's estimated cost, settle it with the real cost
    (call.cost, priced by the Priced step inside, 0 when the call failed without usage). Over
    budget: a cheaper tier the job has not tried yet whose estimate fits (downgrade), else
    OverBudget."""

    def __init__(self, book: BudgetBook, policies: Policies, prices: PriceBook) -> None:
        self._book = book
        self._policies = policies
        self._prices = prices

    async def __call__(self, call: Call, proceed: Handler) -> Completion:
        job = call.task.job
        tokens = estimate_tokens(job.text())
        estimate = self._estimate(call.candidate, tokens, job.max_output_tokens)
        # Unique per call: an arq re-run of the same attempt (after a crash) takes a hold of its own.
        hold = f"{job.id}#{call.number}#{uuid.uuid4().hex[:12]}"
        verdict = await self._book.reserve(job.customer, hold, estimate)
        if verdict != "ok":
            tier = call.tier
            if verdict == "reject" or not await self._downgrade(call, hold, tokens):
                tail = "" if verdict == "reject" else "; no cheaper tier fits either"
                raise OverBudget(
                    f"customer {job.customer!r} is over its monthly budget: "
                    f"the call's estimated ${estimate:.6f} on tier {tier} does not fit{tail}"
                )
        try:
            return await proceed(call)
        finally:
            await self._book.settle(hold, call.cost)

    def _estimate(self, candidate: Candidate, input_tokens: int, output_tokens: int) -> Decimal:
        return self._prices.cost(candidate, input_tokens, output_tokens)

    def _lower_tiers(self, call: Call) -> Sequence[str]:
        """The tiers below the call's, nearest first, that the job has not been on yet."""
        names = self._policies.tier_names
        tried = {a.tier for a in call.task.attempts}
        return [t for t in reversed(names[: names.index(call.tier)]) if t not in tried]

    async def _downgrade(self, call: Call, hold: str, input_tokens: int) -> bool:
        job = call.task.job
        for name in self._lower_tiers(call):
            for candidate in self._policies.tier(name).candidates:
                estimate = self._estimate(candidate, input_tokens, job.max_output_tokens)
                if await self._book.reserve(job.customer, hold, estimate) == "ok":
                    log.info("over budget: downgraded", job_id=job.id, customer=job.customer, tier=call.tier,
                             to_tier=name, model=candidate.model)  # fmt: skip
                    call.tier, call.candidate = name, candidate
                    call.request = msgspec.structs.replace(call.request, model=candidate.model)
                    return True
        return False


def budget_steps(book: BudgetBook | None, policies: Policies, prices: PriceBook) -> list[Step]:
    """[BudgetStep] for the tier worker's step list, or nothing when budgets are off."""
    return [] if book is None else [BudgetStep(book, policies, prices)]
