import json
from datetime import timedelta

import jsonschema
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Membership, Role, Tenant
from accounts.services import audit_record
from core.errors import Conflict, Forbidden, ServiceError
from tools.mediation import RANK, tool_call_decide
from workflows import services as conversations
from workflows.events import doorbell_ring, events_append

from .models import ApprovalRequest, ApprovalVote, DeskEvent, DeskSeq, HandoverTicket, TicketNote

DESK = "desk"  # the doorbell stream of a tenant's desk events (workflows.doorbells.listen(tenant_id, DESK))
DESK_RING_MAX = 8192  # a desk message up to this long rides on its doorbell (a longer one is read by each process)


def desk_append(*, tenant_id: int, type_: str, data: dict) -> DeskEvent:
    """Append a desk event in the caller's transaction, numbered after the tenant's last one; consoles
    hear of it after commit. The number's row stays locked until then, so that numbers commit in order."""
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {DeskSeq._meta.db_table} (tenant_id, last_seq) VALUES (%s, 1) ON CONFLICT "
                       f"(tenant_id) DO UPDATE SET last_seq = {DeskSeq._meta.db_table}.last_seq + 1 RETURNING last_seq",
                       [tenant_id])
        seq = cursor.fetchone()[0]
    event = DeskEvent.objects.create(tenant_id=tenant_id, seq=seq, type=type_, data=data)
    text = desk_message(event.envelope())
    carried = text if len(text) <= DESK_RING_MAX else ""
    transaction.on_commit(lambda: doorbell_ring(tenant_id, DESK, seq, carried))
    return event


def desk_message(envelope: dict) -> str:
    """A desk event as the console's socket sends it."""
    return json.dumps({"kind": "desk", **envelope})


def desk_after(*, tenant_id: int, after: int, limit: int = 1000) -> list[dict]:
    return [e.envelope() for e in DeskEvent.objects.filter(tenant_id=tenant_id, seq__gt=after).order_by("seq")[:limit]]


def desk_seq(*, tenant_id: int) -> int:
    return DeskSeq.objects.filter(tenant_id=tenant_id).values_list("last_seq", flat=True).first() or 0


def ticket_card(ticket: HandoverTicket) -> dict:
    """What the console's queue shows of a ticket (also the data of its desk events)."""
    return {"id": str(ticket.id), "conversation": str(ticket.conversation_id),
            "workflow": ticket.conversation.workflow.slug,
            "reason": ticket.reason, "status": ticket.status, "created_at": ticket.created_at.isoformat(),
            "assignee": ticket.assignee.get_username() if ticket.assignee_id else None}


def approval_card(approval: ApprovalRequest) -> dict:
    """What the console's inbox shows of an approval (also the data of its desk events)."""
    return {"id": str(approval.id), "run": str(approval.run_id), "node": approval.node_id, "title": approval.title,
            "payload": approval.payload, "schema": approval.payload_schema, "status": approval.status,
            "preview": approval.preview, "quorum": approval.quorum, "approver_role": approval.approver_role,
            "votes": list(approval.votes.values_list("user__username", flat=True)) if approval.quorum > 1 else [],
            "created_at": approval.created_at.isoformat(), "expires_at": approval.expires_at.isoformat()}


def _ticket_changed(ticket: HandoverTicket, type_: str) -> None:
    desk_append(tenant_id=ticket.tenant_id, type_=type_, data=ticket_card(ticket))


DECISIONS = {"approve": ApprovalRequest.Status.APPROVED, "reject": ApprovalRequest.Status.REJECTED,
             "edit": ApprovalRequest.Status.EDITED, "expire": ApprovalRequest.Status.EXPIRED}


def approval_open(*, run, node_id: str, call_key: str, request: dict) -> ApprovalRequest:
    """The approval a waiting run waits on; the same one again if the run asks again. It expires after
    the request's `timeout_s`, or the tenant's default, with the request's `on_expiry` outcome."""
    timeout_s = request.get("timeout_s") or Tenant.objects.values_list("approval_timeout_s", flat=True).get(
        pk=run.tenant_id)
    approval, created = ApprovalRequest.objects.get_or_create(
        run=run, node_id=node_id, call_key=call_key,
        defaults={"tenant_id": run.tenant_id, "title": request["title"][:200], "payload": request["payload"],
                  "payload_schema": request.get("schema"), "expires_at": timezone.now() + timedelta(seconds=timeout_s),
                  "on_expiry": request.get("on_expiry") or ApprovalRequest.OnExpiry.REJECT,
                  "quorum": request.get("quorum") or 1, "approver_role": request.get("approver_role") or "",
                  "policy": request.get("policy") or "", "args_hash": request.get("args_hash") or "",
                  "preview": request.get("preview")},
    )
    if created:
        events_append(run, ("approval.requested", {"approval": str(approval.id), "node": node_id, "call": call_key,
                                                   "title": approval.title, "payload": approval.payload,
                                                   "expires_at": approval.expires_at.isoformat()}))
        desk_append(tenant_id=approval.tenant_id, type_="approval.requested", data=approval_card(approval))
    return approval


@transaction.atomic
def approval_decide(*, approval: ApprovalRequest, decision: str, actor=None, payload: dict | None = None,
                    comment: str = "") -> ApprovalRequest:
    """Decide once: a second decision, concurrent or late, is refused with Conflict. The run goes on."""
    conversations.run_lock(run_id=approval.run_id)  # a run before its approvals, as cancelling it does
    approval = (ApprovalRequest.objects.select_for_update(of=("self",), no_key=True).select_related("run")
                .get(pk=approval.pk))
    if approval.status != ApprovalRequest.Status.PENDING:
        raise Conflict(f"this approval was already decided ({approval.status})")
    if actor is not None:
        _may_decide(approval, actor)
    if decision == "edit" and approval.quorum > 1:
        raise ServiceError(f"this approval needs {approval.quorum} approvers, who approve the same arguments: "
                           "approve or reject them as proposed")
    if decision == "approve" and approval.quorum > 1 and not _quorum_reached(approval, actor, comment):
        return approval
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
    desk_append(tenant_id=approval.tenant_id, type_="approval.decided",
                data={**approval_card(approval), "decision": decision, "by": by})
    if actor is not None:
        audit_record(tenant_id=approval.tenant_id, actor=actor, action=f"approval.{decision}", obj=approval,
                     old={"status": "pending", "payload": approval.payload},
                     new={"status": approval.status, "payload": decided_payload, "comment": comment})
    if approval.call_key:  # a call inside a node waited: the node runs again and finds the decision
        tool_call_decide(run=run, key=approval.call_key, approval=approval, decision={
            "decision": decision, "payload": payload, "by": by, "comment": comment})
    if decision == "expire" and approval.on_expiry == ApprovalRequest.OnExpiry.HANDOVER:
        conversations.run_resume(run=run, node_id=approval.node_id, handover=f"approval '{approval.title}' expired")
    elif approval.call_key:
        conversations.run_resume(run=run, node_id=approval.node_id)
    else:
        conversations.run_resume(run=run, node_id=approval.node_id, output={
            "decision": decision, "approved": decision in ("approve", "edit"), "payload": decided_payload,
            "comment": comment, "by": by})
    return approval


def _may_decide(approval: ApprovalRequest, actor) -> None:
    role = Membership.objects.filter(tenant_id=approval.tenant_id, user=actor).values_list("role", flat=True).first()
    if role in (None, Role.VIEWER) or approval.approver_role and RANK[role] < RANK[approval.approver_role]:
        raise Forbidden(f"this approval needs a decision by the role {approval.approver_role or 'agent'} or above")


def _quorum_reached(approval: ApprovalRequest, actor, comment: str) -> bool:
    """Count `actor`'s approval; True once `quorum` distinct people approved. Each person counts once."""
    if actor is None:
        raise ServiceError("an approval that needs several approvers is approved by people")
    _, counted = ApprovalVote.objects.get_or_create(approval=approval, user=actor,
                                                    defaults={"tenant_id": approval.tenant_id, "comment": comment})
    if not counted:
        raise Conflict(f"you already approved this; it needs {approval.quorum} different people")
    votes = approval.votes.count()
    by = actor.get_username()
    audit_record(tenant_id=approval.tenant_id, actor=actor, action="approval.vote", obj=approval,
                 new={"votes": votes, "quorum": approval.quorum, "comment": comment})
    if votes >= approval.quorum:
        return True
    events_append(approval.run, ("approval.voted", {"approval": str(approval.id), "node": approval.node_id,
                                                    "by": by, "votes": votes, "quorum": approval.quorum}))
    desk_append(tenant_id=approval.tenant_id, type_="approval.voted", data=approval_card(approval))
    return False


def approvals_expire(*, limit: int = 500) -> int:
    """Decide 'expire' on pending approvals past their deadline; each run takes its expiry outcome."""
    due = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING, expires_at__lte=timezone.now())
    expired = 0
    for approval in due[:limit]:
        try:
            approval_decide(approval=approval, decision="expire")
            expired += 1
        except Conflict:  # a human decided it first
            pass
    return expired


def approvals_withdraw(*, run) -> None:
    pending = list(ApprovalRequest.objects.select_for_update().filter(run=run, status=ApprovalRequest.Status.PENDING))
    for approval in pending:
        approval.status, approval.decided_at = ApprovalRequest.Status.WITHDRAWN, timezone.now()
        approval.save(update_fields=["status", "decided_at"])
        desk_append(tenant_id=approval.tenant_id, type_="approval.decided", data=approval_card(approval))


def handover_open(*, run, reason: str) -> HandoverTicket:
    """The conversation's live ticket, opened with the case file a human needs if there is none. Call with
    the conversation locked, as every change of its owner is: no one else can open one meanwhile."""
    ticket = _ticket_live(run.conversation_id)
    if ticket is None:
        ticket = HandoverTicket.objects.create(tenant_id=run.tenant_id, conversation_id=run.conversation_id, run=run,
                                               reason=reason, case_file=_case_file(run, reason))
        _ticket_changed(ticket, "ticket.opened")
    return ticket


def _ticket_live(conversation_id) -> HandoverTicket | None:
    return HandoverTicket.objects.filter(conversation_id=conversation_id).exclude(
        status=HandoverTicket.Status.CLOSED).first()


def _case_file(run, reason: str) -> dict:
    facts = {node: output for node, output in run.state.items() if node != "input"}
    return {
        "goal": run.state.get("input", {}).get("text", ""),
        "facts": facts,
        "tool_calls": list(run.tool_calls.values("tool", "args", "status", "result", "idempotency_key")),
        "promises": [output["reply"] for output in facts.values() if isinstance(output, dict) and "reply" in output],
        "reason": reason,
    }


def _ticket_locked(ticket: HandoverTicket) -> HandoverTicket:
    """The ticket, locked after its conversation (the order every change of a conversation takes)."""
    conversations.conversation_lock(conversation_id=ticket.conversation_id)
    return (HandoverTicket.objects.select_for_update(of=("self",), no_key=True)
            .select_related("run", "assignee", "conversation__workflow").get(pk=ticket.pk))


def _ticket_event(ticket: HandoverTicket, type_: str, data: dict) -> None:
    if ticket.run is not None:
        events_append(ticket.run, (type_, {"ticket": str(ticket.id), **data}))


@transaction.atomic
def ticket_claim(*, ticket: HandoverTicket, actor, lease: bool = False) -> HandoverTicket:
    """Claim an open ticket; the first of two at once wins, the other is told who. With `lease`, only for
    as long as a console renews it (tickets_renew): a closed tab gives it back to the queue."""
    ticket = _ticket_locked(ticket)
    if ticket.status != HandoverTicket.Status.OPEN:
        holder = ticket.assignee.get_username() if ticket.assignee else "nobody"
        raise Conflict(f"this ticket is {ticket.status} (by {holder})")
    ticket.status, ticket.assignee, ticket.claimed_at = HandoverTicket.Status.CLAIMED, actor, timezone.now()
    ticket.lease_expires_at = ticket.claimed_at + timedelta(seconds=settings.HIL_CLAIM_LEASE_S) if lease else None
    ticket.save(update_fields=["status", "assignee", "claimed_at", "lease_expires_at"])
    conversations.conversation_to_human(conversation_id=ticket.conversation_id)
    audit_record(tenant_id=ticket.tenant_id, actor=actor, action="handover.claim", obj=ticket,
                 old={"status": "open"}, new={"status": "claimed", "assignee": actor.get_username()})
    _ticket_event(ticket, "handover.claimed", {"by": actor.get_username()})
    _ticket_changed(ticket, "ticket.claimed")
    return ticket


def tickets_renew(*, tenant_id: int, user_ids: set[int]) -> int:
    """Renew the leases of the tickets that these members hold from consoles still open."""
    return HandoverTicket.objects.filter(
        tenant_id=tenant_id, assignee_id__in=user_ids, status=HandoverTicket.Status.CLAIMED,
        lease_expires_at__isnull=False,
    ).update(lease_expires_at=timezone.now() + timedelta(seconds=settings.HIL_CLAIM_LEASE_S))


def tickets_release_expired(*, limit: int = 500) -> int:
    """Give back to the queue the tickets whose console stopped renewing their lease (closed, crashed)."""
    released = 0
    for ticket in HandoverTicket.objects.filter(status=HandoverTicket.Status.CLAIMED,
                                                lease_expires_at__lt=timezone.now())[:limit]:
        released += _ticket_release(ticket)
    return released


@transaction.atomic
def _ticket_release(ticket: HandoverTicket) -> bool:
    ticket = _ticket_locked(ticket)
    if ticket.status != HandoverTicket.Status.CLAIMED or not ticket.lease_expires_at or (
            ticket.lease_expires_at >= timezone.now()):
        return False  # returned, or renewed, meanwhile
    holder = ticket.assignee.get_username()
    ticket.status, ticket.assignee, ticket.claimed_at, ticket.lease_expires_at = (
        HandoverTicket.Status.OPEN, None, None, None)
    ticket.save(update_fields=["status", "assignee", "claimed_at", "lease_expires_at"])
    conversations.conversation_await_human(conversation_id=ticket.conversation_id)
    _ticket_event(ticket, "handover.released", {"by": holder, "reason": "the claim's lease expired"})
    _ticket_changed(ticket, "ticket.released")
    return True


@transaction.atomic
def conversation_take_over(*, conversation, actor) -> HandoverTicket:
    """A human takes the conversation over, from the AI too, even in the middle of a turn: a run that
    finishes after this keeps its reply as a suggestion for them. Returns their claimed ticket."""
    conversations.conversation_lock(conversation_id=conversation.pk)
    ticket = _ticket_live(conversation.pk)
    if ticket is not None and ticket.assignee_id == actor.pk:
        return ticket
    if ticket is not None:
        return ticket_claim(ticket=ticket, actor=actor)
    run = conversation.runs.order_by("-created_at").first()
    reason = f"taken over by {actor.get_username()}"
    ticket = HandoverTicket.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation, run=run, reason=reason,
        case_file=_case_file(run, reason) if run else {"reason": reason}, status=HandoverTicket.Status.CLAIMED,
        assignee=actor, claimed_at=timezone.now())
    conversations.conversation_to_human(conversation_id=conversation.pk)
    audit_record(tenant_id=ticket.tenant_id, actor=actor, action="handover.take_over", obj=ticket,
                 old={"conversation": conversation.status}, new={"status": "claimed", "assignee": actor.get_username()})
    _ticket_event(ticket, "handover.claimed", {"by": actor.get_username(), "taken_over": True})
    _ticket_changed(ticket, "ticket.claimed")
    return ticket


@transaction.atomic
def ticket_reply(*, ticket: HandoverTicket, actor, text: str):
    ticket = _ticket_locked(ticket)
    _ticket_held_by(ticket, actor)
    message = conversations.message_reply_post(conversation_id=ticket.conversation_id, author=actor, text=text)
    _ticket_event(ticket, "handover.replied", {"by": actor.get_username(), "message": str(message.id)})
    return message


@transaction.atomic
def ticket_return_to_ai(*, ticket: HandoverTicket, actor) -> HandoverTicket:
    ticket = _ticket_locked(ticket)
    _ticket_held_by(ticket, actor)
    ticket.status, ticket.closed_at, ticket.lease_expires_at = HandoverTicket.Status.CLOSED, timezone.now(), None
    ticket.save(update_fields=["status", "closed_at", "lease_expires_at"])
    conversations.conversation_to_ai(conversation_id=ticket.conversation_id)
    audit_record(tenant_id=ticket.tenant_id, actor=actor, action="handover.return_to_ai", obj=ticket,
                 old={"status": "claimed"}, new={"status": "closed"})
    _ticket_event(ticket, "handover.returned", {"by": actor.get_username()})
    _ticket_changed(ticket, "ticket.closed")
    return ticket


@transaction.atomic
def ticket_note_add(*, ticket: HandoverTicket, actor, text: str) -> TicketNote:
    """A private note for the team; any member who may act on tickets may add one."""
    return TicketNote.objects.create(tenant_id=ticket.tenant_id, ticket=ticket, author=actor, text=text)


def _ticket_held_by(ticket: HandoverTicket, actor) -> None:
    if ticket.status != HandoverTicket.Status.CLAIMED:
        raise Conflict(f"this ticket is {ticket.status}; claim it first")
    if ticket.assignee_id != actor.pk:
        raise Conflict(f"this ticket is claimed by {ticket.assignee.get_username()}")
