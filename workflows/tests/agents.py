"""Agents for tests, loaded as a plug-in module (HIL_AGENT_MODULES) in tests and their workers."""

import os
import signal
import time
from decimal import Decimal

from django.db import connection

import tools.tests.tools  # noqa: F401  (declares the test tools in this process and in the tests' workers)
from agents.registry import AgentResult, StepContext, register
from tools.mediation import tool_call
from tools.services import tool_call_once


@register("test_echo")
def echo(ctx: StepContext) -> dict:
    return dict(ctx.config.get("output", {}))


@register("test_sleep")
def sleep(ctx: StepContext) -> dict:
    time.sleep(ctx.config.get("ms", 0) / 1000)
    return {"slept_ms": ctx.config.get("ms", 0)}


@register("test_flaky")
def flaky(ctx: StepContext) -> dict:
    """Fails its first `failures` attempts."""
    if ctx.attempt <= ctx.config.get("failures", 0):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@register("test_hang")
def hang(ctx: StepContext) -> dict:
    try:
        time.sleep(3600)
    except Exception:  # a badly written agent: the engine's cut-off must still get through
        pass
    return {"hung": False}


@register("test_pg_sleep")
def pg_sleep(ctx: StepContext) -> dict:
    """Spends its time in Postgres, where the step's deadline becomes a statement_timeout."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [ctx.config.get("ms", 0) / 1000])
    return {"slept_ms": ctx.config.get("ms", 0)}


@register("test_costly")
def costly(ctx: StepContext) -> AgentResult:
    return AgentResult({"done": True}, cost=Decimal(str(ctx.config["cost"])))


@register("test_side_effect")
def side_effect(ctx: StepContext) -> dict:
    """Records a side effect once per idempotency key, then sleeps `ms` (a window to kill the worker in)."""
    result = tool_call_once(ctx=ctx, tool="test.effect", args={"node": ctx.node_id}, call=lambda a, key: {"effect": True})
    time.sleep(ctx.config.get("ms", 0) / 1000)
    return result


def external_effect(path: str):
    """An external system for tests: appends each call's idempotency key to the file at `path`, so that
    a test (and other processes) can count calls and distinct keys."""

    def call(args: dict, key: str) -> dict:
        with open(path, "a") as f:
            f.write(f"{key}\n")
        return {"done": True, **args}

    return call


@register("test_effects")
def effects(ctx: StepContext) -> dict:
    """Calls the tool `test.effect` once per item of `calls` (args each), recorded in the file `log`;
    then fails if this attempt is one of the first `failures`. With `die_after_effect`, the first
    worker to act kills itself between the effect and its record in the ledger."""
    log = ctx.config["log"]
    call = external_effect(log)
    if ctx.config.get("die_after_effect"):
        def call(args, key, act=call):
            result = act(args, key)
            if not os.path.exists(log + ".died"):
                open(log + ".died", "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return result
    results = [tool_call_once(ctx=ctx, tool="test.effect", args=args, call=call) for args in ctx.config["calls"]]
    if ctx.attempt <= ctx.config.get("failures", 0):
        raise RuntimeError(f"failed after its effects, on attempt {ctx.attempt}")
    time.sleep(ctx.config.get("ms", 0) / 1000)
    return {"results": results}


@register("test_attempt_args")
def attempt_args(ctx: StepContext) -> dict:
    """A careless agent: its call's arguments change from one attempt to the next."""
    tool_call_once(ctx=ctx, tool="test.effect", args={"attempt": ctx.attempt}, call=external_effect(ctx.config["log"]))
    raise RuntimeError("fails, to be retried")


@register("test_gated")
def gated(ctx: StepContext) -> dict:
    """Acts, then makes a call that waits for a human (`pay`, with `amount`), then acts again."""
    call = external_effect(ctx.config["log"])
    before = tool_call_once(ctx=ctx, tool="test.before", args={}, call=call)
    paid = tool_call_once(ctx=ctx, tool="test.pay", args={"amount": ctx.config["amount"]}, call=call,
                          approval={"title": "Pay?", "schema": {"type": "object", "required": ["amount"]},
                                    **ctx.config.get("approval", {})})
    after = tool_call_once(ctx=ctx, tool="test.after", args={}, call=call)
    return {"before": before, "paid": paid, "after": after}


@register("test_die")
def die(ctx: StepContext) -> dict:
    """Kills its worker every time, as the kernel's out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@register("test_output")
def output(ctx: StepContext):
    """Returns `config.output` as it is, or a value that no JSON column can store (`config.bad`)."""
    bad = {"nul": {"text": "a\x00b"}, "surrogate": {"text": "\ud800"}, "nan": {"x": float("nan")},
           "big": {"text": "x" * (2 * 1024 * 1024)}, "object": {"x": object()}}
    return bad[ctx.config["bad"]] if "bad" in ctx.config else ctx.config["output"]


@register("test_other_queue", queue="other")
def other_queue(ctx: StepContext) -> dict:
    """Runs on workers of the queue `<HIL_QUEUE>.other`."""
    return {"queue": "other"}


@register("test_http")
def http(ctx: StepContext) -> dict:
    """Calls `config.url`, giving the HTTP client the time left before the step's deadline."""
    import httpx

    return {"status": httpx.get(ctx.config["url"], timeout=ctx.remaining()).status_code}


@register("test_tool_calls")
def tool_calls(ctx: StepContext) -> dict:
    """Calls tools as a model might: `calls`, [[tool, args], ...], or read afresh from the JSON file `calls_file`
    on each run (so that a test can change its mind between attempts)."""
    import json

    calls = ctx.config.get("calls") or json.loads(open(ctx.config["calls_file"]).read())
    return {"results": [tool_call(ctx, name, args) for name, args in calls]}


@register("test_artifact")
def artifact(ctx: StepContext) -> dict:
    """Record the run artifact `config.artifact` (a SQL result, say), as a data agent does."""
    ctx.emit("artifact", {"node": ctx.node_id, **ctx.config["artifact"]})
    return {}
