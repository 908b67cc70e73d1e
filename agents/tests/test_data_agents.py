"""The data agents against a scripted model over HTTP (the local OpenAI-compatible server) and a copy of the Chinook
database: the SQL agent reads, corrects itself from the guard's and the database's errors, and writes only once a
human approved the dry run; the responder's citations are checked verbatim and its numbers traced to the data."""

import shutil
import sqlite3
from contextlib import closing

import pytest
from django.conf import settings

from agents import local_llm
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from core.errors import Conflict
from tools import knowledge
from tools.datasources import data_source_save, sql_example_add
from tools.models import DataSource, SqlExample, ToolCall
from workflows.models import Message, RunEvent

pytestmark = pytest.mark.django_db

ANALYST = """
entry: ask
nodes:
  - id: ask
    agent: sql
    tools: [sql.query, sql.write]
    config: {source: chinook, profile: powerful}
  - id: answer
    agent: responder
    config: {profile: powerful, template: "{{ ask.summary }}"}
edges:
  - {from: ask, to: HANDOVER, when: "ask.refused"}
  - {from: ask, to: answer}
  - {from: answer, to: HANDOVER, when: "length(answer.untraced_numbers || `[]`) > `0`"}
  - {from: answer, to: FINISH}
"""
CANADA = """SELECT COUNT(*) AS "Customers" FROM "Customer" WHERE "Country" = 'Canada'"""
BRAZIL = """DELETE FROM "Customer" WHERE "Country" = 'Brazil'"""


def sql_answer(text: str, write: bool = False) -> dict:
    return local_llm.json_answer({"sql": text, "write": write, "explanation": "as asked"})


def reply(text: str, **more) -> dict:
    return local_llm.json_answer({"reply": text, **more})


@pytest.fixture
def chinook(tenant, data_dir):
    """The tenant's `chinook` data source: a copy of the sample database in the tenant's data folder."""
    (data_dir / tenant.slug).mkdir(parents=True)
    shutil.copyfile(settings.HIL_ORDERS_DB, data_dir / tenant.slug / "chinook.sqlite")
    return data_source_save(source=DataSource(tenant=tenant, name="chinook", engine="sqlite",
                                              location="chinook.sqlite"), actor=None)


def customers(source: DataSource, country: str) -> int:
    with closing(sqlite3.connect(source.file_path())) as db:
        return db.execute('SELECT COUNT(*) FROM "Customer" WHERE "Country" = ?', (country,)).fetchone()[0]


def told(model, n: int) -> str:
    """What the model was told in its n-th chat request."""
    chats = [r for r in model.requests if r.path == "/v1/chat/completions"]
    return "\n".join(m["content"] for m in chats[n].body["messages"] if isinstance(m.get("content"), str))


def test_a_question_is_answered_from_the_data(tenant, chinook, converse, drive, model):
    model.script(sql_answer(CANADA), reply("We have 8 customers in Canada."))
    _, run = converse(tenant, ANALYST, text="How many customers do we have in Canada?")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert Message.objects.get(run=run, role="ai").text == "We have 8 customers in Canada."
    artifact = RunEvent.objects.get(run=run, type="artifact").data
    assert (artifact["kind"], artifact["columns"], artifact["rows"], artifact["truncated"]) == (
        "sql_result", ["Customers"], [[8]], False)
    system = [r for r in model.requests if r.path == "/v1/chat/completions"][0].body["messages"][0]["content"]
    assert '"Customer"' in system and '"Invoice"' in system  # the schema, as the model is told it


def test_a_wrong_column_and_a_guard_refusal_go_back_to_the_model_which_corrects_itself(tenant, chinook, converse,
                                                                                       drive, model):
    model.script(sql_answer("""SELECT COUNT(*) FROM "Customer" WHERE "Nation" = 'Canada'"""),
                 sql_answer(f"{CANADA}; DROP TABLE \"Customer\""), sql_answer(CANADA), reply("8 customers."))
    _, run = converse(tenant, ANALYST, text="How many customers in Canada?")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert "Nation" in told(model, 1)  # the database's error, as the model was told it
    assert "did not work" in told(model, 2) and "statement" in told(model, 2).lower()
    assert run.steps.get(node_id="ask").output["attempts"] == 3
    assert customers(chinook, "Canada") == 8


def test_a_number_the_data_does_not_give_goes_to_a_human(tenant, chinook, converse, drive, model):
    model.script(sql_answer(CANADA), reply("We have 9 customers in Canada, 12.5% of all."))
    _, run = converse(tenant, ANALYST, text="How many customers do we have in Canada?")
    run = drive(run)
    assert run.sink == "HANDOVER"
    assert run.steps.get(node_id="answer").output["untraced_numbers"] == ["9", "12.5"]


def test_a_calculation_over_the_data_traces_its_number(tenant, chinook, converse, drive, model):
    both = """SELECT "Country", COUNT(*) FROM "Customer" WHERE "Country" IN ('Canada', 'Brazil') GROUP BY 1"""
    model.script(sql_answer(both), reply("13 customers live in Canada or Brazil.", calculations=["8 + 5"]))
    _, run = converse(tenant, ANALYST, text="How many customers do we have in Canada and Brazil together?")
    assert drive(run).sink == "FINISH"
    model.script(sql_answer(both), reply("14 customers live in Canada or Brazil.", calculations=["8 + 6"]))
    _, run = converse(tenant, ANALYST, text="How many customers in Canada and Brazil, all told?", turn_id="t2")
    run = drive(run)
    assert run.sink == "HANDOVER", run.reason
    assert run.steps.get(node_id="answer").output["untraced_numbers"] == ["14"]


def pending(run) -> ApprovalRequest:
    return ApprovalRequest.objects.get(run=run, status="pending")


def test_a_write_waits_for_an_approval_that_shows_its_dry_run_then_runs_once(tenant, chinook, converse, drive, model,
                                                                            member):
    operator, _ = member(tenant)
    model.script(sql_answer(BRAZIL, write=True), reply("Done."))
    _, run = converse(tenant, ANALYST, text="Delete the customers from Brazil")
    run = drive(run)
    assert run.status == "waiting"
    approval = pending(run)
    dry_run = approval.preview["dry_run"]
    assert dry_run["rows_affected"] == 5 and len(dry_run["rows"]) == 5
    assert approval.payload["sql"] == BRAZIL and approval.approver_role == "operator"
    assert customers(chinook, "Brazil") == 5  # the dry run changed nothing
    approval_decide(approval=approval, decision="approve", payload=None, actor=operator, comment="")
    with pytest.raises(Conflict):
        approval_decide(approval=approval, decision="approve", payload=None, actor=operator, comment="")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert customers(chinook, "Brazil") == 0
    assert ToolCall.objects.get(run=run, tool="sql.write").executions == 1
    example = SqlExample.objects.get(source=chinook)  # approved, it is an example for the next such question
    assert (example.question, example.sql, example.origin) == ("Delete the customers from Brazil", BRAZIL, "approved")


def test_an_approved_write_whose_worker_died_while_running_it_is_not_run_again(tenant, chinook, converse, drive,
                                                                               model, member):
    """The customer's database knows nothing of our idempotency keys: a started write whose outcome was not recorded
    may have run, so it goes to a human instead of running twice."""
    operator, _ = member(tenant)
    model.script(sql_answer(BRAZIL, write=True), reply("Done."))
    _, run = converse(tenant, ANALYST, text="Delete the customers from Brazil")
    run = drive(run)
    approval_decide(approval=pending(run), decision="approve", payload=None, actor=operator, comment="")
    # What a worker leaves when it dies after the statement committed and before the ledger recorded it:
    with closing(sqlite3.connect(chinook.file_path())) as db:
        db.execute(BRAZIL)
        db.commit()
    ToolCall.objects.filter(run=run, tool="sql.write").update(executions=1)

    run = drive(run)

    assert run.sink == "HANDOVER"
    assert run.steps.get(node_id="ask", status="succeeded").output["code"] == "outcome_unknown"
    call = ToolCall.objects.get(run=run, tool="sql.write")
    assert (call.status, call.executions) == ("pending", 1)  # not made again, and left for a human to settle
    assert not SqlExample.objects.filter(source=chinook).exists()


def test_an_edited_write_is_dry_run_and_approved_again(tenant, chinook, converse, drive, model, member):
    operator, _ = member(tenant)
    model.script(sql_answer(BRAZIL, write=True), reply("Done."))
    _, run = converse(tenant, ANALYST, text="Delete the customers from Brazil")
    run = drive(run)
    edited = """DELETE FROM "Customer" WHERE "Country" = 'Canada'"""
    approval_decide(approval=pending(run), decision="edit", payload={"source": "chinook", "sql": edited},
                    actor=operator, comment="Canada, not Brazil")
    run = drive(run)
    again = pending(run)
    assert again.payload["sql"] == edited and again.preview["dry_run"]["rows_affected"] == 8
    assert customers(chinook, "Canada") == 8 and customers(chinook, "Brazil") == 5
    approval_decide(approval=again, decision="approve", payload=None, actor=operator, comment="")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert customers(chinook, "Canada") == 0 and customers(chinook, "Brazil") == 5


def test_a_write_refused_by_a_human_changes_nothing(tenant, chinook, converse, drive, model, member):
    operator, _ = member(tenant)
    model.script(sql_answer(BRAZIL, write=True))
    _, run = converse(tenant, ANALYST, text="Delete the customers from Brazil")
    run = drive(run)
    approval_decide(approval=pending(run), decision="reject", payload=None, actor=operator, comment="no")
    run = drive(run)
    assert run.sink == "HANDOVER" and customers(chinook, "Brazil") == 5


def test_offline_an_approved_example_near_enough_answers_and_a_far_question_goes_to_a_human(tenant, chinook,
                                                                                         converse, drive):
    sql_example_add(source=chinook, question="How many customers do we have in Canada?", sql_text=CANADA,
                    origin=SqlExample.Origin.CURATED)
    _, run = converse(tenant, ANALYST.replace("powerful", "balanced"), text="How many customers are in Canada?")
    run = drive(run)
    assert (run.sink, Message.objects.get(run=run, role="ai").text) == ("FINISH", "Customers: 8")
    _, run = converse(tenant, ANALYST.replace("powerful", "balanced"), text="Which genre sells best?", turn_id="t2")
    assert drive(run).sink == "HANDOVER"


POLICY = """
entry: lookup
nodes:
  - id: lookup
    agent: rag
    config: {sources: [docs], k: 3}
  - id: answer
    agent: responder
    config: {profile: powerful}
edges:
  - {from: lookup, to: answer, when: lookup.found}
  - {from: lookup, to: HANDOVER}
  - {from: answer, to: FINISH}
"""
OPENED = "Opened items that are not faulty cannot be returned"


@pytest.fixture
def docs(tenant):
    source = knowledge.knowledge_source_create(tenant=tenant, name="docs")
    document, _ = knowledge.document_upload(source=source, title="returns-policy.md", media_type="text/markdown",
                                            data=(settings.BASE_DIR / "workflows/demo/knowledge/returns-policy.md")
                                            .read_bytes())
    knowledge.document_ingest(document_id=document.id)
    return document.chunks.get(text__contains=OPENED)


def test_a_reply_cites_its_passage_verbatim(tenant, docs, converse, drive, model):
    model.script(reply("Opened items can only come back if faulty.", citations=[{"chunk": docs.id, "quote": OPENED}]))
    _, run = converse(tenant, POLICY, text="Can I return an opened CD?")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    text = Message.objects.get(run=run, role="ai").text
    assert text.startswith("Opened items can only come back if faulty.") and "returns-policy.md" in text
    snippets = RunEvent.objects.get(run=run, type="artifact", data__kind="snippets").data["snippets"]
    assert docs.id in [s["chunk"] for s in snippets]
    cited = RunEvent.objects.get(run=run, type="artifact", data__kind="citations").data["citations"]
    assert cited == [{"chunk": docs.id, "quote": OPENED, "title": "returns-policy.md", "source": "docs",
                      "heading": docs.heading}]


def test_a_citation_altered_by_one_character_is_asked_again_then_handed_over(tenant, docs, converse, drive, model):
    altered = OPENED.replace("cannot", "can")
    model.script(*[reply("Opened items can be returned.", citations=[{"chunk": docs.id, "quote": altered}])] * 2)
    _, run = converse(tenant, POLICY, text="Can I return an opened CD?")
    run = drive(run)
    assert run.sink == "HANDOVER" and "citations could not be verified" in run.reason
    assert "does not occur" in told(model, 1)


def test_a_citation_corrected_on_the_second_try_is_sent(tenant, docs, converse, drive, model, other_tenant):
    theirs = knowledge.knowledge_source_create(tenant=other_tenant, name="docs")
    document, _ = knowledge.document_upload(source=theirs, title="secret.md", media_type="text/markdown",
                                            data=b"# Secret\n\nOpened items are always refunded.")
    knowledge.document_ingest(document_id=document.id)
    stray = document.chunks.get()
    theirs_quoted = {"chunk": stray.id, "quote": "Opened items are always refunded"}
    model.script(reply("Always refunded.", citations=[theirs_quoted]),
                 reply("Only if faulty.", citations=[{"chunk": docs.id, "quote": OPENED}]))
    _, run = converse(tenant, POLICY, text="Can I return an opened CD?")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert f"chunk {stray.id} was not among the passages found" in told(model, 1)
