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

from core.redis import script

PROBE_S = 60  # longer than most model calls: only then is a lost probe replaced
FORGET_S = 86_400  # an open breaker nobody asks about for this long after its cooldown is forgotten

# Every script starts with Redis's time, in ms.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: open, probe. ARGV: probe ms. Returns 1 when the call may go.
ALLOW = NOW + """
local open_until = tonumber(redis.call('GET', KEYS[1]))
if not open_until then return 1 end
if now < open_until then return 0 end
-- Cooling down is over: the first caller gets the probe, the others wait for its outcome.
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: open. Returns "closed", "open" or "half-open".
STATE = NOW + """
local open_until = tonumber(redis.call('GET', KEYS[1]))
if not open_until then return 'closed' end
if now < open_until then return 'open' end
return 'half-open'
"""

# KEYS: fails, open, probe. ARGV: failures, window ms, cooldown ms, a unique id for this failure, and
# how long after its cooldown an open breaker is kept (ms).
FAILURE = NOW + """
local failures, window, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local open_until = tonumber(redis.call('GET', KEYS[2]))
local trip = false
if open_until then
  -- Failing while open is a call from before it opened: it says nothing new. Failing when
  -- half-open is the probe's (or a late call's): open again.
  trip = now >= open_until
else
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[1], window)
  trip = redis.call('ZCARD', KEYS[1]) >= failures
end
if trip then
  redis.call('SET', KEYS[2], now + cooldown, 'PX', cooldown + ARGV[5])
  redis.call('DEL', KEYS[1], KEYS[3])
end
"""

# KEYS: fails, open, probe. A success closes the breaker once the cooldown is over (the probe's);
# before, it is a call from before it opened.
SUCCESS = NOW + """
local open_until = tonumber(redis.call('GET', KEYS[2]))
if open_until and now >= open_until then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
"""


def model_key(*, tenant_id: int, endpoint: int | str, model: str) -> str:
    """The breaker of `model` at `endpoint` (the endpoint's id or base URL) of a tenant's."""
    return f"hil:{{t{tenant_id}}}:breaker:{endpoint}:{model}"


def allow(model_key: str, *, probe_s: float = PROBE_S) -> bool:
    """Whether a call may go to the model now. When it returns True, report the call's outcome."""
    return script(ALLOW)(keys=_keys(model_key)[1:], args=[int(probe_s * 1000)]) == 1


def record_failure(model_key: str, *, failures: int | None = None, window_s: float | None = None,
                   cooldown_s: float | None = None) -> None:
    failures = settings.HIL_BREAKER_FAILURES if failures is None else failures
    window_s = settings.HIL_BREAKER_WINDOW_S if window_s is None else window_s
    cooldown_s = settings.HIL_BREAKER_COOLDOWN_S if cooldown_s is None else cooldown_s
    script(FAILURE)(keys=_keys(model_key), args=[failures, int(window_s * 1000), int(cooldown_s * 1000),
                                                   uuid.uuid4().hex, FORGET_S * 1000])


def record_success(model_key: str) -> None:
    script(SUCCESS)(keys=_keys(model_key))


def state(model_key: str) -> str:
    return script(STATE)(keys=_keys(model_key)[1:2]).decode()


def _keys(model_key: str) -> list[str]:
    return [f"{model_key}:fails", f"{model_key}:open", f"{model_key}:probe"]

