"""The engine: walks a run's DAG on a Celery worker, one committed step at a time.

A worker claims a run with a conditional update and holds a lease on it; every step's
output is committed, fenced by that lease, before the next step starts. A run that waits
on a human holds no worker. The sweeper re-enqueues runs whose worker died (lease expired)
and runs whose queue message was lost; a duplicate delivery finds nothing to claim.
"""

import json
import logging
import signal
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache, partial

from django.conf import settings
from kombu.exceptions import OperationalError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents import registry

from . import spec as workflow_spec
from .events import run_commit
from .models import Message, Run, Step, WorkflowVersion

log = logging.getLogger(__name__)


class StepTimeout(BaseException):
    """Raised into a hung agent; a BaseException so that the agent's `except Exception` lets it through."""


class StepFailure(Exception):
    """A failure that retrying will not fix."""


class LeaseLost(Exception):
    """Another worker took the run over; this one must stop touching it."""


def run_enqueue(run: Run, countdown_s: float = 0) -> None:
    """Queue the run after commit. If the broker is down the run stays queued in the database and
    the sweeper queues it again: what was committed is not lost, and the caller sees no error."""
    from .tasks import run_execute_task

    def send(run_id=str(run.id)):
        try:
            run_execute_task.apply_async((run_id,), countdown=countdown_s or None, retry=False)
        except OperationalError as e:
            log.warning("run %s not queued (%s); the sweeper will queue it", run_id, e)

    transaction.on_commit(send)


@lru_cache(maxsize=256)
def version_get(version_id: int) -> WorkflowVersion:
    """A workflow version; they are immutable, so each process reads each one once."""
    return WorkflowVersion.objects.only("number", "spec").get(pk=version_id)


def run_claim(run_id) -> tuple[Run, str] | None:
    """QUEUED (and due) or RUNNING with an expired lease → RUNNING under a new lease."""
    now = timezone.now()
    seen = Run.objects.filter(id=run_id).values("tenant_id", "workflow_version_id", "current_node", "attempt",
                                                 "started_at").first()
    if seen is None:
        return None
    lease = uuid.uuid4().hex
    due = ("(status = %s AND (wake_at IS NULL OR wake_at <= %s) OR status = %s AND lease_expires_at < %s)",
           [Run.Status.QUEUED, now, Run.Status.RUNNING, now])
    started = {"node": seen["current_node"], "attempt": seen["attempt"], "resumed": seen["started_at"] is not None}
    run = run_commit(
        Run(id=run_id, tenant_id=seen["tenant_id"]), where=due,
        fields={"status": Run.Status.RUNNING, "lease_owner": lease, "wake_at": None, "started_at": seen["started_at"] or now,
                "lease_expires_at": now + _lease_span(version_get(seen["workflow_version_id"]).spec, seen["current_node"])},
        events=[("run.started", started)],
    )
    return (run, lease) if run is not None else None


def run_execute(*, run_id) -> None:
    claim = run_claim(run_id)
    if claim is None:
        return
    run, lease = claim
    spec = version_get(run.workflow_version_id).spec
    try:
        while True:
            node_id = run.current_node
            if node_id in workflow_spec.SINKS:
                return _sink_reach(run, lease)
            node = workflow_spec.node(spec, node_id)
            if node.get("kind") == "approval":
                return _approval_wait(run, lease, node)
            run = _step_run(run, lease, spec, node)
            if run.status != Run.Status.RUNNING:
                return  # done, or a retry is scheduled
    except LeaseLost:
        log.warning("run %s: lease lost, another worker has it", run.id)


def _lease_span(spec: dict, node_id: str) -> timedelta:
    """How long a worker may hold a run about to enter `node_id`: its step timeout plus a margin."""
    timeout_ms = 0
    if node_id not in workflow_spec.SINKS:
        timeout_ms = workflow_spec.limits(workflow_spec.node(spec, node_id))["timeout_ms"]
    return timedelta(milliseconds=timeout_ms, seconds=settings.HIL_LEASE_MARGIN_S)


def _commit(run: Run, lease: str, *, events: list[tuple[str, dict]], rows: tuple = (), **fields) -> Run:
    """Commit fields, rows and events of a run this worker holds; LeaseLost if it no longer does."""
    updated = run_commit(run, lease=lease, fields=fields, events=events, rows=rows)
    if updated is None:
        raise LeaseLost
    return updated


def _step_run(run: Run, lease: str, spec: dict, node: dict) -> Run:
    """Run one attempt of an agent node and commit it; returns the run as committed."""
    node_id, limits = node["id"], workflow_spec.limits(node)
    key = f"{run.id}:{node_id}:{run.attempt}"
    ctx = registry.StepContext(
        tenant_id=run.tenant_id, run_id=str(run.id), node_id=node_id, attempt=run.attempt,
        idempotency_key=key, config=node.get("config", {}), state=run.state,
    )
    started = timezone.now()
    error, retryable = None, True
    try:
        with deadline(limits["timeout_ms"] / 1000):
            result = registry.get(node["agent"])(ctx)
        if not isinstance(result, registry.AgentResult):
            result = registry.AgentResult(result)
        json.dumps(result.output)  # outputs are stored as JSON: fail here, not at commit
        if limits["max_cost"] is not None and result.cost > Decimal(str(limits["max_cost"])):
            raise StepFailure(f"cost {result.cost} is over the node's budget of {limits['max_cost']}")
    except StepTimeout:
        error = f"timed out after {limits['timeout_ms']} ms"
    except StepFailure as e:
        error, retryable = str(e), False
    except Exception as e:  # an agent's failure is the run's to handle, not the worker's
        log.info("run %s node %s attempt %s failed", run.id, node_id, run.attempt, exc_info=True)
        error = f"{type(e).__name__}: {e}"
    finished = timezone.now()
    step = Step(
        tenant_id=run.tenant_id, run_id=run.id, node_id=node_id, agent=node["agent"], attempt=run.attempt,
        idempotency_key=key, started_at=started, finished_at=finished,
    )
    duration_ms = round((finished - started).total_seconds() * 1000)
    if error is None:
        state = {**run.state, node_id: result.output}
        next_id = workflow_spec.next_node(spec, node_id, state)
        step.status, step.output, step.cost = Step.Status.SUCCEEDED, result.output, result.cost
        if next_id == workflow_spec.HANDOVER:
            run.reason = f"node '{node_id}' routed the conversation to a human"
        commit = partial(_commit, run, lease, rows=(step,), events=[("step.succeeded", {
            "node": node_id, "attempt": step.attempt, "output": result.output,
            "cost": str(result.cost), "usage": result.usage, "duration_ms": duration_ms,
        })], state=state, current_node=next_id, attempt=1, cost=run.cost + result.cost, reason=run.reason,
            lease_expires_at=timezone.now() + _lease_span(spec, next_id))
        if next_id not in workflow_spec.SINKS:
            return commit()
        with transaction.atomic():  # the last step and the sink commit together
            return _sink_reach(commit(), lease, reply=result.output.get("reply"))

    step.status, step.error = Step.Status.FAILED, error
    failed = {"node": node_id, "attempt": step.attempt, "error": error, "duration_ms": duration_ms}
    if retryable and run.attempt <= limits["max_retries"]:
        delay_s = limits["backoff"] * 2 ** (run.attempt - 1) / 1000
        run = _commit(run, lease, rows=(step,), events=[("step.failed", failed), ("step.retry_scheduled", {
            "node": node_id, "attempt": run.attempt + 1, "delay_ms": round(delay_s * 1000)})],
            status=Run.Status.QUEUED, attempt=run.attempt + 1, lease_owner="", lease_expires_at=None,
            wake_at=timezone.now() + timedelta(seconds=delay_s))
        run_enqueue(run, countdown_s=delay_s)
        return run
    target = node.get("on_failure", workflow_spec.HANDOVER)
    return _commit(run, lease, rows=(step,), events=[("step.failed", {**failed, "final": True, "next": target})],
                   current_node=target, attempt=1, lease_expires_at=timezone.now() + _lease_span(spec, target),
                   reason=f"node '{node_id}' failed after {step.attempt} attempt(s): {error}")


def _approval_wait(run: Run, lease: str, node: dict) -> None:
    from approvals.services import approval_request

    with transaction.atomic():
        approval = approval_request(run=run, node=node)
        _commit(run, lease, events=[("run.waiting", {"node": node["id"], "approval": str(approval.id)})],
                status=Run.Status.WAITING, lease_owner="", lease_expires_at=None)


def run_resume(*, run: Run, node_id: str, output: dict) -> bool:
    """Record a human's decision as the output of the waiting node and queue the run on.
    Call inside the decision's transaction. False when the run was not waiting there."""
    run = Run.objects.select_for_update().get(id=run.id)
    if run.status != Run.Status.WAITING or run.current_node != node_id:
        return False
    state = {**run.state, node_id: output}
    next_id = workflow_spec.next_node(version_get(run.workflow_version_id).spec, node_id, state)
    run = run_commit(run, where=("TRUE", []), events=[("run.resumed", {"node": node_id, "next": next_id})], fields={
        "state": state, "current_node": next_id, "status": Run.Status.QUEUED, "attempt": 1, "wake_at": timezone.now()})
    run_enqueue(run)
    return True


def _sink_reach(run: Run, lease: str, reply=None) -> Run:
    """End the run: FINISH posts the reply (`reply`, or the last one a step wrote); HANDOVER opens a ticket."""
    from approvals.services import handover_open

    sink, rows = run.current_node, ()
    done = {"status": Run.Status.DONE, "sink": sink, "finished_at": timezone.now(), "lease_owner": "",
            "lease_expires_at": None}
    if sink == workflow_spec.FINISH:
        data = {"sink": sink}
        reply = reply if isinstance(reply, str) else _reply_of(run)
        if reply is not None:
            rows = (Message(tenant_id=run.tenant_id, conversation_id=run.conversation_id, role=Message.Role.AI,
                            text=reply, run_id=run.id),)
            data["message"] = {"id": str(rows[0].id), "text": reply}
        return _commit(run, lease, rows=rows, events=[("run.finished", data)], **done)
    with transaction.atomic(savepoint=False):
        ticket = handover_open(run=run, reason=run.reason)
        return _commit(run, lease, events=[("run.finished", {"sink": sink, "reason": run.reason,
                                                              "ticket": str(ticket.id)})], **done)


def _reply_of(run: Run) -> str | None:
    """The reply of the last step that wrote one."""
    for output in Step.objects.filter(run=run, status=Step.Status.SUCCEEDED).order_by("-id").values_list("output", flat=True):
        if isinstance(output, dict) and isinstance(output.get("reply"), str):
            return output["reply"]
    return None


@contextmanager
def deadline(seconds: float):
    """Cut off the block after `seconds` with StepTimeout (SIGALRM: workers run tasks in their
    main thread). Elsewhere the block runs without a cut-off and is judged when it returns."""
    if threading.current_thread() is not threading.main_thread():
        started = timezone.now()
        yield
        if (timezone.now() - started).total_seconds() > seconds:
            raise StepTimeout
        return

    def expire(signum, frame):
        raise StepTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def runs_sweep(*, limit: int = 500) -> dict:
    """Re-enqueue runs whose worker died or whose message was lost; expire approvals."""
    from approvals.services import approvals_expire

    from .tasks import run_execute_task

    now = timezone.now()
    stale = now - timedelta(seconds=settings.HIL_LEASE_MARGIN_S)
    run_ids = list(
        Run.objects.filter(
            Q(status=Run.Status.RUNNING, lease_expires_at__lt=now) | Q(status=Run.Status.QUEUED, wake_at__lt=stale)
        ).values_list("id", flat=True)[:limit]
    )
    for run_id in run_ids:
        run_execute_task.delay(str(run_id))
    return {"requeued": len(run_ids), "expired": approvals_expire(limit=limit)}
