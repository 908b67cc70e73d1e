"""Handovers: a human agent claims the conversation, replies, and returns it to the AI."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import AuditEntry
from approvals.models import CannedReply, HandoverTicket
from approvals.services import desk_after, desk_append, tickets_release_expired, tickets_renew
from workflows.models import Conversation, Message, Run
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db



@pytest.fixture
def ticket(tenant, converse, drive):
    _, run = converse(tenant, HANDS)
    drive(run)
    return HandoverTicket.objects.get(run=run)


@pytest.fixture
def alice(tenant, member, client_for):
    return client_for(member(tenant, role="agent", username="alice")[1])


@pytest.fixture
def bob(tenant, member, client_for):
    return client_for(member(tenant, role="agent", username="bob")[1])


def act(client, ticket, action, body=None):
    return client.post(f"/api/v1/handovers/{ticket.id}/{action}/", body, format="json")


def status_of(conversation_id) -> str:
    return Conversation.objects.get(pk=conversation_id).status


def test_the_open_list_shows_the_ticket_with_its_case_file(api, ticket):
    response = api.get("/api/v1/handovers/?status=open")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert (row["id"], row["status"], row["assignee"]) == (str(ticket.id), "open", None)
    assert row["reason"] == "node 'a' routed the conversation to a human"
    assert row["case_file"]["goal"] == "hi" and row["case_file"]["facts"] == {"a": {"x": 1}}
    assert api.get("/api/v1/handovers/?status=claimed").json()["count"] == 0


def test_an_unknown_status_filter_is_400(api, ticket):
    response = api.get("/api/v1/handovers/?status=lost")
    assert response.status_code == 400 and "status" in response.json()


def test_claim_gives_the_conversation_to_the_human(alice, ticket):
    response = act(alice, ticket, "claim")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["assignee"]) == ("claimed", "alice") and body["claimed_at"]
    assert status_of(ticket.conversation_id) == "human"
    audit = AuditEntry.objects.get(action="handover.claim")
    assert audit.actor.username == "alice" and audit.new == {"status": "claimed", "assignee": "alice"}


def test_a_second_claim_is_409_and_keeps_the_first_assignee(alice, bob, ticket):
    act(alice, ticket, "claim")
    response = act(bob, ticket, "claim")
    assert response.status_code == 409
    assert response.json() == {"detail": "this ticket is claimed (by alice)"}
    ticket.refresh_from_db()
    assert ticket.assignee.username == "alice"


def test_the_claimer_s_reply_joins_the_conversation_history(alice, ticket):
    act(alice, ticket, "claim")
    response = act(alice, ticket, "reply", {"text": "Alice here, how can I help?"})
    assert response.status_code == 201
    assert (response.json()["role"], response.json()["author"]) == ("human", "alice")
    history = alice.get(f"/api/v1/conversations/{ticket.conversation_id}/messages/").json()["results"]
    assert [(m["role"], m["text"]) for m in history] == [("user", "hi"), ("human", "Alice here, how can I help?")]


@pytest.mark.parametrize("claim_first", [True, False], ids=["claimed by another", "not claimed"])
def test_a_reply_needs_the_claim(alice, bob, ticket, claim_first):
    if claim_first:
        act(alice, ticket, "claim")
    response = act(bob, ticket, "reply", {"text": "me too"})
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "this ticket is claimed by alice" if claim_first else "this ticket is open; claim it first")
    assert not Message.objects.filter(role="human").exists()


@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": ["x"]}, {"text": 5}, {"text": "a\x00"}])
def test_a_bad_reply_is_400(alice, ticket, body):
    act(alice, ticket, "claim")
    response = act(alice, ticket, "reply", body)
    assert response.status_code == 400 and "text" in str(response.json())
    assert not Message.objects.filter(role="human").exists()


def test_return_to_ai_closes_the_ticket_and_the_ai_answers_again(alice, ticket, drive):
    act(alice, ticket, "claim")
    response = act(alice, ticket, "return-to-ai")
    assert response.status_code == 200
    assert response.json()["status"] == "closed" and response.json()["closed_at"]
    assert status_of(ticket.conversation_id) == "ai"
    posted = alice.post(f"/api/v1/conversations/{ticket.conversation_id}/messages/", {"text": "back", "turn_id": "t2"},
                        format="json")
    assert posted.status_code == 202 and posted.json()["run"] is not None
    assert drive(Run.objects.get(pk=posted.json()["run"]["id"])).sink == "HANDOVER"
    assert HandoverTicket.objects.filter(conversation_id=ticket.conversation_id).count() == 2


@pytest.mark.parametrize("who", ["nobody", "bob"])
def test_only_the_claimer_returns_it_to_the_ai(alice, bob, ticket, who):
    if who == "bob":
        act(alice, ticket, "claim")
    assert act(bob, ticket, "return-to-ai").status_code == 409
    ticket.refresh_from_db()
    assert ticket.status == ("claimed" if who == "bob" else "open")


def test_a_closed_ticket_cannot_be_claimed_again(alice, bob, ticket):
    act(alice, ticket, "claim")
    act(alice, ticket, "return-to-ai")
    assert act(bob, ticket, "claim").status_code == 409
    assert status_of(ticket.conversation_id) == "ai"


def test_each_human_action_is_an_event_on_the_run(alice, ticket):
    act(alice, ticket, "claim")
    message_id = act(alice, ticket, "reply", {"text": "hello"}).json()["id"]
    act(alice, ticket, "return-to-ai")
    events = alice.get(f"/api/v1/runs/{ticket.run_id}/events/?after=0").json()
    human = [(e["type"], e["data"]) for e in events if e["type"] in ("handover.claimed", "handover.replied",
                                                                     "handover.returned")]
    assert human == [
        ("handover.claimed", {"ticket": str(ticket.id), "by": "alice"}),
        ("handover.replied", {"ticket": str(ticket.id), "by": "alice", "message": message_id}),
        ("handover.returned", {"ticket": str(ticket.id), "by": "alice"}),
    ]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_a_viewer_cannot_claim(tenant, member, client_for, ticket):
    viewer = client_for(member(tenant, role="viewer")[1])
    assert act(viewer, ticket, "claim").status_code == 403
    ticket.refresh_from_db()
    assert ticket.status == "open"


# --- the console's desk events, leased claims, notes ------------------------------------------------


def desk(tenant) -> list[tuple[int, str, str | None]]:
    return [(e["seq"], e["type"], e["data"].get("assignee")) for e in desk_after(tenant_id=tenant.id, after=0)]


def test_each_change_of_a_ticket_is_a_desk_event_numbered_in_order(tenant, alice, ticket):
    act(alice, ticket, "claim")
    act(alice, ticket, "return-to-ai")
    assert desk(tenant) == [(1, "ticket.opened", None), (2, "ticket.claimed", "alice"), (3, "ticket.closed", "alice")]
    assert desk_after(tenant_id=tenant.id, after=2)[0]["data"]["status"] == "closed"


def test_another_tenant_s_desk_is_its_own(tenant, other_tenant, ticket, converse, drive):
    _, run = converse(other_tenant, HANDS)
    drive(run)
    assert [seq for seq, *_ in desk(tenant)] == [1] and [seq for seq, *_ in desk(other_tenant)] == [1]


@pytest.mark.django_db(transaction=True)
def test_concurrent_desk_events_get_every_number_once(tenant):
    def append(i):
        with transaction.atomic():
            desk_append(tenant_id=tenant.id, type_="test", data={"i": i})
        connection.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append, range(40)))
    assert sorted(e["seq"] for e in desk_after(tenant_id=tenant.id, after=0)) == list(range(1, 41))


def test_a_console_claim_holds_while_renewed_and_goes_back_to_the_queue_after(alice, ticket):
    body = act(alice, ticket, "claim", {"lease": True}).json()
    assert body["lease_expires_at"] is not None
    assert tickets_release_expired() == 0  # not expired yet

    HandoverTicket.objects.filter(pk=ticket.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert tickets_renew(tenant_id=ticket.tenant_id, user_ids={ticket_holder(ticket)}) == 1  # the console is open
    assert tickets_release_expired() == 0

    HandoverTicket.objects.filter(pk=ticket.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert tickets_release_expired() == 1  # the console closed: nobody renewed it
    ticket.refresh_from_db()
    assert (ticket.status, ticket.assignee, ticket.lease_expires_at) == ("open", None, None)
    assert status_of(ticket.conversation_id) == "awaiting_human"
    assert desk(ticket.tenant)[-1] == (3, "ticket.released", None)
    assert act(alice, ticket, "reply", {"text": "still here?"}).status_code == 409


def ticket_holder(ticket) -> int:
    return HandoverTicket.objects.get(pk=ticket.pk).assignee_id


def test_an_api_claim_has_no_lease_and_is_never_released(alice, ticket):
    assert act(alice, ticket, "claim").json()["lease_expires_at"] is None
    assert tickets_release_expired() == 0


def test_notes_are_private_to_the_team_of_the_tenant(tenant, other_tenant, member, client_for, alice, ticket):
    assert act(alice, ticket, "notes", {"text": "asked for a manager twice"}).status_code == 201
    notes = alice.get(f"/api/v1/handovers/{ticket.id}/notes/").json()["results"]
    assert [(n["author"], n["text"]) for n in notes] == [("alice", "asked for a manager twice")]
    assert not Message.objects.filter(text__contains="manager").exists()
    viewer = client_for(member(tenant, role="viewer")[1])
    assert act(viewer, ticket, "notes", {"text": "x"}).status_code == 403
    stranger = client_for(member(other_tenant)[1])
    assert stranger.get(f"/api/v1/handovers/{ticket.id}/notes/").status_code == 404
    assert act(alice, ticket, "notes", {"text": 5}).status_code == 400


def test_canned_replies_are_the_tenant_s_own(tenant, other_tenant, alice):
    CannedReply.objects.create(tenant=tenant, title="Hello", text="Hi there")
    CannedReply.objects.create(tenant=other_tenant, title="Secret", text="globex only")
    assert [c["title"] for c in alice.get("/api/v1/canned-replies/").json()["results"]] == ["Hello"]
