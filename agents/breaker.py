"""A circuit breaker per model of an endpoint, shared by every worker through Redis.

Closed, calls go through. HIL_BREAKER_FAILURES failures within HIL_BREAKER_WINDOW_S open it: calls are
refused for HIL_BREAKER_COOLDOWN_S. After that it is half-open: one caller at a time gets a probe
call; its success closes the breaker, its failure opens it for another cooldown. A probe whose
caller never reports back is handed to another caller after PROBE_S.

Keys for a model (`model_key`): `<key>:fails`, a sorted set of failures by time; `<key>:open`, the time
the cooldown ends, present while the breaker is open or half-open; `<key>:probe`, present while a
probe is out. Times are Redis's clock (TIME, in ms) so that workers with skewed clocks agree.
"""

import uuid

from django.conf import settings

from core.redis import LUA_NOW, script

PROBE_S = 60  # longer than most model calls: only then is a lost probe replaced
FORGET_S = 86_400  # an open breaker nobody asks about for this long after its cooldown is forgotten

# Lua functions for the scripts here and in the router (agents/router.py), which runs the breaker together with
# the call's budget reservation in one round trip. `k`: the model's keys (`keys_of`), `now`: Redis's time in ms.
FUNCTIONS = """
-- 1 when a call may go: the breaker is closed, or half-open and this caller gets the probe.
local function breaker_allow(k, probe_ms, now)
  local open_until = tonumber(redis.call('GET', k.open))
  if not open_until then return 1 end
  if now < open_until then return 0 end
  -- Cooling down is over: the first caller gets the probe, the others wait for its outcome.
  if redis.call('SET', k.probe, '1', 'NX', 'PX', probe_ms) then return 1 end
  return 0
end

-- args: failures, window ms, cooldown ms, a unique id for this failure, and how long after its cooldown an open
-- breaker is kept (ms).
local function breaker_failure(k, args, now)
  local failures, window, cooldown = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local open_until = tonumber(redis.call('GET', k.open))
  local trip = false
  if open_until then
    -- Failing while open is a call from before it opened: it says nothing new. Failing when
    -- half-open is the probe's (or a late call's): open again.
    trip = now >= open_until
  else
    redis.call('ZADD', k.fails, now, args[4])
    redis.call('ZREMRANGEBYSCORE', k.fails, '-inf', now - window)
    redis.call('PEXPIRE', k.fails, window)
    trip = redis.call('ZCARD', k.fails) >= failures
  end
  if trip then
    redis.call('SET', k.open, now + cooldown, 'PX', cooldown + args[5])
    redis.call('DEL', k.fails, k.probe)
  end
end

-- A success closes the breaker once the cooldown is over (the probe's); before, it is a call from before it opened.
local function breaker_success(k, now)
  local open_until = tonumber(redis.call('GET', k.open))
  if open_until and now >= open_until then redis.call('DEL', k.fails, k.open, k.probe) end
end
"""
NOW = LUA_NOW + """
local k = {fails = KEYS[1], open = KEYS[2], probe = KEYS[3]}
"""
# KEYS: the model's (`keys_of`) for all of them.
ALLOW = FUNCTIONS + NOW + "return breaker_allow(k, ARGV[1], now)"  # ARGV: probe ms
FAILURE = FUNCTIONS + NOW + "breaker_failure(k, ARGV, now)"  # ARGV: as breaker_failure's args
SUCCESS = FUNCTIONS + NOW + "breaker_success(k, now)"
STATE = NOW + """
local open_until = tonumber(redis.call('GET', k.open))
if not open_until then return 'closed' end
if now < open_until then return 'open' end
return 'half-open'
"""


def model_key(*, tenant_id: int, endpoint: int | str, model: str) -> str:
    """The breaker of `model` at `endpoint` (the endpoint's id or base URL) of a tenant's."""
    return f"hil:{{t{tenant_id}}}:breaker:{endpoint}:{model}"


def allow(model_key: str, *, probe_s: float = PROBE_S) -> bool:
    """Whether a call may go to the model now. When it returns True, report the call's outcome."""
    return script(ALLOW)(keys=keys_of(model_key), args=[int(probe_s * 1000)]) == 1


def failure_args(*, failures: int | None = None, window_s: float | None = None,
                 cooldown_s: float | None = None) -> list:
    """FAILURE's arguments (breaker_failure's), from the settings unless given."""
    failures = settings.HIL_BREAKER_FAILURES if failures is None else failures
    window_s = settings.HIL_BREAKER_WINDOW_S if window_s is None else window_s
    cooldown_s = settings.HIL_BREAKER_COOLDOWN_S if cooldown_s is None else cooldown_s
    return [failures, int(window_s * 1000), int(cooldown_s * 1000), uuid.uuid4().hex, FORGET_S * 1000]


def record_failure(model_key: str, **limits) -> None:
    script(FAILURE)(keys=keys_of(model_key), args=failure_args(**limits))


def record_success(model_key: str) -> None:
    script(SUCCESS)(keys=keys_of(model_key))


def state(model_key: str) -> str:
    return script(STATE)(keys=keys_of(model_key)).decode()


def keys_of(model_key: str) -> list[str]:
    return [f"{model_key}:fails", f"{model_key}:open", f"{model_key}:probe"]
