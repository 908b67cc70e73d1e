"""What the one mediation point of tool calls costs: `tools.mediation.tool_call` of a no-op tool that returns
2 kB, with everything on: input and output schemas, the node's grant, the tenant's policies (three, none
matching), a rate limit and quotas (Redis), the ledger (a row written before the call and completed after it,
under the run's lease), PII redaction of the output, and the `tool.call` event. Against the bare ledger
(`tool_call_once`) and the bare function, on the same run, for a read and for a write (whose ledger row is
committed before and after the call). Target: mediation overhead p50 < 2 ms.

    make bench-tools          (or: python -m hil_project.launcher exec python bench/tools.py [--calls N])
"""

import argparse
import statistics
import sys
import time
import uuid
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import production  # noqa: E402,F401  (Django, as production runs it)

from accounts.models import Tenant  # noqa: E402
from agents.registry import StepContext  # noqa: E402
from tools.contracts import builtin  # noqa: E402
from tools.mediation import tool_call  # noqa: E402
from tools.models import ToolLimit, ToolPolicy  # noqa: E402
from tools.services import governed_save, tool_call_once  # noqa: E402
from workflows import engine, services  # noqa: E402
from workflows.models import Run  # noqa: E402

WORDS = "The order shipped from the Berlin warehouse on Monday and reaches the customer within five days. "
OUTPUT = {"status": "ok", "notes": (WORDS * 22)[:2000]}
WITH_PII = {"status": "ok", "notes": (WORDS * 18)[:1700] + " Contact ada.lovelace@example.com or +44 20 7946 "
            "0958; card 4111 1111 1111 1111; IBAN DE89 3704 0044 0532 0130 00."}
SPEC = """
entry: work
nodes:
  - {id: work, agent: rules, tools: [bench.noop, bench.pii, bench.write]}
edges:
  - {from: work, to: FINISH}
"""


@builtin("bench.noop", risk="read", input_schema={
    "type": "object", "additionalProperties": False, "required": ["order_id"],
    "properties": {"order_id": {"type": "integer"}, "detail": {"enum": ["short", "full"]}}},
    output_schema={"type": "object", "required": ["status", "notes"],
                   "properties": {"status": {"type": "string"}, "notes": {"type": "string"}}})
def noop(args: dict, key: str) -> dict:
    return OUTPUT


@builtin("bench.pii", risk="read", input_schema={"type": "object"})
def with_pii(args: dict, key: str) -> dict:
    return WITH_PII


@builtin("bench.write", risk="write", input_schema={"type": "object"})
def write(args: dict, key: str) -> dict:
    return OUTPUT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    tenant = Tenant.objects.create(slug=f"bench-tools-{uuid.uuid4().hex[:8]}", name="bench tools")
    try:
        ctx = context(tenant)
        for rule in ("refunds.*", "crm.*", "payments.issue"):
            governed_save(obj=ToolPolicy(tenant=tenant, name=rule, tool=rule, require="approval"), actor=None)
        for tool in ("bench.noop", "bench.pii", "bench.write"):
            governed_save(obj=ToolLimit(tenant=tenant, tool=tool, calls=10**9, window_s=60, per_day=10**9), actor=None)
        figures = {
            "function": timed(ctx, lambda: noop({"order_id": 1}, "k"), calls),
            "ledger, a read": timed(ctx, lambda: tool_call_once(ctx=ctx, tool="bench.noop", args={"order_id": 1},
                                                                call=noop, effect=False), calls),
            "tool_call, a read": timed(ctx, lambda: tool_call(ctx, "bench.noop", {"order_id": 1, "detail": "full"}),
                                       calls),
            "tool_call, PII in output": timed(ctx, lambda: tool_call(ctx, "bench.pii", {}), calls),
            "ledger, a write": timed(ctx, lambda: tool_call_once(ctx=ctx, tool="bench.write", args={}, call=write),
                                     calls),
            "tool_call, a write": timed(ctx, lambda: tool_call(ctx, "bench.write", {}), calls),
        }
        assert tool_call(ctx, "bench.pii", {})["notes"].endswith("card <CARD_1>; IBAN <IBAN_1>.")
    finally:
        tenant.delete()
    report(figures)


def context(tenant) -> StepContext:
    """A step of a real run, held under a lease as a worker holds it."""
    workflow = services.workflow_create(tenant=tenant, slug="bench")
    services.workflow_version_publish(version=services.workflow_version_create(workflow=workflow, spec_yaml=SPEC))
    conversation = services.conversation_start(tenant=tenant, workflow_slug="bench")
    run = services.message_post(conversation=conversation, text="bench", turn_id="t1")[0].run
    lease = uuid.uuid4().hex
    Run.objects.filter(id=run.id).update(status=Run.Status.RUNNING, lease_owner=lease)
    return StepContext(tenant_id=tenant.id, run_id=str(run.id), node_id="work", attempt=1, config={}, state={},
                       holding=partial(engine._holding, run.id, lease), workflow_id=workflow.id,
                       tools=("bench.noop", "bench.pii", "bench.write"))


def timed(ctx: StepContext, call, n: int) -> list[float]:
    for _ in range(min(200, n // 10)):  # warm: caches, prepared scripts, connections
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
        ctx.rows.clear(), ctx.events.clear()  # the engine commits them with the step's outcome
    return sorted(times)


def report(figures: dict) -> None:
    base = statistics.median(figures["function"])
    print(f"{'ms per call':28} {'p50':>7} {'p95':>7} {'p99':>7} {'p50 over the function':>22}")
    for name, times in figures.items():
        p50, p95, p99 = (times[int(len(times) * q)] for q in (0.5, 0.95, 0.99))
        print(f"{name:28} {p50:7.3f} {p95:7.3f} {p99:7.3f} {p50 - base:22.3f}")
    print("tool_call: input schema, grant, 3 policies, rate limit + quotas (Redis), the ledger (a read: recorded\n"
          "with the step's commit; a write: pending, then done, each committed under the run's lease), output schema,\n"
          "PII redaction of the 2 kB output, the tool.call event. Target: overhead p50 < 2 ms.")


if __name__ == "__main__":
    main()
