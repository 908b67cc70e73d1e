"""API authentication and tenant isolation, as an integration sees them over HTTP."""

import hashlib

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiToken, Membership, Role
from accounts.services import api_token_create, api_token_revoke, membership_set
from approvals.models import ApprovalRequest, HandoverTicket
from workflows.models import Message
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db

GATE = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {amount: 20}}}
  - {id: gate, kind: approval, config: {title: "Big refund", payload: "{amount: a.amount}"}}
edges:
  - {from: a, to: gate}
  - {from: gate, to: FINISH}
"""



@pytest.fixture
def world(converse, drive):
    """world(tenant) -> a conversation, its run waiting on an approval, and a handover ticket in `tenant`."""

    def make(tenant):
        conversation, run = converse(tenant, GATE, slug="gate")
        run = drive(run)
        handed_over, hand_run = converse(tenant, HANDS, slug="hands")
        drive(hand_run)
        return {
            "conversation": conversation,
            "run": run,
            "approval": ApprovalRequest.objects.get(run=run),
            "ticket": HandoverTicket.objects.get(conversation=handed_over),
        }

    return make


def ids_of(made: dict) -> set[str]:
    """The ids of what `world` made: both conversations, the approval, the ticket."""
    return {str(made["conversation"].pk), str(made["ticket"].conversation_id), str(made["approval"].pk),
            str(made["ticket"].pk)}


def test_no_header_is_401_with_a_message():
    response = APIClient().get("/api/v1/conversations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Authentication credentials were not provided."
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize("header", ["Token {raw}", "Basic {raw}", "{raw}", "Bearer", "Bearer   "])
def test_a_wrong_scheme_is_401_saying_how_to_authenticate(tenant, member, header):
    raw = member(tenant)[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(raw=raw))
    response = client.get("/api/v1/conversations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Use 'Authorization: Bearer <token>'."


def test_an_unknown_token_is_401(tenant, member, client_for):
    raw = member(tenant)[1]
    response = client_for(raw + "x").get("/api/v1/conversations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked token."


def test_a_revoked_token_stops_working(tenant, member, client_for):
    user, raw = member(tenant)
    assert client_for(raw).get("/api/v1/conversations/").status_code == 200
    api_token_revoke(token=ApiToken.objects.get(user=user))
    response = client_for(raw).get("/api/v1/conversations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked token."


def test_a_deactivated_user_s_token_stops_working(tenant, member, client_for):
    user, raw = member(tenant)
    user.is_active = False
    user.save()
    assert client_for(raw).get("/api/v1/conversations/").status_code == 401


def test_a_removed_membership_stops_the_token(tenant, member, client_for):
    user, raw = member(tenant)
    assert client_for(raw).get("/api/v1/conversations/").status_code == 200
    Membership.objects.filter(tenant=tenant, user=user).delete()
    assert client_for(raw).get("/api/v1/conversations/").status_code == 401


def test_only_the_sha256_of_a_token_is_stored(tenant, member):
    user, _ = member(tenant)
    token, raw = api_token_create(tenant=tenant, user=user, name="ci")
    token.refresh_from_db()
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    stored = list(ApiToken.objects.values_list())
    assert raw not in repr(stored)
    assert token.prefix == raw[:8] and len(raw) > 40


def test_a_token_is_only_made_for_a_member(tenant, other_tenant, member):
    user, _ = member(tenant)
    with pytest.raises(ValueError, match="not a member of tenant globex"):
        api_token_create(tenant=other_tenant, user=user)


def test_a_viewer_can_read_but_not_write(tenant, member, client_for, publish):
    publish(tenant)
    viewer = client_for(member(tenant, role=Role.VIEWER)[1])
    assert viewer.get("/api/v1/conversations/").status_code == 200
    response = viewer.post("/api/v1/conversations/", {"workflow": "wf"}, format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == "Your role in this tenant does not allow this."
    assert not tenant.workflows.get().conversations.exists()


def test_a_demotion_to_viewer_applies_to_the_next_request(tenant, member, client_for, publish):
    publish(tenant)
    user, raw = member(tenant, role=Role.AGENT)
    client = client_for(raw)
    assert client.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").status_code == 201
    membership_set(tenant=tenant, user=user, role=Role.VIEWER)
    assert client.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").status_code == 403


@pytest.mark.parametrize("role", [Role.AGENT, Role.OPERATOR, Role.ADMIN])
def test_every_other_role_can_write(tenant, member, client_for, publish, role):
    publish(tenant)
    client = client_for(member(tenant, role=role)[1])
    assert client.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").status_code == 201


FOREIGN = [
    ("get", "/api/v1/conversations/{conversation.id}/", None),
    ("get", "/api/v1/conversations/{conversation.id}/messages/", None),
    ("post", "/api/v1/conversations/{conversation.id}/messages/", {"text": "hello", "turn_id": "x1"}),
    ("get", "/api/v1/runs/{run.id}/", None),
    ("get", "/api/v1/runs/{run.id}/events/", None),
    ("get", "/api/v1/runs/{run.id}/events/stream/", None),
    ("get", "/api/v1/approvals/{approval.id}/", None),
    ("post", "/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"}),
    ("get", "/api/v1/handovers/{ticket.id}/", None),
    ("post", "/api/v1/handovers/{ticket.id}/claim/", None),
    ("post", "/api/v1/handovers/{ticket.id}/reply/", {"text": "hi"}),
    ("post", "/api/v1/handovers/{ticket.id}/return-to-ai/", None),
]


@pytest.mark.parametrize("method,url,body", FOREIGN)
def test_another_tenant_s_resources_answer_404_and_stay_unchanged(other_tenant, api, world, method, url, body):
    theirs = world(other_tenant)
    messages, events = Message.objects.count(), theirs["run"].events.count()
    response = getattr(api, method)(url.format(**theirs), body, format="json")
    assert response.status_code == 404
    assert Message.objects.count() == messages and theirs["run"].events.count() == events
    assert ApprovalRequest.objects.get(pk=theirs["approval"].pk).status == "pending"
    assert HandoverTicket.objects.get(pk=theirs["ticket"].pk).status == "open"


@pytest.mark.parametrize("url", [u for m, u, _ in FOREIGN if m == "get" and "stream" not in u])
def test_the_owner_reads_the_same_resources(tenant, api, world, url):
    assert api.get(url.format(**world(tenant))).status_code == 200


@pytest.mark.parametrize("url", ["/api/v1/conversations/", "/api/v1/approvals/", "/api/v1/handovers/"])
def test_lists_never_show_another_tenant_s_rows(tenant, other_tenant, api, world, url):
    ours, theirs = world(tenant), world(other_tenant)
    response = api.get(url)
    assert response.status_code == 200
    ids = {row["id"] for row in response.json()["results"]}
    assert ids and ids <= ids_of(ours) and not ids & ids_of(theirs)

