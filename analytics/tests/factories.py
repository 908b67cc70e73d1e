"""Raw rows with explicit timestamps, written in bulk, for rollups to read."""

import math
import random
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection

from accounts.models import AuditEntry
from agents.models import LLMCall
from analytics.models import Satisfaction
from tools.models import ToolCall
from workflows.models import Conversation, Run, Step, Workflow, WorkflowVersion

OUTCOMES = [(Run.Status.DONE, Run.Sink.FINISH)] * 12 + [(Run.Status.DONE, Run.Sink.HANDOVER)] * 5 + [
    (Run.Status.FAILED, Run.Sink.HANDOVER)] * 2 + [(Run.Status.CANCELLED, "")]
NODES = ["classify", "lookup", "reply"]
ERRORS = ["timeout after 2000 ms", "invalid output", "tool refused"]


def versions(tenant, slug: str, count: int = 2) -> list[WorkflowVersion]:
    workflow = Workflow.objects.create(tenant=tenant, slug=slug, name=slug)
    return [WorkflowVersion.objects.create(tenant=tenant, workflow=workflow, number=n, spec_yaml="entry: a")
            for n in range(1, count + 1)]


def runs(version: WorkflowVersion, ends: list[datetime], *, rng: random.Random, outcomes=OUTCOMES,
         ms: tuple[int, int] = (10, 316_228), details: bool = True) -> list[Run]:
    """Runs of `version` that ended at `ends`, each in a conversation of its own, of random outcome and a duration
    log-uniform in `ms`, some with revenue, each (with `details`) with steps, model calls, tool calls and tool
    refusals around its end, and for some a satisfaction rating after it."""
    conversations = Conversation.objects.bulk_create([
        Conversation(tenant_id=version.tenant_id, workflow_id=version.workflow_id) for _ in ends])
    made = []
    for end, conversation in zip(ends, conversations):
        status, sink = rng.choice(outcomes)
        made.append(Run(tenant_id=version.tenant_id, conversation=conversation, workflow_version=version,
                        status=status, sink=sink, current_node=sink or "classify", finished_at=end,
                        cost=Decimal(rng.randrange(0, 50_000)) / 1_000_000,
                        revenue=Decimal(rng.randrange(0, 90_000)) / 100 if rng.random() < 0.3 else None))
    Run.objects.bulk_create(made)
    low, high = math.log10(ms[0]), math.log10(ms[1])
    durations = [timedelta(milliseconds=round(10 ** rng.uniform(low, high))) for _ in made]
    _set_times(Run, [(run.finished_at - d, run.id) for run, d in zip(made, durations)])
    for run, duration in zip(made, durations):
        run.created_at = run.finished_at - duration
    if details:
        _details(made, rng)
    return made


def _details(made: list[Run], rng: random.Random) -> None:
    steps, calls, tool_calls, refusals, ratings = [], [], [], [], []
    for run in made:
        for attempt, node in enumerate(rng.sample(NODES, rng.randint(1, 3)), start=1):
            failed = rng.random() < 0.2
            finished = run.finished_at - timedelta(milliseconds=rng.randrange(0, 5000))
            steps.append(Step(tenant_id=run.tenant_id, run=run, node_id=node, attempt=attempt,
                              status=Step.Status.FAILED if failed else Step.Status.SUCCEEDED,
                              error=rng.choice(ERRORS) if failed else "", idempotency_key=f"{run.id}:{node}",
                              started_at=finished - timedelta(milliseconds=rng.randrange(1, 3000)),
                              finished_at=finished))
        for n in range(rng.randint(0, 2)):
            calls.append(LLMCall(tenant_id=run.tenant_id, run=run, node_id="reply", attempt=n + 1, model="m",
                                 tokens_in=rng.randrange(10, 4000), tokens_out=rng.randrange(1, 500),
                                 cost=Decimal(rng.randrange(0, 20_000)) / 1_000_000,
                                 cache=rng.choice(["", "", "exact", "semantic"]),
                                 saved_cost=Decimal(rng.randrange(0, 5000)) / 1_000_000,
                                 outcome=rng.choice(["ok", "ok", "ok", "timeout"]),
                                 created_at=run.finished_at - timedelta(seconds=rng.uniform(0, 90))))
        for seq in range(rng.randint(0, 2)):
            tool_calls.append(ToolCall(tenant_id=run.tenant_id, run=run, node_id="lookup", seq=seq,
                                       idempotency_key=f"{run.id}:lookup:{seq}", tool="crm.lookup_order",
                                       status=rng.choice(["succeeded", "succeeded", "failed", "rejected"])))
        if rng.random() < 0.3:
            refusals.append((AuditEntry(tenant_id=run.tenant_id, action="tool.refused", object_type="workflows.Run",
                                        object_id=str(run.id)), run.finished_at - timedelta(seconds=1)))
        if rng.random() < 0.2:
            ratings.append((Satisfaction(tenant_id=run.tenant_id, conversation_id=run.conversation_id, run=run,
                                         score=rng.randint(1, 5)), run.finished_at + timedelta(seconds=30)))
    Step.objects.bulk_create(steps)
    LLMCall.objects.bulk_create(calls)
    ToolCall.objects.bulk_create(tool_calls)
    AuditEntry.objects.bulk_create([entry for entry, _ in refusals])
    Satisfaction.objects.bulk_create([rating for rating, _ in ratings])
    for model, rows in ((AuditEntry, refusals), (Satisfaction, ratings)):
        _set_times(model, [(at, row.pk) for row, at in rows])
        for row, at in rows:
            row.created_at = at


def _set_times(model, pairs: list[tuple[datetime, object]]) -> None:
    """created_at is set on insert (auto_now_add); give the rows the times the test wants."""
    with connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {model._meta.db_table} SET created_at = %s WHERE id = %s", pairs)


def stray_rows(tenant, version: WorkflowVersion, at: datetime) -> None:
    """Rows no rollup may count: an active run, and a model call whose run was deleted."""
    conversation = Conversation.objects.create(tenant=tenant, workflow_id=version.workflow_id)
    Run.objects.create(tenant=tenant, conversation=conversation, workflow_version=version, status=Run.Status.WAITING,
                       current_node="approve")
    LLMCall.objects.create(tenant=tenant, run=None, model="m", tokens_in=5, cost=Decimal("0.5"), outcome="ok",
                           created_at=at)
