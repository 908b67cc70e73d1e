"""Run events pushed live: the WebSocket and the server-sent events stream, against real Redis."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import AsyncClient

from hil_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def socket(run_id, token, after=None):
    path = f"/ws/runs/{run_id}/" + (f"?after={after}" if after is not None else "")
    return WebsocketCommunicator(application, path, headers=[(b"authorization", f"Bearer {token}".encode())])


async def receive_until_finished(ws, timeout=10):
    events = []
    while not events or events[-1]["type"] != "run.finished":
        events.append(await ws.receive_json_from(timeout=timeout))
    return events


@pytest.fixture(autouse=True)
async def close_thread_connections():
    """Database work of async code runs in one shared thread: close its connections after each test."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def setup(tenant, member, converse):
    _, token = member(tenant)
    conversation, run = converse(tenant)
    return run, token


async def test_a_socket_gets_the_history_then_each_new_event_as_it_is_committed(setup, drive):
    run, token = setup
    ws = socket(run.id, token, after=0)
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from(timeout=5)
    assert (first["seq"], first["type"]) == (1, "run.queued")

    await sync_to_async(drive)(run)  # the engine commits in another thread; the doorbell rings
    events = await receive_until_finished(ws)
    assert [e["seq"] for e in events] == [2, 3, 4, 5]
    assert [e["type"] for e in events] == ["run.started", "step.succeeded", "step.succeeded", "run.finished"]
    assert set(events[-1]) == {"v", "seq", "type", "run", "ts", "data"} and events[-1]["run"] == str(run.id)
    await ws.disconnect()


async def test_a_client_resumes_after_the_last_seq_it_saw(setup, drive):
    run, token = setup
    await sync_to_async(drive)(run)
    ws = socket(run.id, token, after=3)
    assert (await ws.connect())[0]
    assert [(await ws.receive_json_from(timeout=5))["seq"] for _ in range(2)] == [4, 5]
    await ws.send_json_to({"after": 1})
    assert [(await ws.receive_json_from(timeout=5))["seq"] for _ in range(4)] == [2, 3, 4, 5]
    await ws.send_json_to({"after": "x"})
    assert "error" in await ws.receive_json_from(timeout=5)
    await ws.send_to(text_data="not json")
    assert "error" in await ws.receive_json_from(timeout=5)
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_browser_sends_its_token_as_a_subprotocol_not_in_the_url(setup):
    run, token = setup
    ws = WebsocketCommunicator(application, f"/ws/runs/{run.id}/", subprotocols=["bearer", token])
    connected, subprotocol = await ws.connect()
    assert (connected, subprotocol) == (True, "bearer")
    assert (await ws.receive_json_from(timeout=5))["type"] == "run.queued"
    await ws.disconnect()
    ws = WebsocketCommunicator(application, f"/ws/runs/{run.id}/?token={token}")
    assert await ws.connect() == (False, 4404)


async def test_a_socket_cannot_open_another_tenants_run_or_without_a_token(setup, other_tenant, member):
    run, _ = setup
    _, stranger = await sync_to_async(member)(other_tenant)
    for token in (stranger, "not-a-token"):
        ws = socket(run.id, token)
        connected, code = await ws.connect()
        assert (connected, code) == (False, 4404)


async def event_stream(run, token, after=0):
    response = await AsyncClient().get(f"/api/v1/runs/{run.id}/events/stream/?after={after}",
                                       headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = []
    async for chunk in response.streaming_content:
        for block in chunk.decode().split("\n\n"):
            data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
            if data:
                events.append(json.loads(data[0]))
    return events


async def test_the_event_stream_sends_new_events_live_and_ends_with_the_run(setup, drive):
    run, token = setup
    stream = asyncio.create_task(event_stream(run, token))
    await asyncio.sleep(0.3)
    await sync_to_async(drive)(run)
    events = await asyncio.wait_for(stream, 10)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[-1]["type"] == "run.finished" and events[-1]["data"]["sink"] == "FINISH"


async def test_the_event_stream_of_a_finished_run_starts_after_the_given_seq(setup, drive):
    run, token = setup
    await sync_to_async(drive)(run)
    events = await asyncio.wait_for(event_stream(run, token, after=4), 10)
    assert [e["seq"] for e in events] == [5]
