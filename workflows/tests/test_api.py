"""The conversations, messages, runs and events API, as an integration uses it."""

from datetime import datetime

import pytest

from approvals.models import HandoverTicket
from workflows import services
from workflows.models import Conversation, Message, Run
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db



@pytest.fixture
def conversation(tenant, api, publish):
    publish(tenant)
    response = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json")
    return Conversation.objects.get(pk=response.json()["id"])


def post_message(api, conversation, text="hi", turn_id="t1"):
    return api.post(f"/api/v1/conversations/{conversation.id}/messages/", {"text": text, "turn_id": turn_id},
                    format="json")


def test_start_a_conversation(tenant, api, publish):
    publish(tenant)
    response = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "ai" and body["workflow"] == "wf"
    assert Conversation.objects.get(pk=body["id"]).tenant == tenant
    assert api.get(f"/api/v1/conversations/{body['id']}/").json() == body


@pytest.mark.parametrize("body,message", [
    ({"workflow": "nope"}, "no workflow 'nope' in this tenant"),
    ({"workflow": 42}, "no workflow '42' in this tenant"),
    ({"workflow": "draft"}, "workflow 'draft' has no published version"),
])
def test_a_conversation_needs_a_live_workflow(tenant, api, publish, body, message):
    publish(tenant)
    services.workflow_create(tenant=tenant, slug="draft")
    response = api.post("/api/v1/conversations/", body, format="json")
    assert response.status_code == 400
    assert response.json() == {"detail": message}
    assert not Conversation.objects.exists()


def test_another_tenant_s_workflow_cannot_be_used(tenant, other_tenant, api, publish):
    publish(other_tenant, slug="theirs")
    response = api.post("/api/v1/conversations/", {"workflow": "theirs"}, format="json")
    assert response.status_code == 400 and not Conversation.objects.exists()


@pytest.mark.parametrize("body,field", [
    ({}, "workflow"),
    ({"workflow": ""}, "workflow"),
    ({"workflow": "not a slug!"}, "workflow"),
    ({"workflow": ["wf"]}, "workflow"),
    ([{"workflow": "wf"}], "non_field_errors"),
])
def test_a_malformed_conversation_body_is_400(tenant, api, publish, body, field):
    publish(tenant)
    response = api.post("/api/v1/conversations/", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Conversation.objects.exists()


def test_posting_a_message_starts_a_run(api, conversation):
    response = post_message(api, conversation)
    assert response.status_code == 202
    body = response.json()
    message = Message.objects.get(pk=body["message"]["id"])
    assert (message.role, message.text, message.turn_id) == ("user", "hi", "t1")
    assert body["message"]["conversation"] == str(conversation.id)
    assert body["run"]["id"] == body["message"]["run"] == str(message.run_id)
    assert body["run"]["status"] == "queued" and body["run"]["current_node"] == "a"


def test_a_retried_turn_returns_the_first_result_and_starts_nothing(api, conversation):
    first = post_message(api, conversation)
    again = post_message(api, conversation)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert Message.objects.count() == 1 and Run.objects.count() == 1


def test_a_reused_turn_id_with_other_text_is_409_and_changes_nothing(api, conversation):
    first = post_message(api, conversation)
    response = post_message(api, conversation, text="something else")
    assert response.status_code == 409
    assert response.json() == {"detail": "turn_id 't1' was already used for a different message"}
    assert list(Message.objects.values_list("text", flat=True)) == ["hi"] and Run.objects.count() == 1
    assert post_message(api, conversation).json() == first.json()


def test_the_same_turn_id_in_another_conversation_is_a_new_turn(api, conversation):
    other = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"]
    post_message(api, conversation)
    response = api.post(f"/api/v1/conversations/{other}/messages/", {"text": "hi", "turn_id": "t1"}, format="json")
    assert response.status_code == 202 and Run.objects.count() == 2


def test_the_history_has_the_ai_reply_once_the_run_is_done(api, conversation, drive):
    run_id = post_message(api, conversation).json()["run"]["id"]
    drive(Run.objects.get(pk=run_id))
    history = api.get(f"/api/v1/conversations/{conversation.id}/messages/").json()
    assert [(m["role"], m["text"]) for m in history["results"]] == [("user", "hi"), ("ai", "x is 1")]
    assert history["results"][1]["run"] == run_id


def test_a_run_shows_its_status_sink_steps_and_cost(api, conversation, drive):
    run_id = post_message(api, conversation).json()["run"]["id"]
    drive(Run.objects.get(pk=run_id))
    response = api.get(f"/api/v1/runs/{run_id}/")
    assert response.status_code == 200
    run = response.json()
    assert (run["status"], run["sink"], run["workflow"], run["version"]) == ("done", "FINISH", "wf", 1)
    assert run["cost"] == "0.000000" and run["last_seq"] == 5
    assert [(s["node_id"], s["status"]) for s in run["steps"]] == [("a", "succeeded"), ("b", "succeeded")]
    assert run["steps"][0]["output"] == {"x": 1} and run["steps"][1]["output"]["reply"] == "x is 1"
    assert run["steps"][0]["idempotency_key"] == f"{run_id}:a:1"


def test_events_follow_the_v1_envelope_contract(api, conversation, drive):
    run_id = post_message(api, conversation).json()["run"]["id"]
    drive(Run.objects.get(pk=run_id))
    events = api.get(f"/api/v1/runs/{run_id}/events/").json()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == ["run.queued", "run.started", "step.succeeded", "step.succeeded",
                                          "run.finished"]
    for event in events:
        assert set(event) == {"v", "seq", "type", "run", "ts", "trace_id", "data"}
        assert event["v"] == 1 and event["run"] == run_id and isinstance(event["data"], dict)
        assert datetime.fromisoformat(event["ts"]).tzinfo is not None
    assert events[0]["data"] == {"workflow": "wf", "version": 1, "message": events[0]["data"]["message"]}
    assert events[-1]["data"]["sink"] == "FINISH" and events[-1]["data"]["message"]["text"] == "x is 1"


@pytest.mark.parametrize("after,seqs", [(0, [1, 2, 3, 4, 5]), (3, [4, 5]), (5, []), (99, [])])
def test_events_after_a_seq_are_only_the_later_ones(api, conversation, drive, after, seqs):
    run_id = post_message(api, conversation).json()["run"]["id"]
    drive(Run.objects.get(pk=run_id))
    response = api.get(f"/api/v1/runs/{run_id}/events/?after={after}")
    assert response.status_code == 200 and [e["seq"] for e in response.json()] == seqs


@pytest.mark.parametrize("after", ["-1", "abc", "1.5"])
def test_a_bad_after_is_400_naming_it(api, conversation, after):
    run_id = post_message(api, conversation).json()["run"]["id"]
    response = api.get(f"/api/v1/runs/{run_id}/events/", {"after": after})
    assert response.status_code == 400 and "after" in response.json()


MALFORMED = {
    "missing text": ({"turn_id": "t1"}, "text"),
    "blank text": ({"text": "   ", "turn_id": "t1"}, "text"),
    "empty text": ({"text": "", "turn_id": "t1"}, "text"),
    "text a list": ({"text": ["hi"], "turn_id": "t1"}, "text"),
    "text an object": ({"text": {"a": 1}, "turn_id": "t1"}, "text"),
    "text a boolean": ({"text": True, "turn_id": "t1"}, "text"),
    "text null": ({"text": None, "turn_id": "t1"}, "text"),
    "text a number": ({"text": 5, "turn_id": "t1"}, "text"),
    "text with a NUL": ({"text": "a\x00b", "turn_id": "t1"}, "text"),
    "text too long": ({"text": "x" * 20_001, "turn_id": "t1"}, "text"),
    "missing turn_id": ({"text": "hi"}, "turn_id"),
    "blank turn_id": ({"text": "hi", "turn_id": ""}, "turn_id"),
    "turn_id too long": ({"text": "hi", "turn_id": "t" * 101}, "turn_id"),
    "turn_id a number": ({"text": "hi", "turn_id": 7}, "turn_id"),
    "a JSON array": ([{"text": "hi", "turn_id": "t1"}], "non_field_errors"),
    "a JSON string": ("hi", "non_field_errors"),
}


@pytest.mark.parametrize("body,field", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_message_is_400_naming_the_field_and_changes_nothing(api, conversation, body, field):
    response = api.post(f"/api/v1/conversations/{conversation.id}/messages/", body, format="json")
    assert response.status_code == 400
    errors = response.json()  # field errors, or the parser's detail naming where it is
    assert field in errors or errors.get("detail", "").startswith(f"{field}:"), errors
    assert not Message.objects.exists() and not Run.objects.exists()


def test_a_body_that_is_not_json_is_400(api, conversation):
    response = api.post(f"/api/v1/conversations/{conversation.id}/messages/", '{"text": "hi", ',
                        content_type="application/json")
    assert response.status_code == 400 and response.json()["detail"].startswith("JSON parse error")
    assert not Message.objects.exists()


@pytest.mark.parametrize("content_type,body", [
    ("text/plain", "hi"),
    ("application/x-www-form-urlencoded", "text=hi&turn_id=t1"),
    ("multipart/form-data; boundary=x", "--x--"),
])
def test_another_content_type_is_415(api, conversation, content_type, body):
    response = api.post(f"/api/v1/conversations/{conversation.id}/messages/", body, content_type=content_type)
    assert response.status_code == 415
    assert "Unsupported media type" in response.json()["detail"]
    assert not Message.objects.exists()


def test_an_unknown_conversation_is_404(api):
    response = api.post("/api/v1/conversations/00000000-0000-0000-0000-000000000000/messages/",
                        {"text": "hi", "turn_id": "t1"}, format="json")
    assert response.status_code == 404 and not Message.objects.exists()


@pytest.mark.parametrize("claimed", [False, True], ids=["handover open", "handover claimed"])
def test_while_a_human_owns_the_conversation_a_message_starts_no_run(tenant, api, member, publish, drive, claimed):
    from approvals.services import ticket_claim

    publish(tenant, HANDS)
    conversation_id = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"]
    drive(Run.objects.get(pk=post_message(api, Conversation(pk=conversation_id)).json()["run"]["id"]))
    if claimed:
        ticket_claim(ticket=HandoverTicket.objects.get(), actor=member(tenant, role="agent")[0])
    response = post_message(api, Conversation(pk=conversation_id), text="hello?", turn_id="t2")
    assert response.status_code == 202
    assert response.json()["run"] is None and response.json()["message"]["run"] is None
    assert Message.objects.get(turn_id="t2").text == "hello?"
    assert Run.objects.count() == 1
    assert api.get(f"/api/v1/conversations/{conversation_id}/").json()["status"] == ("human" if claimed else
                                                                                        "awaiting_human")


def test_the_conversation_list_is_newest_first_and_paginated(tenant, api, publish):
    publish(tenant)
    ids = [api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"] for _ in range(3)]
    page = api.get("/api/v1/conversations/?limit=2").json()
    assert page["count"] == 3 and [c["id"] for c in page["results"]] == ids[::-1][:2]
    assert page["next"].endswith("limit=2&offset=2")



@pytest.mark.parametrize("query", [{"limit": 2**63}, {"limit": 10**30}, {"offset": 2**63},
                                   {"limit": 1, "offset": 2**63}])
@pytest.mark.parametrize("url", ["/api/v1/conversations/", "/api/v1/conversations/{id}/messages/"])
def test_a_huge_page_limit_or_offset_is_not_a_server_error(api, conversation, url, query):
    post_message(api, conversation)
    response = api.get(url.format(id=conversation.id), query)
    assert response.status_code == 200 and response.json()["count"] == 1
