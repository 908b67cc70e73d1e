from datetime import timedelta

import jsonschema
from django.db import transaction
from django.utils import timezone

from workflows import spec as workflow_spec
from workflows.events import events_append
from workflows.models import Conversation, Message
from workflows.services import ServiceError

from .models import ApprovalRequest, AuditEntry, HandoverTicket

DECISIONS = {"approve": ApprovalRequest.Status.APPROVED, "reject": ApprovalRequest.Status.REJECTED,
             "edit": ApprovalRequest.Status.EDITED, "expire": ApprovalRequest.Status.EXPIRED}


def audit_record(*, tenant_id: int, actor, action: str, obj, old=None, new=None) -> AuditEntry:
    return AuditEntry.objects.create(tenant_id=tenant_id, actor=actor, action=action,
                                     object_type=obj._meta.label, object_id=str(obj.pk), old=old, new=new)


def approval_request(*, run, node: dict) -> ApprovalRequest:
    """The approval an approval node waits on; the same one again if the node is re-entered."""
    config = node.get("config", {})
    payload = workflow_spec.evaluate(config["payload"], run.state) if "payload" in config else {}
    expires_at = timezone.now() + timedelta(seconds=config["timeout_s"]) if config.get("timeout_s") else None
    approval, created = ApprovalRequest.objects.get_or_create(
        run=run, node_id=node["id"],
        defaults={"tenant_id": run.tenant_id, "title": config.get("title", node["id"]),
                  "payload": payload if isinstance(payload, dict) else {"value": payload},
                  "payload_schema": config.get("schema"), "expires_at": expires_at},
    )
    if created:
        events_append(run, ("approval.requested", {"approval": str(approval.id), "node": node["id"],
                                                   "title": approval.title, "payload": approval.payload}))
    return approval


@transaction.atomic
def approval_decide(*, approval: ApprovalRequest, decision: str, actor=None, payload: dict | None = None,
                    comment: str = "") -> ApprovalRequest:
    """Decide once: a second decision, concurrent or late, is refused with 409."""
    from workflows.engine import run_resume

    approval = ApprovalRequest.objects.select_for_update(of=("self",)).select_related("run").get(pk=approval.pk)
    if approval.status != ApprovalRequest.Status.PENDING:
        raise ServiceError(f"this approval was already decided ({approval.status})", status=409)
    if decision == "edit":
        if payload is None:
            raise ServiceError("an 'edit' decision needs the edited payload")
        if approval.payload_schema:
            try:
                jsonschema.validate(payload, approval.payload_schema)
            except jsonschema.ValidationError as e:
                raise ServiceError(f"edited payload: {e.message}") from None
    elif payload is not None:
        raise ServiceError("a payload can only be sent with an 'edit' decision")
    decided_payload = payload if decision == "edit" else approval.payload
    approval.status, approval.decided_payload, approval.comment = DECISIONS[decision], decided_payload, comment
    approval.decided_by, approval.decided_at = actor, timezone.now()
    approval.save()
    run, by = approval.run, actor.get_username() if actor else None
    events_append(run, ("approval.decided", {"approval": str(approval.id), "node": approval.node_id,
                                             "decision": decision, "payload": decided_payload, "comment": comment,
                                             "by": by}))
    if actor is not None:
        audit_record(tenant_id=approval.tenant_id, actor=actor, action=f"approval.{decision}", obj=approval,
                     old={"status": "pending", "payload": approval.payload},
                     new={"status": approval.status, "payload": decided_payload, "comment": comment})
    output = {"decision": decision, "approved": decision in ("approve", "edit"), "payload": decided_payload,
              "comment": comment, "by": by}
    run_resume(run=run, node_id=approval.node_id, output=output)
    return approval


def approvals_expire(*, limit: int = 500) -> int:
    """Decide 'expire' on pending approvals past their deadline; the run follows its edges on."""
    due = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING, expires_at__lte=timezone.now())
    expired = 0
    for approval in due[:limit]:
        try:
            approval_decide(approval=approval, decision="expire")
            expired += 1
        except ServiceError:  # a human decided it first
            pass
    return expired


def handover_open(*, run, reason: str) -> HandoverTicket:
    """Open a ticket with the case file a human needs; the conversation waits for a human."""
    ticket = HandoverTicket.objects.filter(conversation_id=run.conversation_id).exclude(
        status=HandoverTicket.Status.CLOSED).first()
    if ticket is None:
        ticket = HandoverTicket.objects.create(tenant_id=run.tenant_id, conversation_id=run.conversation_id,
                                               run=run, reason=reason, case_file=_case_file(run, reason))
    Conversation.objects.filter(pk=run.conversation_id).update(status=Conversation.Status.AWAITING_HUMAN)
    events_append(run, ("handover.opened", {"ticket": str(ticket.id), "reason": reason}))
    return ticket


def _case_file(run, reason: str) -> dict:
    facts = {node: output for node, output in run.state.items() if node != "input"}
    return {
        "goal": run.state.get("input", {}).get("text", ""),
        "facts": facts,
        "tool_calls": list(run.tool_calls.values("tool", "args", "result", "idempotency_key")),
        "promises": [output["reply"] for output in facts.values() if isinstance(output, dict) and "reply" in output],
        "reason": reason,
    }


def _ticket_locked(ticket: HandoverTicket) -> HandoverTicket:
    return HandoverTicket.objects.select_for_update(of=("self",)).select_related("run", "assignee").get(pk=ticket.pk)


def _ticket_event(ticket: HandoverTicket, type_: str, data: dict) -> None:
    if ticket.run is not None:
        events_append(ticket.run, (type_, {"ticket": str(ticket.id), **data}))


@transaction.atomic
def ticket_claim(*, ticket: HandoverTicket, actor) -> HandoverTicket:
    ticket = _ticket_locked(ticket)
    if ticket.status != HandoverTicket.Status.OPEN:
        holder = ticket.assignee.get_username() if ticket.assignee else "nobody"
        raise ServiceError(f"this ticket is {ticket.status} (by {holder})", status=409)
    ticket.status, ticket.assignee, ticket.claimed_at = HandoverTicket.Status.CLAIMED, actor, timezone.now()
    ticket.save(update_fields=["status", "assignee", "claimed_at"])
    Conversation.objects.filter(pk=ticket.conversation_id).update(status=Conversation.Status.HUMAN)
    audit_record(tenant_id=ticket.tenant_id, actor=actor, action="handover.claim", obj=ticket,
                 old={"status": "open"}, new={"status": "claimed", "assignee": actor.get_username()})
    _ticket_event(ticket, "handover.claimed", {"by": actor.get_username()})
    return ticket


@transaction.atomic
def ticket_reply(*, ticket: HandoverTicket, actor, text: str):
    ticket = _ticket_locked(ticket)
    _ticket_held_by(ticket, actor)
    message = Message.objects.create(tenant_id=ticket.tenant_id, conversation_id=ticket.conversation_id,
                                     role=Message.Role.HUMAN, text=text, author=actor)
    _ticket_event(ticket, "handover.replied", {"by": actor.get_username(), "message": str(message.id)})
    return message


@transaction.atomic
def ticket_return_to_ai(*, ticket: HandoverTicket, actor) -> HandoverTicket:
    ticket = _ticket_locked(ticket)
    _ticket_held_by(ticket, actor)
    ticket.status, ticket.closed_at = HandoverTicket.Status.CLOSED, timezone.now()
    ticket.save(update_fields=["status", "closed_at"])
    Conversation.objects.filter(pk=ticket.conversation_id).update(status=Conversation.Status.AI)
    audit_record(tenant_id=ticket.tenant_id, actor=actor, action="handover.return_to_ai", obj=ticket,
                 old={"status": "claimed"}, new={"status": "closed"})
    _ticket_event(ticket, "handover.returned", {"by": actor.get_username()})
    return ticket


def _ticket_held_by(ticket: HandoverTicket, actor) -> None:
    if ticket.status != HandoverTicket.Status.CLAIMED:
        raise ServiceError(f"this ticket is {ticket.status}; claim it first", status=409)
    if ticket.assignee_id != actor.pk:
        raise ServiceError(f"this ticket is claimed by {ticket.assignee.get_username()}", status=409)
