"""Agents for tests, loaded as a plug-in module (HIL_AGENT_MODULES) in tests and their workers."""

import time
from decimal import Decimal

from django.db import connection

from agents.registry import AgentResult, StepContext, register
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
