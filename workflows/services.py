from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Tenant
from accounts.services import audit_record
from agents.models import STANDARD_PROFILES, ModelProfile
from core import tracing
from core.errors import Conflict, ServiceError
from core.rollout import Stage

from . import engine, humans
from . import spec as workflow_spec
from .events import db_now, events_append, message_rung, run_commit
from .models import Conversation, Message, Run, Workflow, WorkflowVersion


@transaction.atomic
def workflow_create(*, tenant: Tenant, slug: str, name: str = "") -> Workflow:
    return Workflow.objects.create(tenant=tenant, slug=slug, name=name or slug)


@transaction.atomic
def workflow_version_create(*, workflow: Workflow, spec_yaml: str, actor=None) -> WorkflowVersion:
    """A new numbered version; invalid specs are kept as drafts with their errors listed."""
    try:
        spec = workflow_spec.load(spec_yaml)
        errors = _unknown_profiles(workflow.tenant_id, spec)
    except workflow_spec.SpecError as e:
        spec, errors = None, e.errors
    Workflow.objects.select_for_update(no_key=True).get(pk=workflow.pk)  # number versions one at a time
    last = workflow.versions.order_by("-number").values_list("number", flat=True).first() or 0
    return WorkflowVersion.objects.create(
        tenant_id=workflow.tenant_id, workflow=workflow, number=last + 1, spec_yaml=spec_yaml,
        spec=spec, errors=errors, created_by=actor,
    )


def _unknown_profiles(tenant_id: int, spec: dict) -> list[str]:
    """The nodes' model profiles (`config.profile`) that are neither standard nor the tenant's."""
    named = {node["id"]: node["config"]["profile"] for node in spec["nodes"]
             if isinstance(node.get("config", {}).get("profile"), str)}
    known = {*STANDARD_PROFILES, *ModelProfile.objects.filter(tenant_id=tenant_id, name__in=named.values())
             .values_list("name", flat=True)}
    return [f"node '{node}': no model profile '{name}' (the standard ones are {', '.join(STANDARD_PROFILES)}; "
            "add it in Model profiles first)" for node, name in named.items() if name not in known]


@transaction.atomic
def workflow_stage_set(*, workflow: Workflow, stage: str, actor) -> Workflow:
    """Move the workflow to another rollout stage; tool policies that match on the stage apply from now on."""
    if stage not in Stage.values:
        raise ServiceError(f"stage must be one of {', '.join(Stage.values)}")
    old = Workflow.objects.select_for_update().values_list("stage", flat=True).get(pk=workflow.pk)
    Workflow.objects.filter(pk=workflow.pk).update(stage=stage)
    audit_record(tenant_id=workflow.tenant_id, actor=actor, action="workflow.stage", obj=workflow,
                 old={"stage": old}, new={"stage": stage})
    workflow.stage = stage
    return workflow


@transaction.atomic
def workflow_version_publish(*, version: WorkflowVersion, actor=None) -> WorkflowVersion:
    """Make `version` live. Runs in flight keep the version they started on."""
    errors = version.errors or _unknown_profiles(version.tenant_id, version.spec)  # one may be gone since
    if errors:
        raise ServiceError(f"{version} has errors and cannot be published: " + "; ".join(errors))
    workflow = Workflow.objects.select_for_update(no_key=True).get(pk=version.workflow_id)
    old = workflow.live_version_id
    workflow.live_version = version
    workflow.save(update_fields=["live_version"])
    if version.published_at is None:
        version.published_at = timezone.now()
        version.save(update_fields=["published_at"])
    audit_record(tenant_id=workflow.tenant_id, actor=actor, action="workflow.publish", obj=workflow,
                 old={"live_version": old}, new={"live_version": version.pk})
    return version


@transaction.atomic
def conversation_start(*, tenant: Tenant, workflow_slug: str) -> Conversation:
    workflow = Workflow.objects.filter(tenant=tenant, slug=workflow_slug).first()
    if workflow is None:
        raise ServiceError(f"no workflow '{workflow_slug}' in this tenant")
    if workflow.live_version_id is None:
        raise ServiceError(f"workflow '{workflow_slug}' has no published version")
    return Conversation.objects.create(tenant=tenant, workflow=workflow)


def _turn_active(conversation_id) -> bool:
    """Whether a turn of the conversation is active. Raw, as Django takes longer to compile an Exists than
    Postgres takes to run it; a statement of its own, after the lock (see engine._conversation_lock)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {Run._meta.db_table} WHERE conversation_id = %s"
                       " AND status = ANY(%s))", [conversation_id, list(Run.ACTIVE)])
        return cursor.fetchone()[0]


def message_post(*, conversation: Conversation, text: str, turn_id: str) -> tuple[Message, bool]:
    """Store a user's message and, if the AI owns the conversation, start a run on it: at once, or
    held behind the conversation's active run, so that its turns run one at a time, in order.

    (conversation, turn_id) is unique: a retry returns the first message and starts nothing."""
    try:
        with transaction.atomic():
            conversation = conversation_lock(conversation_id=conversation.pk)
            first = Message.objects.filter(conversation=conversation, turn_id=turn_id).select_related("run").first()
            if first is not None:
                return _same_turn(first, text), False
            message = Message(tenant_id=conversation.tenant_id, conversation=conversation, role=Message.Role.USER,
                              text=text, turn_id=turn_id)
            if conversation.status == Conversation.Status.AI:
                message.run = run_start(conversation=conversation, message=message, held=_turn_active(conversation.pk))
            message.save(force_insert=True)
            message_rung(message)
            return message, True
    except IntegrityError:  # a concurrent post of the same turn won the race
        first = Message.objects.select_related("run").get(conversation=conversation, turn_id=turn_id)
        return _same_turn(first, text), False


def conversation_lock(*, conversation_id) -> Conversation:
    """The conversation, locked until the transaction ends: turns, sinks and humans taking it over
    take this lock, so they see each other's changes in order."""
    return (Conversation.objects.select_for_update(of=("self",), no_key=True).select_related("workflow")
            .get(pk=conversation_id))


def _same_turn(first: Message, text: str) -> Message:
    if first.text != text:
        raise Conflict(f"turn_id '{first.turn_id}' was already used for a different message")
    return first


def run_start(*, conversation: Conversation, message: Message, held: bool) -> Run:
    """Create a run of the conversation's live workflow version: queued, or held while another turn of
    the conversation is active. Call with the conversation locked."""
    version = engine.version_get(conversation.workflow.live_version_id)
    run = Run.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation, workflow_version=version,
        current_node=version.entry(), status=Run.Status.HELD if held else Run.Status.QUEUED,
        state={"input": {"text": message.text, "turn_id": message.turn_id, "conversation": str(conversation.id)}},
        trace_parent=tracing.traceparent(),  # the request's: the turn's trace goes on in the workers
    )
    data = {"workflow": conversation.workflow.slug, "version": version.number, "message": str(message.id)}
    if held:
        events_append(run, ("run.held", data))
        return run
    run = run_commit(run, where=("TRUE", []), fields=engine.queued_fields(), events=[("run.queued", data)])
    engine.run_enqueue(run)
    return run


def run_lock(*, run_id) -> None:
    """Lock the run until the transaction ends. Locks are taken in one order, so that two changes never
    wait on each other: a conversation, then its runs, then what belongs to them (approvals). And they
    are NO KEY locks, as no key changes: Django's foreign keys are checked at COMMIT with KEY SHARE
    locks on the rows they point to, which a waiting FOR UPDATE would block into a deadlock."""
    list(Run.objects.select_for_update(no_key=True).filter(pk=run_id).values_list("pk"))


def run_resume(*, run: Run, node_id: str, output: dict | None = None, handover: str = "") -> bool:
    """A human decided what the run waits on at `node_id`: record `output` as that approval node's
    output and route on; with no output, run the node again (a call inside it waited, and is now
    decided); with `handover`, hand the conversation over for that reason. Call inside the decision's
    transaction. False when the run was not waiting there."""
    run = Run.objects.select_for_update(no_key=True).get(id=run.id)
    if run.status != Run.Status.WAITING or run.current_node != node_id:
        return False
    state, next_id = run.state, node_id
    if handover:
        next_id = workflow_spec.HANDOVER
    elif output is not None:
        state = {**run.state, node_id: output}
        next_id = workflow_spec.next_node(engine.version_get(run.workflow_version_id).spec, node_id, state)
    run = run_commit(run, where=("TRUE", []), events=[("run.resumed", {"node": node_id, "next": next_id})],
                     fields={"state": state, "current_node": next_id, "reason": handover, **engine.queued_fields(),
                             **({"attempt": 1} if next_id != node_id else {})})
    engine.run_enqueue(run)
    return True


@transaction.atomic
def run_cancel(*, run: Run, actor, reason: str = "") -> Run:
    """Stop a run that has not ended. A worker in the middle of a step finishes the step but can commit
    nothing more; the run's pending approvals are withdrawn; the conversation's next turn goes on."""
    conversation_lock(conversation_id=run.conversation_id)
    old = Run.objects.select_for_update(no_key=True).get(pk=run.pk)
    if old.status not in Run.ACTIVE:
        raise Conflict(f"this run is {old.status}; only a queued, held, running or waiting run can be cancelled")
    by = actor.get_username() if actor else None
    reason = reason or f"cancelled by {by or 'the system'}"
    run = run_commit(old, where=("TRUE", []), events=[("run.cancelled", {"by": by, "reason": reason})], fields={
        "status": Run.Status.CANCELLED, "reason": reason, "finished_at": db_now(), "lease_owner": "",
        "lease_expires_at": None, "wake_at": None, "resend_at": None})
    humans.desk.approvals_withdraw(run=run)
    if old.status != Run.Status.HELD:
        engine.next_turns_release(conversation_id=run.conversation_id)
    audit_record(tenant_id=run.tenant_id, actor=actor, action="run.cancel", obj=run,
                 old={"status": old.status, "node": old.current_node}, new={"status": run.status, "reason": reason})
    return run


@transaction.atomic
def run_retry(*, run: Run, actor) -> Run:
    """Run a failed or cancelled run again from the node where it stopped, with fresh attempts. Side
    effects it already made are replayed from the ledger, not made again."""
    conversation = conversation_lock(conversation_id=run.conversation_id)
    old = Run.objects.select_for_update(no_key=True).get(pk=run.pk)
    if old.status not in (Run.Status.FAILED, Run.Status.CANCELLED):
        raise Conflict(f"this run is {old.status}; only a failed or cancelled run can be retried")
    if conversation.status != Conversation.Status.AI:
        raise Conflict("a human has this conversation; return it to the AI before retrying its runs")
    held = _turn_active(conversation.pk)
    by = actor.get_username() if actor else None
    fields = {"status": Run.Status.HELD} if held else engine.queued_fields()
    run = run_commit(old, where=("TRUE", []), events=[("run.retried", {"by": by, "node": old.current_node})], fields={
        **fields, "attempt": 1, "claims": 0, "sink": "", "reason": "", "finished_at": None})
    if not held:
        engine.run_enqueue(run)
    audit_record(tenant_id=run.tenant_id, actor=actor, action="run.retry", obj=run,
                 old={"status": old.status, "reason": old.reason}, new={"status": run.status})
    return run


def conversation_to_human(*, conversation_id) -> None:
    """A human has the conversation now: the AI posts nothing more to it, and turns held behind its
    active run are cancelled (their messages wait for the human). Call inside the human's transaction."""
    conversation_lock(conversation_id=conversation_id)
    Conversation.objects.filter(pk=conversation_id).update(status=Conversation.Status.HUMAN)
    engine.next_turns_release(conversation_id=conversation_id, handed_over=True)


def conversation_await_human(*, conversation_id) -> None:
    """Handed over and waiting for a human again: the one who had it let it go."""
    conversation_lock(conversation_id=conversation_id)
    Conversation.objects.filter(pk=conversation_id).update(status=Conversation.Status.AWAITING_HUMAN)


def conversation_to_ai(*, conversation_id) -> None:
    """The AI answers the conversation's next messages again."""
    conversation_lock(conversation_id=conversation_id)
    Conversation.objects.filter(pk=conversation_id).update(status=Conversation.Status.AI)


def message_reply_post(*, conversation_id, author, text: str) -> Message:
    """A human's reply in the conversation."""
    conversation = conversation_lock(conversation_id=conversation_id)
    message = Message.objects.create(tenant_id=conversation.tenant_id, conversation=conversation,
                                     role=Message.Role.HUMAN, text=text, author=author)
    message_rung(message)
    return message
