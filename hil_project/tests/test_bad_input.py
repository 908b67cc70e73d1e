"""No input answers 500 or an HTML page: the API as deployed (the ASGI app) says what is wrong, in JSON,
and changes nothing."""

import json

import httpx
import pytest
from channels.db import database_sync_to_async
from django.db import connections

from approvals.models import ApprovalRequest
from hil_project.asgi import application
from workflows.models import Conversation, Message
from workflows.tests.conftest import daphne  # noqa: F401  (fixture)
from workflows.tests.servers import needs_own_servers, postgres_down

pytestmark = pytest.mark.django_db(transaction=True)

GATE = """
entry: gate
nodes:
  - {id: gate, kind: approval, config: {title: "Refund", payload: "{amount: `20`}",
      schema: {type: object, properties: {amount: {type: number}}}}}
edges:
  - {from: gate, to: FINISH}
"""


@pytest.fixture
def http(tenant, member):
    """An operator's httpx client on the ASGI app."""
    token = member(tenant)[1]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver",
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


@pytest.fixture
def waiting_approval(tenant, converse, drive):
    _, run = converse(tenant, GATE)
    drive(run)
    return ApprovalRequest.objects.get(run=run)


def nested(depth: int) -> bytes:
    return b'{"payload": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("body,error", [
    (nested(100_000), "the body: JSON nested deeper than 32 levels"),
    (nested(40), "payload[0][0][0]"),  # where it is too deep
    (b'{"decision": "edit", "payload": {"note": "\\ud800"}}', "payload.note: lone surrogates"),
    (b'{"decision": "edit", "payload": {"\\udfff": 1}}', "lone surrogates"),
    (b'{"decision": "edit", "payload": {"amount": 1e999}}', "1e999 is out of range"),
    (b'{"decision": "edit", "payload": {"amount": -Infinity}}', "-Infinity is not a number"),
    (b'{"decision": "edit", "payload": {"amount": NaN}}', "NaN is not a number"),
    (b'{"decision": "edit", "payload": {"notes": ["a\\u0000b"]}}', "payload.notes[0]: NUL characters"),
    (b'{"decision": "edit", "payload": {"amount": 2', "JSON parse error"),
    (b'\xff\xfe', "JSON parse error"),
])
async def test_an_edited_payload_that_could_not_be_stored_is_a_400_and_the_approval_stays_pending(
        http, waiting_approval, body, error):
    async with http:
        response = await http.post(f"/api/v1/approvals/{waiting_approval.id}/decision/", content=body)
    assert response.status_code == 400 and error in response.json()["detail"]
    await database_sync_to_async(waiting_approval.refresh_from_db)()
    assert waiting_approval.status == "pending"


async def test_a_body_over_the_limit_is_a_413(http, tenant, settings):
    settings.HIL_MAX_BODY_BYTES = 1000
    async with http:
        response = await http.post("/api/v1/conversations/", content=json.dumps({"workflow": "x" * 2000}))
    assert response.status_code == 413 and response.json() == {"detail": "the body is over 1000 bytes"}
    assert not await database_sync_to_async(Conversation.objects.exists)()


@pytest.mark.parametrize("debug", [False, True])
async def test_a_malformed_id_is_a_json_404_also_in_debug(http, settings, debug):
    settings.DEBUG = debug
    async with http:
        response = await http.get("/api/v1/runs/not-a-uuid/")
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not Found: no such resource /api/v1/runs/not-a-uuid/"}


@needs_own_servers
def test_while_postgres_is_down_the_api_answers_503_with_retry_after(api, tenant, converse):
    conversation, _ = converse(tenant)
    url, body = f"/api/v1/conversations/{conversation.id}/messages/", {"text": "hello?", "turn_id": "down"}
    with postgres_down():
        response = api.post(url, body, format="json")
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json() == {"detail": "the database is unavailable; try again shortly"}
    connections.close_all()  # the connection the stop cut; a server's next request opens a new one
    assert api.post(url, body, format="json").status_code == 202
    assert Message.objects.filter(turn_id="down").count() == 1


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer " + "x" * 20_000},                   # one line over Twisted's 16 kB
    {f"X-Filler-{n}": "y" * 1_000 for n in range(20)},             # each short, together over 16 kB
])
def test_headers_over_the_limit_get_a_431_that_says_so_from_daphne(daphne, headers):
    response = httpx.get(daphne.url + "/api/v1/conversations/", headers=headers, timeout=30)
    assert response.status_code == 431
    assert response.json()["detail"].startswith("request headers too large")
    assert httpx.get(daphne.url + "/healthz", timeout=30).status_code == 200  # and it serves on
