"""Cost budgets shared by every worker, in Redis: a model call reserves its estimated cost against
all its budgets at once (the step's, the run's, the tenant's month), then settles the real cost or
releases the reservation if the call failed.

Money is in micro-dollars (integers). A budget is a Redis hash `spent`, `reserved` and one field
`r:<reservation id>` per reservation still open (its amount), beside a sorted set `<key>:holds` of
the same ids by the time (Redis's clock) their hold runs out. A worker that dies between reserving
and settling leaves its reservation behind: the next `reserve` on that budget returns it to the
budget once its hold has run out, inside the same script. Settling it late still records what was
spent, once: an expired reservation's field stays, marked `x`, until it is settled or released.

Keys name the tenant inside braces (`hil:{t42}:budget:...`): tenants never share counters, and in
a Redis Cluster all of a tenant's keys hash to one slot, as a script touching several of them needs.
"""

import functools
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from core.redis import LUA_NOW, caught_up, client, script

MICROS = Decimal(1_000_000)
HOLD_S = 15 * 60  # how long a reservation holds without being settled: longer than any model call
RUN_KEYS_S = 30 * 86_400  # a run's and a step's counters live this long after their last reservation
MONTH_GRACE_S = 7 * 86_400  # a month's counters outlive it: late settles land, analytics read them


@dataclass(frozen=True)
class Budget:
    scope: str  # "step", "run" or "month": what a refusal is about
    key: str
    limit_micros: int | None  # None: unlimited, but spending is still counted
    expire_at: int  # unix time at which Redis drops the counters (pushed on by each reservation)

    @classmethod
    def step(cls, *, tenant_id: int, run_id, node_id: str, attempt: int, limit_micros: int | None) -> "Budget":
        return cls("step", f"hil:{{t{tenant_id}}}:budget:run:{run_id}:step:{node_id}:{attempt}", limit_micros,
                   int(_now().timestamp()) + RUN_KEYS_S)

    @classmethod
    def run(cls, *, tenant_id: int, run_id, limit_micros: int | None) -> "Budget":
        return cls("run", f"hil:{{t{tenant_id}}}:budget:run:{run_id}", limit_micros,
                   int(_now().timestamp()) + RUN_KEYS_S)

    @classmethod
    def month(cls, *, tenant_id: int, limit_micros: int | None, at: datetime | None = None) -> "Budget":
        """The tenant's budget for the calendar month (UTC) of `at`, by default now on this worker's clock."""
        at = (at or _now()).astimezone(timezone.utc)
        return cls("month", f"hil:{{t{tenant_id}}}:budget:month:{at.year}-{at.month:02d}", limit_micros,
                   _month_end(at.year, at.month) + MONTH_GRACE_S)


@functools.lru_cache(maxsize=4)
def _month_end(year: int, month: int) -> int:
    """The unix time at which the month ends (UTC)."""
    return int(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Reservation:
    id: str
    amount_micros: int
    budgets: tuple[Budget, ...]


@dataclass(frozen=True)
class Refusal:
    budget: Budget  # the first of the budgets given that the amount does not fit in
    over_micros: int  # by how much it would be exceeded


# Lua functions for scripts here and in the router (agents/router.py), which runs a reservation together with
# the model's circuit breaker in one round trip. `keys`: each budget's hash and holds, in pairs; `args`: id,
# amount, hold (ms), then each budget's limit (-1: unlimited) and expire_at; `now`: Redis's time in ms.
FUNCTIONS = """
-- Nil when the amount fits every budget (giving back first the reservations whose hold ran out: their worker
-- died, and their fields stay, as 'x'); else what the reservation returns: {1} if it is reserved already (a
-- retry of a call whose reply was lost), {0, budget's 1-based index, excess} if it does not fit.
local function budgets_room(keys, args, now)
  local n = #keys / 2
  if n > 0 and redis.call('HEXISTS', keys[1], 'r:' .. args[1]) == 1 then return {1} end
  for i = 1, n do  -- `holds` has exactly the reservations not yet settled, released or given back
    local hash, holds = keys[2 * i - 1], keys[2 * i]
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
      local held = redis.call('HGET', hash, 'r:' .. old)
      redis.call('HINCRBY', hash, 'reserved', 0 - held)  -- not -held, which is -0 for 0: no integer to Redis
      redis.call('HSET', hash, 'r:' .. old, 'x')
      redis.call('ZREM', holds, old)
    end
  end
  for i = 1, n do
    local limit = tonumber(args[2 + 2 * i])
    if limit >= 0 then
      local counts = redis.call('HMGET', keys[2 * i - 1], 'spent', 'reserved')
      local over = (tonumber(counts[1]) or 0) + (tonumber(counts[2]) or 0) + tonumber(args[2]) - limit
      if over > 0 then return {0, i, over} end
    end
  end
end

-- Reserve; call only when budgets_room found room.
local function budgets_hold(keys, args, now)
  for i = 1, #keys / 2 do
    local hash, holds, expire_at = keys[2 * i - 1], keys[2 * i], args[3 + 2 * i]
    redis.call('HINCRBY', hash, 'reserved', args[2])
    redis.call('HSET', hash, 'r:' .. args[1], args[2])
    redis.call('ZADD', holds, now + tonumber(args[3]), args[1])
    redis.call('EXPIREAT', hash, expire_at)
    redis.call('EXPIREAT', holds, expire_at)
  end
end

-- Settle reservation `id` with its actual cost, once: its field goes, so a second settle or release finds
-- nothing. One that expired (field 'x') gave its amount back already.
local function budgets_settle(keys, id, actual)
  for i = 1, #keys / 2 do
    local hash, holds = keys[2 * i - 1], keys[2 * i]
    local held = redis.call('HGET', hash, 'r:' .. id)
    if held then
      if held ~= 'x' then redis.call('HINCRBY', hash, 'reserved', 0 - held) end
      redis.call('HINCRBY', hash, 'spent', actual)
      redis.call('HDEL', hash, 'r:' .. id)
      redis.call('ZREM', holds, id)
    end
  end
end
"""
# Returns {1} when reserved, {0, budget's 1-based index, excess} when not.
RESERVE = FUNCTIONS + LUA_NOW + """
local refused = budgets_room(KEYS, ARGV, now)
if refused then return refused end
budgets_hold(KEYS, ARGV, now)
return {1}
"""
# ARGV: id, actual cost.
SETTLE = FUNCTIONS + "budgets_settle(KEYS, ARGV[1], ARGV[2])"


def of_step(ctx, monthly_usd=...) -> list[Budget]:
    """What a call of the step `ctx` reserves against: the step's and the run's budgets if they have one, and the
    tenant's month, always (its spending is counted, so that a budget set mid-month knows what was spent).
    `monthly_usd`: the tenant's monthly budget, read from its settings when not given."""
    if monthly_usd is ...:
        from .models import AgentSettings

        monthly_usd = AgentSettings.objects.filter(tenant_id=ctx.tenant_id).values_list(
            "monthly_budget_usd", flat=True).first()
    limits = []
    if ctx.max_cost is not None:
        limits.append(Budget.step(tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id,
                                  attempt=ctx.attempt, limit_micros=micros(ctx.max_cost)))
    if ctx.run_max_cost is not None:
        limits.append(Budget.run(tenant_id=ctx.tenant_id, run_id=ctx.run_id, limit_micros=micros(ctx.run_max_cost)))
    return [*limits, Budget.month(tenant_id=ctx.tenant_id, limit_micros=micros(monthly_usd))]


def micros(usd) -> int | None:
    return None if usd is None else int(Decimal(str(usd)) * MICROS)


def reserve(budgets: list[Budget], amount_micros: int, *, hold_s: float = HOLD_S) -> Reservation | Refusal:
    """Reserve `amount_micros` against every budget, or against none if one of them has no room for it
    (`spent + reserved + amount > limit`): the Refusal names the first such budget in the order given.
    Unsettled after `hold_s`, the reservation is given back (its worker is taken to have died)."""
    reservation, keys, args = reserving(budgets, amount_micros, hold_s=hold_s)
    return outcome(reservation, script(RESERVE)(keys=keys, args=args))


def reserving(budgets: list[Budget], amount_micros: int, *, hold_s: float = HOLD_S) -> tuple[Reservation, list, list]:
    """A reservation, and the keys and arguments of the script that makes it (RESERVE's)."""
    reservation = Reservation(secrets.token_hex(12), amount_micros, tuple(budgets))
    args = [reservation.id, amount_micros, int(hold_s * 1000)]
    for budget in budgets:
        args += [-1 if budget.limit_micros is None else budget.limit_micros, budget.expire_at]
    return reservation, keys_of(budgets), args


def outcome(reservation: Reservation, result: list) -> Reservation | Refusal:
    """What RESERVE's `result` means for `reservation`."""
    if result[0] == 1:
        return reservation
    return Refusal(reservation.budgets[result[1] - 1], int(result[2]))


def settle(reservation: Reservation, actual_micros: int) -> None:
    """Record the call's real cost, which may differ from the reservation's. Only the first settle or
    release of a reservation counts."""
    script(SETTLE)(keys=keys_of(reservation.budgets), args=[reservation.id, actual_micros])


def release(reservation: Reservation) -> None:
    """Give the reservation back: the call failed and cost nothing."""
    settle(reservation, 0)


def spent(budget: Budget) -> int:
    caught_up()  # this thread's last settlement, sent without waiting, counted
    return int(client().hget(budget.key, "spent") or 0)


def reserved(budget: Budget) -> int:
    """What calls under way have reserved and not settled yet."""
    caught_up()
    return int(client().hget(budget.key, "reserved") or 0)


def cost_micros(*, input_tokens: int, cached_input_tokens: int = 0, output_tokens: int,
                input_price: Decimal | str, cached_input_price: Decimal | str | None = None,
                output_price: Decimal | str) -> int:
    """A call's cost in micro-dollars, rounded up, from prices in dollars per million tokens (dollars per
    million tokens are micro-dollars per token). `input_tokens` includes the cached ones, as OpenAI
    reports them; cached tokens cost `input_price` when the model has no price of its own for them."""
    cached_price = input_price if cached_input_price is None else cached_input_price
    pico = ((input_tokens - cached_input_tokens) * _pico(input_price) + cached_input_tokens * _pico(cached_price)
            + output_tokens * _pico(output_price))
    return -(-pico // 1_000_000)


@functools.lru_cache(maxsize=1024)
def _pico(price: Decimal | str) -> int:
    """A price in dollars per million tokens as pico-dollars per token, exactly: in integers, a call's cost is
    a third of the time it is in decimals (prices have 6 decimals at most, agents.models.PRICE)."""
    pico = Decimal(str(price)).scaleb(6)
    if pico != pico.to_integral_value():
        raise ValueError(f"a price of more than 6 decimals: {price}")
    return int(pico)


def keys_of(budgets) -> list[str]:
    return [key for budget in budgets for key in (budget.key, f"{budget.key}:holds")]


def _now() -> datetime:
    return datetime.now(timezone.utc)

