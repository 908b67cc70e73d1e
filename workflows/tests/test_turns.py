"""One turn at a time per conversation; the AI never answers over a human; operators cancel and retry runs."""

import pytest

from accounts.models import AuditEntry
from approvals.models import ApprovalRequest, HandoverTicket
from workflows import engine, services
from workflows.models import Conversation, Message, Run
from workflows.tests.specs import HANDS, LINEAR

pytestmark = pytest.mark.django_db

ECHO_TURN = """
entry: a
nodes:
  - {id: a, agent: responder, config: {template: "you said {{ input.text }}"}}
edges:
  - {from: a, to: FINISH}
"""
GATE = """
entry: gate
nodes:
  - {id: gate, kind: approval, config: {title: "Go?"}}
edges:
  - {from: gate, to: FINISH}
"""


def post(conversation, text, turn_id=None):
    return services.message_post(conversation=conversation, text=text, turn_id=turn_id or text)[0].run


def test_a_message_while_a_turn_is_active_is_held_and_answered_after_it_in_order(tenant, converse, drive):
    conversation, first = converse(tenant, ECHO_TURN, text="one")
    second, third = post(conversation, "two"), post(conversation, "three")
    assert [r.status for r in (first, second, third)] == ["queued", "held", "held"]
    assert second.events.get().type == "run.held"
    engine.run_execute(run_id=second.id)  # a stray delivery of a held run claims nothing
    assert Run.objects.get(id=second.id).status == "held"

    drive(first)
    assert Run.objects.get(id=second.id).status == "queued"  # released by the first turn's end
    assert Run.objects.get(id=third.id).status == "held"
    drive(second)
    drive(third)
    assert list(conversation.messages.filter(role="ai").order_by("created_at").values_list("text", flat=True)) == [
        "you said one", "you said two", "you said three"]


def test_a_turn_waits_behind_one_that_waits_for_a_human(tenant, converse, drive, api):
    conversation, first = converse(tenant, GATE)
    drive(first)
    second = post(conversation, "again")
    assert second.status == "held"
    approval = ApprovalRequest.objects.get(run=first)
    api.post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"}, format="json")
    drive(first)
    assert Run.objects.get(id=second.id).status == "queued"


def test_a_handover_cancels_the_turns_held_behind_it(tenant, converse, drive):
    conversation, first = converse(tenant, HANDS)
    second = post(conversation, "are you there?")
    drive(first)
    second.refresh_from_db()
    assert (second.status, second.reason) == ("cancelled", "the conversation was handed over to a human before this "
                                                            "turn ran")
    assert conversation.messages.filter(role="user").count() == 2  # the human sees both messages


def test_a_run_that_finishes_after_a_human_took_over_keeps_its_reply_as_a_suggestion(
        tenant, converse, drive, member, client_for):
    conversation, run = converse(tenant, ECHO_TURN, text="hello")
    alice = client_for(member(tenant, role="agent", username="alice")[1])
    response = alice.post(f"/api/v1/conversations/{conversation.id}/take-over/")
    assert response.status_code == 200 and (response.json()["status"], response.json()["assignee"]) == (
        "claimed", "alice")
    run = drive(run)
    assert (run.status, run.sink) == ("done", "FINISH")
    assert not Message.objects.filter(conversation=conversation, role="ai").exists()
    finished = run.events.get(type="run.finished").data
    assert finished == {"sink": "FINISH", "suggestion": "you said hello"}
    assert run.reason == "a human took the conversation over; the reply is kept as a suggestion for them"
    conversation.refresh_from_db()
    assert conversation.status == "human"


def test_a_handover_after_a_take_over_joins_the_humans_ticket(tenant, converse, drive, member):
    from approvals.services import conversation_take_over

    conversation, run = converse(tenant, HANDS)
    alice, _ = member(tenant, role="agent", username="alice")
    ticket = conversation_take_over(conversation=conversation, actor=alice)
    run = drive(run)
    assert run.sink == "HANDOVER" and run.events.get(type="run.finished").data["ticket"] == str(ticket.id)
    assert HandoverTicket.objects.get(conversation=conversation).assignee == alice
    conversation.refresh_from_db()
    assert conversation.status == "human"  # still alice's, not back in the queue


def act(client, run, action, body=None):
    return client.post(f"/api/v1/runs/{run.id}/{action}/", body or {}, format="json")


def test_an_operator_cancels_a_waiting_run_its_approval_is_withdrawn_and_the_next_turn_goes(tenant, converse, drive,
                                                                                            api):
    conversation, run = converse(tenant, GATE)
    drive(run)
    held = post(conversation, "next")
    response = act(api, run, "cancel", {"reason": "customer left"})
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["reason"]) == ("cancelled", "customer left")
    assert ApprovalRequest.objects.get(run=run).status == "withdrawn"
    assert Run.objects.get(id=held.id).status == "queued"
    entry = AuditEntry.objects.get(action="run.cancel")
    assert entry.old == {"status": "waiting", "node": "gate"} and entry.new["status"] == "cancelled"
    assert act(api, run, "cancel").status_code == 409  # once only


def test_a_running_run_cancelled_meanwhile_commits_nothing_more(tenant, converse, drive, api):
    _, run = converse(tenant, LINEAR)
    claim = engine.run_claim(run.id)
    assert claim is not None
    act(api, run, "cancel")
    running, lease = claim
    with pytest.raises(engine.LeaseLost):
        engine._commit(running, lease, events=[("step.succeeded", {})], current_node="b")
    assert Run.objects.get(id=run.id).status == "cancelled"


def test_a_cancelled_run_retried_runs_from_where_it_stopped(tenant, converse, drive, api):
    conversation, run = converse(tenant, LINEAR)
    act(api, run, "cancel")
    response = act(api, run, "retry")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    run = drive(run)
    assert run.sink == "FINISH" and run.messages.get(role="ai").text == "x is 1"
    assert AuditEntry.objects.get(action="run.retry").new == {"status": "queued"}
    assert act(api, run, "retry").status_code == 409  # a run that finished is not retried


def test_a_run_is_not_retried_while_a_human_has_its_conversation(tenant, converse, api, member):
    from approvals.services import conversation_take_over

    conversation, run = converse(tenant, LINEAR)
    act(api, run, "cancel")
    conversation_take_over(conversation=conversation, actor=member(tenant, role="agent", username="alice")[0])
    response = act(api, run, "retry")
    assert response.status_code == 409 and "return it to the AI" in response.json()["detail"]


def test_only_operators_cancel_or_retry(tenant, converse, member, client_for):
    _, run = converse(tenant, LINEAR)
    for role in ("agent", "viewer"):
        client = client_for(member(tenant, role=role)[1])
        assert act(client, run, "cancel").status_code == 403
    assert Run.objects.get(id=run.id).status == "queued"


def test_another_tenants_run_cannot_be_cancelled(tenant, other_tenant, converse, member, client_for):
    _, run = converse(tenant, LINEAR)
    outsider = client_for(member(other_tenant)[1])
    assert act(outsider, run, "cancel").status_code == 404
    assert Run.objects.get(id=run.id).status == "queued"


def test_the_admin_cancels_and_retries_runs(tenant, converse, admin_client):
    _, run = converse(tenant, LINEAR)
    url = "/admin/workflows/run/"
    admin_client.post(url, {"action": "cancel", "_selected_action": [run.id]})
    assert Run.objects.get(id=run.id).status == "cancelled"
    response = admin_client.post(url, {"action": "cancel", "_selected_action": [run.id]}, follow=True)
    assert "only a queued, held, running or waiting run can be cancelled" in response.content.decode()
    admin_client.post(url, {"action": "retry", "_selected_action": [run.id]})
    assert Run.objects.get(id=run.id).status == "queued"
    assert Conversation.objects.get(pk=run.conversation_id).status == "ai"


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_run_while_its_approval_is_decided_never_deadlocks(tenant, converse, drive, member):
    """Both take locks in one order (the run, then its approvals): one wins, the other is told why."""
    import threading

    from django.db import connection

    from approvals.services import approval_decide
    from core.errors import Conflict

    operator = member(tenant, username="op")[0]
    for _ in range(5):
        conversation, run = converse(tenant, GATE, turn_id=f"t{Run.objects.count()}")
        drive(run)
        approval = ApprovalRequest.objects.get(run=run)
        barrier, outcomes = threading.Barrier(2), []

        def attempt(action):
            barrier.wait()
            try:
                action()
                outcomes.append("done")
            except Conflict:
                outcomes.append("refused")
            finally:
                connection.close()

        threads = [threading.Thread(target=attempt, args=(lambda: services.run_cancel(run=run, actor=operator),)),
                   threading.Thread(target=attempt, args=(lambda: approval_decide(approval=approval, decision="approve",
                                                                                  actor=operator),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) in (["done", "done"], ["done", "refused"])


def lock_waiters() -> int:
    """How many backends of the test database wait for a lock."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def in_a_transaction_until_another_waits(action, wait):
    """Run `action` in a thread, in a transaction that commits only once another backend waits for one
    of its locks. Returns (thread, started): `started` is set once `action` has run."""
    import threading

    from django.db import connection, transaction

    started = threading.Event()

    def hold():
        try:
            with transaction.atomic():
                action()
                started.set()
                wait(lock_waiters, what="another transaction waiting for a lock")
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert started.wait(60)
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_message_posted_while_the_active_turn_ends_is_queued_not_held_for_ever(tenant, converse, wait, member):
    """The post waits for the conversation's lock; once it has it, it must see the turn that ended meanwhile
    (a check in the locking statement itself would see the conversation's runs as they were before the wait)."""
    conversation, first = converse(tenant, ECHO_TURN, text="one")
    ending = in_a_transaction_until_another_waits(lambda: services.run_cancel(run=first, actor=None), wait)
    second = post(conversation, "two")
    ending.join()
    assert (Run.objects.get(id=first.id).status, second.status) == ("cancelled", "queued")


@pytest.mark.django_db(transaction=True)
def test_a_turn_that_ends_while_a_message_is_posted_releases_it(tenant, converse, drive, wait):
    """The sink waits for the conversation's lock while a post holds it; then it must see the held turn."""
    conversation, first = converse(tenant, ECHO_TURN, text="one")
    held = []
    posting = in_a_transaction_until_another_waits(lambda: held.append(post(conversation, "two")), wait)
    assert held[0].status == "held"
    drive(first)
    posting.join()
    assert Run.objects.get(id=held[0].id).status == "queued"


@pytest.mark.django_db(transaction=True)
def test_turns_posted_as_fast_as_a_worker_answers_them_all_finish(tenant, publish, start_worker, wait):
    start_worker(concurrency=2)
    workflow = publish(tenant, ECHO_TURN, "echo")
    for n in range(20):
        conversation = services.conversation_start(tenant=tenant, workflow_slug=workflow.slug)
        for turn in ("one", "two", "three"):
            post(conversation, f"{turn} {n}")
    wait(lambda: not Run.objects.filter(status__in=Run.ACTIVE).exists(), what="every turn to finish")
    assert Run.objects.filter(status="done", sink="FINISH").count() == 60
    assert Message.objects.filter(role="ai").count() == 60
