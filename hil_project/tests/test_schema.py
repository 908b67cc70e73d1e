"""The OpenAPI schema: it lists the whole API, and the API keeps its promises under generated requests."""

import functools
import json
import re
import shutil

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.test import Client
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from approvals.models import ApprovalRequest, HandoverTicket
from hil_project import urls
from workflows.tests.conftest import daphne  # noqa: F401  (fixture)
from workflows.tests.specs import HANDS

GATE = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {amount: 20}}}
  - {id: gate, kind: approval, config: {title: "Refund", payload: "{amount: a.amount}",
      schema: {type: object, required: [amount], properties: {amount: {type: number}}}}}
edges:
  - {from: a, to: gate}
  - {from: gate, to: FINISH}
"""



def path_shape(path: str) -> str:
    """'/api/v1/runs/<uuid:pk>/' and '/api/v1/runs/{id}/' both -> '/api/v1/runs/{}/'."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


@pytest.fixture
def openapi():
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_lists_every_api_path(openapi):
    assert openapi["openapi"].startswith("3.") and openapi["info"]["title"] == "HIL API"
    routed = {path_shape("/api/v1/" + str(p.pattern)) for p in urls.api} | {"/metrics"}
    assert {path_shape(p) for p in openapi["paths"]} == routed
    assert len(routed) == 50


def test_the_schema_is_served_as_yaml_by_default():
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200 and response.content.startswith(b"openapi: 3.")


def test_the_docs_page_points_at_the_schema():
    response = Client().get("/api/docs/")
    assert response.status_code == 200 and b"/api/schema/" in response.content


def test_the_schema_documents_bearer_authentication(openapi):
    schemes = openapi.get("components", {}).get("securitySchemes", {})
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    assert openapi["paths"]["/api/v1/conversations/"]["get"].get("security")


@pytest.fixture
def fuzz_world(transactional_db, daphne, tenant, member, publish, drive):
    """fuzz_world(path) -> the id of a real object for the operation at `path`: a fresh pending approval
    to decide, a fresh ticket to claim, one the caller holds to reply on or return, or a finished run to
    stream (its stream ends); `.token` lets it in and `.url` is Daphne's, serving the ASGI app as deployed."""
    from approvals.services import ticket_claim
    from workflows import services

    user, token = member(tenant)
    gate = publish(tenant, GATE, slug="gate")
    publish(tenant, HANDS, slug="hands")

    def run_of(slug):
        conversation = services.conversation_start(tenant=tenant, workflow_slug=slug)
        return drive(services.message_post(conversation=conversation, text="hi", turn_id="t1")[0].run)

    def fresh_ticket():
        return HandoverTicket.objects.get(run=run_of("hands"))

    waiting, ticket = run_of("gate"), fresh_ticket()
    governed = _tool_configuration(tenant, gate)
    data_configuration = functools.cache(lambda: _data_configuration(tenant))

    def real_id(path):
        kind, action = path.split("/")[3], path.split("/")[-2]
        if action == "decision":
            return ApprovalRequest.objects.get(run=run_of("gate")).id
        if action == "claim":
            return fresh_ticket().id
        if action in ("reply", "return-to-ai"):
            return ticket_claim(ticket=fresh_ticket(), actor=user).id
        if action == "stream":
            return ticket.run_id
        if kind in DATA_KINDS:  # made for the operations that need them only: a data source is read on saving
            return data_configuration()[kind]
        return {"conversations": ticket.conversation_id, "runs": waiting.id,
                "approvals": ApprovalRequest.objects.get(run=waiting).id, "handovers": ticket.id, **governed}[kind]

    real_id.token, real_id.url = token, daphne.url
    return real_id


def _tool_configuration(tenant, workflow) -> dict:
    """One of each kind of tool configuration, by the API path of its kind. The MCP server's URL refuses
    connections, so that syncing it fails at once."""
    from tools.models import McpServer, Tool, ToolGrant, ToolLimit, ToolPolicy
    from tools.services import governed_save

    made = {"tools": Tool(tenant=tenant, name="crm.lookup", kind="http", url="http://127.0.0.1:9/lookup",
                          input_schema={"type": "object"}),
            "mcp-servers": McpServer(tenant=tenant, name="crm", transport="http", url="http://127.0.0.1:9/mcp"),
            "tool-grants": ToolGrant(tenant=tenant, workflow=workflow, node_id="gate", tool="refunds.issue"),
            "tool-policies": ToolPolicy(tenant=tenant, name="refunds", tool="refunds.*", require="approval"),
            "tool-limits": ToolLimit(tenant=tenant, tool="refunds.issue", calls=5)}
    for obj in made.values():
        governed_save(obj=obj, actor=None)
    return {kind: obj.pk for kind, obj in made.items()}


DATA_KINDS = ("data-sources", "sql-examples", "knowledge-sources", "documents")


def _data_configuration(tenant) -> dict:
    """A data source (a copy of the sample database), an example of it, a knowledge source and a document."""
    from tools.datasources import data_source_save, sql_example_add
    from tools.knowledge import document_upload, knowledge_source_create
    from tools.models import DataSource

    folder = DataSource(tenant=tenant).folder()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(django_settings.HIL_ORDERS_DB, folder / "chinook.sqlite")
    source = data_source_save(source=DataSource(tenant=tenant, name="chinook", engine="sqlite",
                                                location="chinook.sqlite"), actor=None)
    example = sql_example_add(source=source, question="How many artists?", sql_text='SELECT COUNT(*) FROM "Artist"',
                              origin="curated")
    docs = knowledge_source_create(tenant=tenant, name="docs")
    document, _ = document_upload(source=docs, title="faq.md", media_type="text/markdown", data=b"# FAQ\n\nYes.")
    return {"data-sources": source.pk, "sql-examples": example.pk, "knowledge-sources": docs.pk,
            "documents": document.pk}


def load_schema():
    """The served schema, loaded at import: schemathesis' lazy `from_fixture` breaks on pytest 9
    (it sets `node._nodeid`, which pytest 9 no longer has)."""
    loaded = schemathesis.openapi.from_dict(json.loads(Client().get("/api/schema/?format=json").content))
    loaded.config.generation.update(max_examples=12)
    return loaded


schema = load_schema()
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def send(case, world):
    # The timeout bounds each read: a stream that stayed open past its run's end would fail, not hang.
    response = case.call(base_url=world.url, headers={"Authorization": f"Bearer {world.token}"}, timeout=30)
    if "Authorization" in response.request.headers:
        assert response.status_code not in (401, 403), "an operator's token is always let in"
    else:  # schemathesis also tries the request without the header
        assert response.status_code == 401
    case.validate_response(response, checks=CHECKS)


@schema.include(path_regex=r"\{id\}").parametrize()
@settings(FUZZ, max_examples=6)
def test_generated_requests_on_unknown_ids_never_break_the_api(case, fuzz_world):
    """Every operation on an object: random ids (404) and malformed ones."""
    send(case, fuzz_world)


@schema.parametrize()
@FUZZ
def test_generated_requests_on_real_objects_never_break_the_api(case, fuzz_world):
    """Every operation, with `{id}` a real object of its kind and `workflow` a live one, so that the
    fuzzing reaches past the 404s: decisions, claims, replies and messages that succeed."""
    if "id" in (case.path_parameters or {}):
        case.path_parameters["id"] = str(fuzz_world(case.path))
    body = case.body if isinstance(case.body, dict) else {}
    if case.path == "/api/v1/conversations/" and isinstance(body.get("workflow"), str):
        body["workflow"] = "gate"
    send(case, fuzz_world)


@pytest.mark.parametrize("component,field", [("Approval", "decided_by"), ("HandoverTicket", "assignee"),
                                             ("Message", "author")])
def test_fields_that_start_empty_are_declared_nullable(openapi, component, field):
    """They are null until someone acts; typed as plain strings they broke schema-validating clients."""
    assert openapi["components"]["schemas"][component]["properties"][field].get("nullable") is True
