"""The console's WebSocket: signed in by a verified session, scoped to its tenant, resumable by desk seq."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client

from accounts.models import Membership, Role
from accounts.services import membership_set, user_ensure
from approvals.models import HandoverTicket
from conftest import verified_login
from hil_project.asgi import application
from workflows import doorbells
from workflows.tests import servers
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()
    await sync_to_async(doorbells.db_reads_close)()


def session_cookie(user, *, verified=True) -> str:
    client = Client()
    if verified:
        verified_login(client, user)
    else:
        client.force_login(user)  # past the password, not the second factor
    return client.cookies["sessionid"].value


def console(cookie: str | None, after=0, origin=b"http://testserver"):
    headers = [(b"origin", origin)] + ([(b"cookie", f"sessionid={cookie}".encode())] if cookie else [])
    return WebsocketCommunicator(application, f"/ws/console/?after={after}", headers=headers)


def person(tenant, name, role=Role.AGENT):
    user = user_ensure(username=name)
    membership_set(tenant=tenant, user=user, role=role)
    return user


async def connected(ws) -> WebsocketCommunicator:
    ok, _ = await ws.connect()
    assert ok
    return ws


async def next_of(ws, kind: str) -> dict:
    """The next message of `kind`, past the presence lists that come whenever someone comes or goes."""
    while (message := await ws.receive_json_from(timeout=10))["kind"] != kind:
        assert message["kind"] == "presence", message
    return message


async def no_desk_event(ws):
    """Nothing more but presence lists."""
    while not await ws.receive_nothing(timeout=0.5):
        assert (await ws.receive_json_from())["kind"] == "presence"


async def desk_events(ws, n: int) -> list[tuple[int, str]]:
    got = []
    while len(got) < n:
        message = await ws.receive_json_from(timeout=10)
        if message["kind"] == "desk":
            got.append((message["seq"], message["type"]))
    return got


@pytest.fixture
def hand_over(converse, drive):
    """hand_over(tenant, text) -> a ticket opened by a run that handed its conversation over."""

    def make(tenant, text="hi"):
        _, run = converse(tenant, HANDS, text=text)
        drive(run)
        return HandoverTicket.objects.get(run=run)

    return sync_to_async(make)


@pytest.mark.parametrize("how", ["anonymous", "password only", "no member", "other site"])
async def test_the_socket_is_refused_without_a_verified_member_session(tenant, how):
    alice = await sync_to_async(person)(tenant, "alice")
    if how == "anonymous":
        ws = console(None)
    elif how == "password only":
        ws = console(await sync_to_async(session_cookie)(alice, verified=False))
    elif how == "no member":
        ws = console(await sync_to_async(session_cookie)(await sync_to_async(user_ensure)(username="stranger")))
    else:  # a page of another site opening a socket with the member's cookie
        ws = console(await sync_to_async(session_cookie)(alice), origin=b"https://evil.example")
    ok, code = await ws.connect()
    assert not ok and code in (4403, 1000)  # 1000: the origin check closes before any consumer runs
    if how != "other site":
        assert code == 4403


async def test_desk_events_arrive_live_and_a_reconnect_resumes_without_gap_or_duplicate(tenant, hand_over):
    alice = await sync_to_async(person)(tenant, "alice")
    cookie = await sync_to_async(session_cookie)(alice)
    ws = await connected(console(cookie))
    await hand_over(tenant, "first")
    assert await desk_events(ws, 1) == [(1, "ticket.opened")]
    await ws.disconnect()

    await hand_over(tenant, "second")  # while the console is away
    await hand_over(tenant, "third")
    ws = await connected(console(cookie, after=1))
    assert await desk_events(ws, 2) == [(2, "ticket.opened"), (3, "ticket.opened")]
    await hand_over(tenant, "fourth")
    assert await desk_events(ws, 1) == [(4, "ticket.opened")]
    await no_desk_event(ws)
    await ws.send_json_to({"after": 2})  # asked again: exactly what came after
    assert await desk_events(ws, 2) == [(3, "ticket.opened"), (4, "ticket.opened")]
    await ws.disconnect()


async def test_another_tenant_hears_nothing_and_cannot_watch_this_tenant_s_conversations(
        tenant, other_tenant, hand_over):
    alice = await sync_to_async(person)(tenant, "alice")
    mallory = await sync_to_async(person)(other_tenant, "mallory")
    ws = await connected(console(await sync_to_async(session_cookie)(mallory)))
    ticket = await hand_over(tenant)
    await ws.send_json_to({"watch": {"conversation": str(ticket.conversation_id), "run": str(ticket.run_id)}})
    refused = await next_of(ws, "error")
    assert refused == {"kind": "error", "detail": "no such conversation or run in this tenant"}
    await no_desk_event(ws)  # never the ticket.opened of acme's desk
    await ws.disconnect()

    ours = await connected(console(await sync_to_async(session_cookie)(alice)))
    await ours.send_json_to({"watch": {"conversation": str(ticket.conversation_id), "run": str(ticket.run_id)}})
    kinds = set()
    while not {"run", "messages"} <= kinds:  # (and presence lists)
        kinds.add((await ours.receive_json_from(timeout=10))["kind"])
    await ours.disconnect()


@pytest.mark.parametrize("message", [
    "not json", [], {"after": -1}, {"after": True}, {"decide": "approve"}, {"watch": {"conversation": "x"}},
    {"presence": {"ticket": 5}}, {"after": 1, "watch": {}},
])
async def test_a_forged_message_is_refused_and_changes_nothing(tenant, message, hand_over):
    alice = await sync_to_async(person)(tenant, "alice")
    ws = await connected(console(await sync_to_async(session_cookie)(alice)))
    if isinstance(message, str):
        await ws.send_to(text_data=message)
    else:
        await ws.send_json_to(message)
    await next_of(ws, "error")
    await hand_over(tenant)  # the socket still follows the desk from where it was
    assert await desk_events(ws, 1) == [(1, "ticket.opened")]
    await ws.disconnect()


async def test_a_member_removed_while_connected_is_closed_at_the_next_message(tenant):
    alice = await sync_to_async(person)(tenant, "alice")
    ws = await connected(console(await sync_to_async(session_cookie)(alice)))
    await sync_to_async(Membership.objects.filter(user=alice).delete)()
    await ws.send_json_to({"after": 0})
    while (output := await ws.receive_output(timeout=10))["type"] != "websocket.close":
        assert json.loads(output["text"])["kind"] == "presence"


async def presence_until(ws, predicate) -> dict:
    while not predicate(everyone := (await next_of(ws, "presence"))["all"]):
        pass
    return everyone


async def test_presence_shows_who_is_online_who_looks_at_a_ticket_and_who_types(tenant, other_tenant):
    alice, bob = [await sync_to_async(person)(tenant, name) for name in ("alice", "bob")]
    mallory = await sync_to_async(person)(other_tenant, "mallory")
    a = await connected(console(await sync_to_async(session_cookie)(alice)))
    m = await connected(console(await sync_to_async(session_cookie)(mallory)))
    b = await connected(console(await sync_to_async(session_cookie)(bob)))
    await presence_until(a, lambda everyone: sorted(p["user"] for p in everyone.values()) == ["alice", "bob"])
    await b.send_json_to({"presence": {"ticket": "t-1", "typing": True}})
    await presence_until(a, lambda everyone: {"user": "bob", "ticket": "t-1", "typing": True} in everyone.values())
    await b.disconnect()
    await presence_until(a, lambda everyone: [p["user"] for p in everyone.values()] == ["alice"])
    assert all(p["user"] == "mallory" for p in (await next_of(m, "presence"))["all"].values())  # tenants apart
    await a.disconnect()
    await m.disconnect()


async def test_a_viewer_s_console_cannot_decide_and_its_socket_has_no_decide(tenant, converse, drive):
    from approvals.tests.test_approvals import GATE

    viewer = await sync_to_async(person)(tenant, "vera", Role.VIEWER)
    _, run = await sync_to_async(converse)(tenant, GATE)
    await sync_to_async(drive)(run)

    def decide_as_viewer():
        client = verified_login(Client(enforce_csrf_checks=True), viewer)
        client.get("/console/")  # the page sets the CSRF cookie
        approval = run.approvals.get()
        response = client.post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"},
                               content_type="application/json", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
        approval.refresh_from_db()
        return response, approval.status

    response, status = await sync_to_async(decide_as_viewer)()
    assert response.status_code == 403 and "role" in response.json()["detail"] and status == "pending"
    ws = await connected(console(await sync_to_async(session_cookie)(viewer)))
    assert await desk_events(ws, 1) == [(1, "approval.requested")]  # a viewer sees what waits
    await ws.send_json_to({"decide": {"approval": "x", "decision": "approve"}})
    await next_of(ws, "error")
    await ws.disconnect()


@servers.needs_own_servers
async def test_while_redis_is_down_a_console_still_connects_and_hears_the_desk(tenant, hand_over):
    alice = await sync_to_async(person)(tenant, "alice")
    cookie = await sync_to_async(session_cookie)(alice)
    down = servers.redis_down()
    await asyncio.to_thread(down.__enter__)
    try:
        ws = await connected(console(cookie))  # presence is skipped; the desk is read from the database
        await hand_over(tenant, "while Redis is down")
        assert await desk_events(ws, 1) == [(1, "ticket.opened")]
    finally:
        await asyncio.to_thread(down.__exit__, None, None, None)
    await hand_over(tenant, "once it is back")
    assert await desk_events(ws, 1) == [(2, "ticket.opened")]
    await ws.disconnect()


async def test_a_flood_of_messages_is_refused_past_the_burst_without_reading_the_database(tenant):
    alice = await sync_to_async(person)(tenant, "alice")
    ws = await connected(console(await sync_to_async(session_cookie)(alice)))
    for _ in range(40):
        await ws.send_json_to({"bogus": 1})
    details = [(await next_of(ws, "error"))["detail"] for _ in range(40)]
    assert details.count("too many messages: at most 5 a second") >= 15  # 20 answered, the rest refused at once
    await ws.disconnect()
