from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Tenant

from . import spec as workflow_spec
from .engine import run_enqueue, version_get
from .events import events_append
from .models import Conversation, Message, Run, Workflow, WorkflowVersion


class ServiceError(Exception):
    """A request the current state refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@transaction.atomic
def workflow_create(*, tenant: Tenant, slug: str, name: str = "") -> Workflow:
    return Workflow.objects.create(tenant=tenant, slug=slug, name=name or slug)


@transaction.atomic
def workflow_version_create(*, workflow: Workflow, spec_yaml: str, actor=None) -> WorkflowVersion:
    """A new numbered version; invalid specs are kept as drafts with their errors listed."""
    try:
        spec, errors = workflow_spec.load(spec_yaml), []
    except workflow_spec.SpecError as e:
        spec, errors = None, e.errors
    Workflow.objects.select_for_update().get(pk=workflow.pk)  # number versions one at a time
    last = workflow.versions.order_by("-number").values_list("number", flat=True).first() or 0
    return WorkflowVersion.objects.create(
        tenant_id=workflow.tenant_id, workflow=workflow, number=last + 1, spec_yaml=spec_yaml,
        spec=spec, errors=errors, created_by=actor,
    )


@transaction.atomic
def workflow_version_publish(*, version: WorkflowVersion, actor=None) -> WorkflowVersion:
    """Make `version` live. Runs in flight keep the version they started on."""
    from approvals.services import audit_record

    if not version.is_valid():
        raise ServiceError(f"{version} has errors and cannot be published: " + "; ".join(version.errors))
    workflow = Workflow.objects.select_for_update().get(pk=version.workflow_id)
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


def message_post(*, conversation: Conversation, text: str, turn_id: str) -> tuple[Message, bool]:
    """Store a user's message and, if the AI owns the conversation, start a run on it.

    (conversation, turn_id) is unique: a retry returns the first message and starts nothing."""
    try:
        with transaction.atomic():
            conversation = (Conversation.objects.select_for_update(of=("self",)).select_related("workflow")
                            .get(pk=conversation.pk))
            first = Message.objects.filter(conversation=conversation, turn_id=turn_id).select_related("run").first()
            if first is not None:
                return _same_turn(first, text), False
            message = Message(tenant_id=conversation.tenant_id, conversation=conversation, role=Message.Role.USER,
                              text=text, turn_id=turn_id)
            if conversation.status == Conversation.Status.AI:
                message.run = run_start(conversation=conversation, message=message)
            message.save(force_insert=True)
            return message, True
    except IntegrityError:  # a concurrent post of the same turn won the race
        first = Message.objects.select_related("run").get(conversation=conversation, turn_id=turn_id)
        return _same_turn(first, text), False


def _same_turn(first: Message, text: str) -> Message:
    if first.text != text:
        raise ServiceError(f"turn_id '{first.turn_id}' was already used for a different message", status=409)
    return first


def run_start(*, conversation: Conversation, message: Message) -> Run:
    """Create a run of the conversation's live workflow version and enqueue it on commit."""
    version = version_get(conversation.workflow.live_version_id)
    run = Run.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation, workflow_version=version,
        current_node=version.entry(), wake_at=timezone.now(),
        state={"input": {"text": message.text, "turn_id": message.turn_id, "conversation": str(conversation.id)}},
    )
    events_append(run, ("run.queued", {"workflow": conversation.workflow.slug, "version": version.number,
                                       "message": str(message.id)}))
    run_enqueue(run)
    return run
