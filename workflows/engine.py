"""The engine: walks a run's DAG on a Celery worker, one committed step at a time.

A worker claims a run with a conditional update and holds a lease on it, which a watch thread
extends while a long step runs (the same thread kills a worker process whose step overstays); every
step's output is committed, fenced by that lease, before the next step starts. Lease and wake-up times are on the database's clock. A run that waits on a
human holds no worker. Whatever goes wrong between claiming a node and committing it (the agent,
its output, routing, the approval request, the sink) is that node's failure, handled on its
failure path; a run whose workers keep dying on the same node is taken there after
HIL_MAX_CLAIMS tries. So a run can fail, but never loops.
"""

import copy
import json
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache, partial

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from agents import registry
from agents.registry import LeaseLost, StepFailure, WaitForHuman
from core import deadlines, tracing
from core.expressions import evaluate
from tools import pii
from tools.services import pii_refill

from . import humans
from . import spec as workflow_spec
from .events import SQL, db_now, run_commit
from .models import Conversation, Message, Run, Step, Workflow, WorkflowVersion

log = logging.getLogger(__name__)
TRANSIENT = (OperationalError, InterfaceError)  # the database is away: try again later, it is nobody's fault


# --- queueing ----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def version_get(version_id: int) -> WorkflowVersion:
    """A workflow version; they are immutable, so each process reads each one once."""
    return WorkflowVersion.objects.only("number", "spec", "workflow_id").get(pk=version_id)


def _stage(workflow_id: int) -> str:
    return Workflow.objects.values_list("stage", flat=True).get(pk=workflow_id)


def queue_for(spec: dict, node_id: str) -> str:
    """The Celery queue of the worker that should run `node_id`: its agent's own, or the default."""
    default = current_app.conf.task_default_queue
    if node_id in workflow_spec.SINKS:
        return default
    agent = workflow_spec.node(spec, node_id).get("agent")
    own = registry.queue_of(agent) if agent else ""
    return f"{default}.{own}" if own else default


def task_time_limit(spec: dict) -> float:
    """The hard time limit of a task running this workflow: the outer backstop, should a worker child
    be too stuck even for its watchdog (see _Watch). Twice the longest step, so that the steps before
    it fit in the same task (see run_execute), and the grace a step has past its deadline."""
    longest = max(workflow_spec.limits(n)["timeout_ms"] for n in spec["nodes"]) / 1000
    return 2 * longest + settings.HIL_STEP_GRACE_S


def task_send(run_id, spec: dict, node_id: str, countdown_s: float = 0) -> None:
    """Send the run's task now. If the broker is down the run stays queued in the database and the
    sweeper sends it again later: nothing committed is lost, and the caller sees no error."""
    from .tasks import run_execute_task

    try:
        run_execute_task.apply_async((str(run_id),), queue=queue_for(spec, node_id), countdown=countdown_s or None,
                                     time_limit=task_time_limit(spec), retry=False)
    except BrokerError as e:
        log.warning("run %s not sent (%s); the sweeper will send it", run_id, e)


def run_enqueue(run: Run, countdown_s: float = 0) -> None:
    """Send the run's task once the caller's transaction commits."""
    spec = version_get(run.workflow_version_id).spec
    transaction.on_commit(partial(task_send, run.id, spec, run.current_node, countdown_s))


def queued_fields(delay_s: float = 0) -> dict:
    """The fields of a run that is queued to wake in `delay_s`: due then, and sent again by the
    sweeper if no worker has taken it HIL_RESEND_AFTER_S later."""
    return {"status": Run.Status.QUEUED, "lease_owner": "", "lease_expires_at": None, "claims": 0, "resends": 0,
            "wake_at": db_now(delay_s), "resend_at": db_now(delay_s + settings.HIL_RESEND_AFTER_S)}


# --- claiming and walking ----------------------------------------------------------------


def run_seen(run_id) -> dict | None:
    return Run.objects.filter(id=run_id).values("tenant_id", "current_node", "attempt", "started_at", "trace_parent",
                                                "workflow_version_id").first()


def run_claim(run_id, seen: dict | None = None) -> tuple[Run, str] | None:
    """QUEUED (and due) or RUNNING with an expired lease → RUNNING under a new lease."""
    seen = seen or run_seen(run_id)
    if seen is None:
        return None
    lease = uuid.uuid4().hex
    due = ("(status = %s AND (wake_at IS NULL OR wake_at <= clock_timestamp())"
           " OR status = %s AND lease_expires_at < clock_timestamp())", [Run.Status.QUEUED, Run.Status.RUNNING])
    started = {"node": seen["current_node"], "attempt": seen["attempt"], "resumed": seen["started_at"] is not None}
    run = run_commit(
        Run(id=run_id, tenant_id=seen["tenant_id"]), where=due,
        fields={"status": Run.Status.RUNNING, "lease_owner": lease, "lease_expires_at": db_now(settings.HIL_LEASE_S),
                "claims": SQL("claims + 1"), "wake_at": None, "resend_at": None, "resends": 0,
                "started_at": SQL("coalesce(started_at, clock_timestamp())")},
        events=[("run.started", started)],
    )
    return (run, lease) if run is not None else None


def run_execute(*, run_id, queue: str | None = None, time_limit: float | None = None) -> None:
    """Walk the run from its current node until it ends, waits for a human, waits to retry, or
    must go on in another task: one for another queue, or a fresh one when this task's hard time
    limit (`time_limit`, counted from now) could cut the next step off before its own deadline."""
    started = time.monotonic()
    seen = run_seen(run_id)
    if seen is None:
        return
    version = version_get(seen["workflow_version_id"])
    with _traced(run_id, seen, version):
        claim = run_claim(run_id, seen)
        if claim is not None:
            _walk(*claim, version.spec, started, queue, time_limit)


@contextmanager
def _traced(run_id, seen: dict, version: WorkflowVersion):
    """The turn's trace, continued by every task that walks the run (core/tracing.py), and its log lines' fields."""
    slug = _workflow_slug(version.workflow_id)
    with tracing.continued(seen["trace_parent"]), tracing.logged_as(tenant=seen["tenant_id"], run=str(run_id)), \
            tracing.span(f"invoke_workflow {slug}", **{
                "gen_ai.operation.name": "invoke_workflow", "hil.workflow": slug,
                "hil.workflow.version": version.number, "hil.tenant": seen["tenant_id"], "hil.run": str(run_id)}):
        yield


@lru_cache(maxsize=1024)
def _workflow_slug(workflow_id: int) -> str:
    return Workflow.objects.values_list("slug", flat=True).get(pk=workflow_id)


def _walk(run: Run, lease: str, spec: dict, started: float, queue: str | None, time_limit: float | None) -> None:
    try:
        while run.status == Run.Status.RUNNING:
            node_id = run.current_node
            if run.claims > settings.HIL_MAX_CLAIMS:
                run = _node_failed(run, lease, spec, node_id, error=(
                    f"did not finish in {run.claims - 1} tries: its worker died or was stopped each time "
                    "(killed, out of memory, or past its hard time limit)"))
            elif node_id in workflow_spec.SINKS:
                run = _sink_reach(run, lease)
            elif _elsewhere(spec, node_id, queue, time_limit and time_limit - (time.monotonic() - started)):
                _commit(run, lease, events=[], **queued_fields())
                return run_enqueue(run)
            elif workflow_spec.node(spec, node_id).get("kind") == "approval":
                run = _approval_wait(run, lease, spec, workflow_spec.node(spec, node_id))
            else:
                run = _step_run(run, lease, spec, workflow_spec.node(spec, node_id))
    except LeaseLost:
        log.warning("run %s: lease lost, another worker has it", run.id)


def _elsewhere(spec: dict, node_id: str, queue: str | None, time_left: float | None) -> bool:
    """Whether the node must run in another task: on its agent's queue, or with a fresh time limit."""
    if queue is not None and queue_for(spec, node_id) != queue:
        return True
    needs = workflow_spec.limits(workflow_spec.node(spec, node_id))["timeout_ms"] / 1000 + settings.HIL_STEP_GRACE_S
    return time_left is not None and time_left < needs


@dataclass
class _Commit:
    """What one statement commits for a run: its new field values, rows to insert and events, in order.
    Two add up, so that a run's last step and its end are committed as one."""

    fields: dict = field(default_factory=dict)
    rows: tuple = ()
    events: list = field(default_factory=list)

    def __add__(self, other: "_Commit") -> "_Commit":
        return _Commit({**self.fields, **other.fields}, (*self.rows, *other.rows), [*self.events, *other.events])


def _commit(run: Run, lease: str, *, events: list[tuple[str, dict]], rows: tuple = (), **fields) -> Run:
    """Commit fields, rows and events of a run this worker holds; LeaseLost if it no longer does."""
    updated = run_commit(run, lease=lease, fields=fields, events=events, rows=rows)
    if updated is None:
        raise LeaseLost
    return updated


@contextmanager
def _holding(run_id, lease: str):
    """A transaction that commits only while this worker still holds the run: the run's row stays
    locked until it does, so no other worker can take the run over in between."""
    with transaction.atomic():
        with connection.cursor() as cursor:  # raw: every tool call takes it, and the ORM's query costs more than it
            cursor.execute(f"SELECT 1 FROM {Run._meta.db_table} WHERE id = %s AND status = %s AND lease_owner = %s"
                           " FOR NO KEY UPDATE", [run_id, Run.Status.RUNNING, lease])
            if cursor.fetchone() is None:
                raise LeaseLost
        yield


def _step_run(run: Run, lease: str, spec: dict, node: dict) -> Run:
    """Run one attempt of an agent node and commit its outcome, in its span; returns the run as committed."""
    with tracing.logged_as(node=node["id"]), tracing.span(f"invoke_agent {node['agent']}", **{
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": node["agent"], "hil.node": node["id"],
            "hil.attempt": run.attempt}):
        return _step_attempt(run, lease, spec, node)


def _step_attempt(run: Run, lease: str, spec: dict, node: dict) -> Run:
    node_id, limits = node["id"], workflow_spec.limits(node)
    workflow_id = version_get(run.workflow_version_id).workflow_id
    ctx = registry.StepContext(tenant_id=run.tenant_id, run_id=str(run.id), node_id=node_id, attempt=run.attempt,
                               config=node.get("config", {}), state=run.state, holding=partial(_holding, run.id, lease),
                               max_cost=limits["max_cost"], on_budget=node.get("on_budget", "HANDOVER"),
                               run_max_cost=spec.get("limits", {}).get("max_cost"),
                               workflow_version_id=run.workflow_version_id, tools=tuple(node.get("tools", ())),
                               workflow_id=workflow_id, stage=partial(_stage, workflow_id))
    started = timezone.now()
    error, retryable, waiting = None, True, None
    timeout_s = limits["timeout_ms"] / 1000
    with _watcher().watching(run.id, lease, timeout_s), deadlines.deadline(timeout_s):
        try:
            with deadlines.database_deadline(connection):
                result = registry.get(node["agent"])(ctx)
            deadlines.check()  # an agent that returns late failed, even if it did not notice
            result = result if isinstance(result, registry.AgentResult) else registry.AgentResult(result)
            result.cost += ctx.tool_cost
            _output_check(result.output)
            if ctx.max_cost is not None and result.cost > Decimal(str(ctx.max_cost)):  # as a human may have raised it
                raise StepFailure(f"cost {result.cost} is over the node's budget of {ctx.max_cost}")
            state = {**run.state, node_id: result.output}
            next_id = _route(spec, node_id, state)
        except WaitForHuman as wait:
            waiting = wait
        except LeaseLost:
            raise
        except StepFailure as e:
            error, retryable = str(e), False
        except Exception as e:  # an agent's failure is the run's to handle, not the worker's
            if deadlines.expired():
                error = f"timed out after {limits['timeout_ms']} ms"
            elif isinstance(e, TRANSIENT):  # our database is away: no attempt is spent, the sweeper retries
                raise
            else:
                log.info("run %s node %s attempt %s failed", run.id, node_id, run.attempt, exc_info=True)
                error = f"{type(e).__name__}: {e}"
    made = _Commit(rows=tuple(ctx.rows), events=ctx.events)  # the step's model calls, whatever came of it
    if waiting is not None:
        try:
            return _wait(run, lease, node_id, waiting.key, waiting.request, made)
        except (LeaseLost, *TRANSIENT):
            raise
        except Exception as e:
            error, retryable = f"the approval request failed: {type(e).__name__}: {e}", False
    finished = timezone.now()
    step = Step(tenant_id=run.tenant_id, run_id=run.id, node_id=node_id, agent=node["agent"], attempt=run.attempt,
                idempotency_key=f"{run.id}:{node_id}:{run.attempt}", started_at=started, finished_at=finished)
    duration_ms = round((finished - started).total_seconds() * 1000)
    log.info("step %s attempt %s %s in %d ms", node_id, run.attempt, "failed" if error else "succeeded", duration_ms)
    if error is None:
        step.status, step.output, step.cost = Step.Status.SUCCEEDED, result.output, result.cost
        reason = f"node '{node_id}' routed the conversation to a human" if next_id == workflow_spec.HANDOVER else ""
        done = made + _Commit(rows=(step,), events=[("step.succeeded", {
            "node": node_id, "attempt": step.attempt, "output": result.output, "cost": str(result.cost),
            "usage": result.usage, "duration_ms": duration_ms})], fields={
            "state": state, "current_node": next_id, "attempt": 1, "claims": 0, "cost": run.cost + result.cost,
            "reason": reason, "lease_expires_at": db_now(settings.HIL_LEASE_S)})
        try:
            if next_id not in workflow_spec.SINKS:
                return _commit(run, lease, rows=done.rows, events=done.events, **done.fields)
            return _sink_reach(run, lease, last_step=done, reply=result.output.get("reply"))
        except TRANSIENT:
            raise
        except DatabaseError as e:  # what the checks above did not foresee, the database refused
            error, retryable = f"the step's output could not be stored: {e}", False
            step.output, step.cost = None, Decimal(0)

    step.status, step.error = Step.Status.FAILED, error
    tracing.failed(pii.masked(error), "step_failed")
    failed = {"node": node_id, "attempt": step.attempt, "error": error, "duration_ms": duration_ms}
    if retryable and run.attempt <= limits["max_retries"]:
        delay_s = min(limits["backoff"] * 2 ** (run.attempt - 1), limits["max_backoff"]) / 1000
        run = _commit(run, lease, rows=(*made.rows, step), events=[*made.events, ("step.failed", failed), (
            "step.retry_scheduled", {"node": node_id, "attempt": run.attempt + 1, "delay_ms": round(delay_s * 1000)})],
            attempt=run.attempt + 1, **queued_fields(delay_s))
        run_enqueue(run, countdown_s=delay_s)
        return run
    return _node_failed(run, lease, spec, node_id, error=error, step=step, data=failed, made=made)


def _route(spec: dict, node_id: str, state: dict) -> str:
    try:
        return workflow_spec.next_node(spec, node_id, state)
    except Exception as e:
        raise StepFailure(f"routing after node '{node_id}' failed: {type(e).__name__}: {e}") from None


def _output_check(output) -> None:
    """Refuse here, with a reason, an output that Postgres's jsonb would refuse at commit."""
    if not isinstance(output, dict):
        raise StepFailure(f"the agent returned {type(output).__name__}, not a JSON object")
    try:
        text = json.dumps(output, ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except (TypeError, ValueError) as e:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise StepFailure(f"the output is not storable JSON: {e}") from None
    if "\\u0000" in text:
        raise StepFailure("the output contains a NUL character (\\u0000), which cannot be stored")
    if size > settings.HIL_MAX_OUTPUT_BYTES:
        raise StepFailure(f"the output is {size} bytes, over the limit of {settings.HIL_MAX_OUTPUT_BYTES}")


def _node_failed(run: Run, lease: str, spec: dict, node_id: str, *, error: str, step: Step | None = None,
                 data: dict | None = None, made: _Commit = _Commit()) -> Run:
    """Take the run down the failure path of `node_id`: a node's `on_failure` (by default HANDOVER), committing
    what the step `made` with it. A sink that fails: FINISH hands over instead, and a failed HANDOVER ends the
    run as failed."""
    if node_id == workflow_spec.HANDOVER:
        with transaction.atomic():
            _conversation_lock(run.conversation_id)
            return _run_end(run, lease, _Commit({"status": Run.Status.FAILED, "reason": f"the handover failed: {error}"},
                                                events=[("run.failed", {"sink": node_id, "error": error})]))
    if node_id == workflow_spec.FINISH:
        return _commit(run, lease, events=[("run.sink_failed", {"sink": node_id, "error": error,
                                                                "next": workflow_spec.HANDOVER})],
                       current_node=workflow_spec.HANDOVER, claims=0, reason=f"the reply could not be posted: {error}",
                       lease_expires_at=db_now(settings.HIL_LEASE_S))
    node = workflow_spec.node(spec, node_id)
    target = node.get("on_failure", workflow_spec.HANDOVER)
    if step is None:
        now = timezone.now()
        step = Step(tenant_id=run.tenant_id, run_id=run.id, node_id=node_id, agent=node.get("agent", ""),
                    attempt=run.attempt, status=Step.Status.FAILED, error=error, started_at=now, finished_at=now,
                    idempotency_key=f"{run.id}:{node_id}:{run.attempt}")
    tries = f" after {step.attempt} attempts" if step.attempt > 1 else ""
    data = data or {"node": node_id, "attempt": run.attempt, "error": error}
    return _commit(run, lease, rows=(*made.rows, step), events=[*made.events, ("step.failed", {
        **data, "final": True, "next": target})],
                   current_node=target, attempt=1, claims=0, reason=f"node '{node_id}' failed{tries}: {error}",
                   lease_expires_at=db_now(settings.HIL_LEASE_S))


# --- waiting for people ------------------------------------------------------------------


def _approval_wait(run: Run, lease: str, spec: dict, node: dict) -> Run:
    """An approval node: ask for the decision and wait for it, holding no worker."""
    config = node.get("config", {})
    try:
        payload = evaluate(config["payload"], run.state) if "payload" in config else {}
        request = {"title": config.get("title", node["id"]), "payload": payload if isinstance(payload, dict) else
                   {"value": payload}, "schema": config.get("schema"), "timeout_s": config.get("timeout_s"),
                   "on_expiry": config.get("on_expiry", "reject"), "approver_role": config.get("approver_role"),
                   "quorum": config.get("quorum")}
        _output_check(request["payload"])
        return _wait(run, lease, node["id"], "", request)
    except (LeaseLost, *TRANSIENT):
        raise
    except Exception as e:
        return _node_failed(run, lease, spec, node["id"], error=f"the approval request failed: {type(e).__name__}: {e}")


def _wait(run: Run, lease: str, node_id: str, call_key: str, request: dict, made: _Commit = _Commit()) -> Run:
    """Ask a human and wait, holding no worker. For a call inside a node (`call_key`), the node runs
    again from the start once it is decided, and replays the calls before this one from the ledger."""
    with transaction.atomic():
        approval = humans.desk.approval_open(run=run, node_id=node_id, call_key=call_key, request=request)
        return _commit(run, lease, rows=made.rows, events=[*made.events, ("run.waiting", {
            "node": node_id, "approval": str(approval.id), **({"call": call_key} if call_key else {})})],
                       status=Run.Status.WAITING, lease_owner="", lease_expires_at=None, claims=0)


# --- the end of a run --------------------------------------------------------------------


def _sink_reach(run: Run, lease: str, *, last_step: _Commit | None = None, reply=None) -> Run:
    """End the run in its sink, in one statement with its last step when given. FINISH posts the reply
    (`reply`, or the last one a step wrote) if the AI still owns the conversation, and keeps it as a
    suggestion for the human otherwise; HANDOVER opens a ticket. A sink that fails takes the failure path."""
    last_step = last_step or _Commit()
    ending = copy.copy(run)  # the run as its last step leaves it: what the sink decides on
    ending.state, ending.reason = last_step.fields.get("state", run.state), last_step.fields.get("reason", run.reason)
    sink = last_step.fields.get("current_node", run.current_node)
    try:
        with transaction.atomic():
            owner = _conversation_lock(run.conversation_id)  # first: the order every change of it takes
            if sink == workflow_spec.HANDOVER:
                end = _handover(ending, owner)
            else:
                end = _finish(ending, owner, reply if isinstance(reply, str) else _reply_of(run))
            return _run_end(run, lease, last_step + end + _revenue(run, ending.state))
    except (LeaseLost, *TRANSIENT):
        raise
    except Exception as e:
        log.exception("run %s: sink %s failed", run.id, sink)
        if last_step.rows:  # the step itself was fine: keep it, then take the failure path
            run = _commit(run, lease, rows=last_step.rows, events=last_step.events, **last_step.fields)
        return _node_failed(run, lease, {}, sink, error=f"{type(e).__name__}: {e}")


def _conversation_lock(conversation_id) -> str:
    """Lock the conversation (the order of its turns and who owns it are decided under this lock) and
    return who owns it. Read other rows in later statements: a statement that waited for this lock
    sees the locked row as it is now, but every other table as it was when the statement began."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status FROM {Conversation._meta.db_table} WHERE id = %s FOR NO KEY UPDATE",
                       [conversation_id])
        return cursor.fetchone()[0]


def _finish(run: Run, owner: str, reply: str | None) -> _Commit:
    data, rows, reason = {"sink": workflow_spec.FINISH}, (), ""
    if reply is not None and owner == Conversation.Status.AI:  # the customer reads what the tokens stand for
        rows = (Message(tenant_id=run.tenant_id, conversation_id=run.conversation_id, role=Message.Role.AI,
                        text=pii_refill(tenant_id=run.tenant_id, run_id=run.id, text=reply), run_id=run.id),)
        data["message"] = {"id": str(rows[0].id), "text": reply}
    elif reply is not None:  # a human took the conversation over while the run was working
        data["suggestion"] = reply
        reason = "a human took the conversation over; the reply is kept as a suggestion for them"
    return _Commit({"status": Run.Status.DONE, "sink": workflow_spec.FINISH, "reason": reason}, rows,
                   [("run.finished", data)])


def _revenue(run: Run, state: dict) -> _Commit:
    """The revenue the run recorded where its spec's `kpis: {revenue: ...}` says, if that is a number."""
    expression = version_get(run.workflow_version_id).spec.get("kpis", {}).get("revenue")
    value = evaluate(expression, state) if expression else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return _Commit()
    try:
        revenue = Decimal(str(value)).quantize(Decimal("0.000001"))
    except ArithmeticError:  # not a number, or too many digits
        return _Commit()
    return _Commit({"revenue": revenue}) if revenue.is_finite() and abs(revenue) < 10**10 else _Commit()


def _handover(run: Run, owner: str) -> _Commit:
    ticket = humans.desk.handover_open(run=run, reason=run.reason)
    if owner == Conversation.Status.AI:
        Conversation.objects.filter(pk=run.conversation_id).update(status=Conversation.Status.AWAITING_HUMAN)
    return _Commit({"status": Run.Status.DONE, "sink": workflow_spec.HANDOVER}, events=[
        ("handover.opened", {"ticket": str(ticket.id), "reason": run.reason}),
        ("run.finished", {"sink": workflow_spec.HANDOVER, "reason": run.reason, "ticket": str(ticket.id)})])


def _run_end(run: Run, lease: str, end: _Commit) -> Run:
    """End the run (done or failed) and let the conversation's next turn go. Call with the conversation locked."""
    end += _Commit({"finished_at": db_now(), "lease_owner": "", "lease_expires_at": None})
    with transaction.atomic(savepoint=False):
        run = _commit(run, lease, rows=end.rows, events=end.events, **end.fields)
        next_turns_release(conversation_id=run.conversation_id, handed_over=run.sink == workflow_spec.HANDOVER)
        return run


def next_turns_release(*, conversation_id, handed_over: bool = False) -> None:
    """The conversation's active run ended: queue its next held turn, or, if a human now has the
    conversation, cancel the held turns (their messages wait for the human). Call with it locked."""
    with connection.cursor() as cursor:  # raw: most turns end with none held, and this is every turn's end
        cursor.execute(f"SELECT id FROM {Run._meta.db_table} WHERE conversation_id = %s AND status = %s"
                       " ORDER BY created_at, id", [conversation_id, Run.Status.HELD])
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return
    if handed_over:
        for run in Run.objects.filter(id__in=ids):
            run_commit(run, where=("status = %s", [Run.Status.HELD]), events=[
                ("run.cancelled", {"reason": "the conversation was handed over to a human"})], fields={
                "status": Run.Status.CANCELLED, "finished_at": db_now(),
                "reason": "the conversation was handed over to a human before this turn ran"})
    else:
        run_enqueue(run_commit(Run.objects.get(id=ids[0]), where=("status = %s", [Run.Status.HELD]),
                               events=[("run.queued", {"after_turn": True})], fields=queued_fields()))


def _reply_of(run: Run) -> str | None:
    """The reply of the last step that wrote one."""
    for output in Step.objects.filter(run=run, status=Step.Status.SUCCEEDED).order_by("-id").values_list("output", flat=True):
        if isinstance(output, dict) and isinstance(output.get("reply"), str):
            return output["reply"]
    return None


# --- the watch over a step --------------------------------------------------------------


class _Watch(threading.Thread):
    """Watches the step this process runs, waking every `period` seconds (nothing to do per step but set
    `held`). While a step runs longer than that, it extends the run's lease, so that a worker that dies
    stops extending it and its run is taken over soon. In a worker process it also kills the process
    once the step overstays its deadline by HIL_STEP_GRACE_S: the pool starts a new one, and the run is
    taken over (and given up on after HIL_MAX_CLAIMS tries)."""

    kills = False  # set in Celery's worker processes (hil_project/celery.py); never in a web or test process

    def __init__(self):
        super().__init__(name="hil-step-watch", daemon=True)
        self.pid, self.held = os.getpid(), None
        self.period = min(settings.HIL_LEASE_S / 3, settings.HIL_STEP_GRACE_S / 2)

    @contextmanager
    def watching(self, run_id, lease: str, timeout_s: float):
        started = time.monotonic()
        self.held = (run_id, lease, started, started + timeout_s + settings.HIL_STEP_GRACE_S)
        try:
            yield
        finally:
            self.held = None

    def run(self):
        while True:
            time.sleep(self.period)
            if (held := self.held) is None:
                continue
            run_id, lease, started, kill_at = held
            now = time.monotonic()
            if self.kills and now >= kill_at:
                log.error("run %s: the step overstayed its deadline and grace; stopping this worker process", run_id)
                os.kill(os.getpid(), signal.SIGKILL)
            if now - started < self.period:
                continue  # the step's start renewed the lease
            try:  # a lost lease is noticed by the step's own fenced commit
                Run.objects.filter(id=run_id, status=Run.Status.RUNNING, lease_owner=lease).update(
                    lease_expires_at=Now() + timedelta(seconds=settings.HIL_LEASE_S))
            except DatabaseError as e:
                log.warning("lease of run %s not extended: %s", run_id, e)
            finally:  # this thread's own connection: not held open between the rare long steps
                connection.close()


_watch: _Watch | None = None


def steps_stopped_when_overstaying() -> None:
    """Make this process kill itself when a step overstays its deadline and grace: for Celery's worker
    processes (prefork), whose pool replaces them."""
    _Watch.kills = True


def _watcher() -> _Watch:
    """This process's watch thread, started on first use (in a worker child, after the fork)."""
    global _watch
    if _watch is None or _watch.pid != os.getpid():
        _watch = _Watch()
        _watch.start()
    return _watch


# --- the sweeper -------------------------------------------------------------------------


def runs_sweep(*, limit: int = 500) -> int:
    """Send again the tasks of queued runs that no worker took and of running runs whose worker died
    (lease expired), each only after a backoff from its last send, to the queue its node needs."""
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET resends = resends + 1,"
            "  resend_at = clock_timestamp() + make_interval(secs => LEAST(%s * 2 ^ resends, %s))"
            f" WHERE id IN (SELECT id FROM {table} WHERE status = %s AND resend_at <= clock_timestamp()"
            "   OR status = %s AND lease_expires_at < clock_timestamp()"
            "      AND (resend_at IS NULL OR resend_at <= clock_timestamp())"
            "   LIMIT %s FOR NO KEY UPDATE SKIP LOCKED)"
            " RETURNING id, workflow_version_id, current_node",
            [settings.HIL_RESEND_AFTER_S, settings.HIL_RESEND_MAX_S, Run.Status.QUEUED, Run.Status.RUNNING, limit])
        due = cursor.fetchall()
    for run_id, version_id, node_id in due:
        task_send(run_id, version_get(version_id).spec, node_id)
    return len(due)
