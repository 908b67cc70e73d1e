"""Run events pushed live: the WebSocket and the server-sent events stream, against real Redis."""

import asyncio
import json
import threading
import uuid

import httpx
import pytest
import redis.asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection, connections
from django.test import AsyncClient

from hil_project.asgi import application
from workflows import api, consumers, doorbells
from workflows.events import doorbell_ring

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
    """Database work of async code runs in one shared thread and in the stream readers' threads: close their
    connections after each test."""
    yield
    await sync_to_async(connections.close_all)()
    await sync_to_async(doorbells.db_reads_close)()


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
    assert set(events[-1]) == {"v", "seq", "type", "run", "ts", "trace_id", "data"} and events[-1]["run"] == str(run.id)
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


async def stream_events(run, token, after=0):
    """The event stream's envelopes as they arrive."""
    response = await AsyncClient().get(f"/api/v1/runs/{run.id}/events/stream/?after={after}",
                                       headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    async for chunk in response.streaming_content:
        for block in chunk.decode().split("\n\n"):
            data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
            if data:
                yield json.loads(data[0])


async def event_stream(run, token, after=0):
    return [event async for event in stream_events(run, token, after)]


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


async def eventually(predicate, timeout=30):
    """Await `predicate()` until it returns something true; the timeout only bounds a failing test."""
    async with asyncio.timeout(timeout):
        while not (value := await predicate()):
            await asyncio.sleep(0.02)
        return value


async def hub_connections():
    """The doorbell hubs' connections on this test's Redis (only this process has any)."""
    async with redis.asyncio.Redis.from_url(settings.REDIS_URL) as client:
        return [c for c in await client.client_list(_type="pubsub") if c["name"] == doorbells.CLIENT_NAME]


async def test_every_client_of_a_process_shares_one_redis_connection_and_gets_each_new_event(setup, drive):
    run, token = setup
    sockets = [socket(run.id, token) for _ in range(20)]
    for ws in sockets:
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from(timeout=5))["seq"] == 1
    stream = stream_events(run, token)
    assert (await anext(stream))["seq"] == 1  # the stream is listening too

    [connection] = await eventually(hub_connections)
    assert connection["psub"] == "1"  # one pattern for every run: no subscribe per client
    await sync_to_async(drive)(run)
    for ws in sockets:
        assert [e["seq"] for e in await receive_until_finished(ws)] == [2, 3, 4, 5]
    assert [e["seq"] async for e in stream] == [2, 3, 4, 5]
    assert [c["id"] for c in await hub_connections()] == [connection["id"]]

    await asyncio.gather(*(ws.disconnect() for ws in sockets))

    async def closed():  # by the last client out
        return not await hub_connections()
    assert await eventually(closed)


async def test_a_doorbell_wakes_only_the_clients_of_its_own_run_and_tenant():
    run_x, run_y = uuid.uuid4(), uuid.uuid4()
    ring = sync_to_async(doorbell_ring)
    async with (doorbells.listen(1, run_x) as x, doorbells.listen(1, run_y) as y,
                doorbells.listen(2, run_x) as other_tenant_x):
        for bell in (x, y, other_tenant_x):
            assert await bell.wait(10)  # the hub has subscribed: everyone reads the database once

        await ring(1, run_x, 7)
        await ring(1, run_y, 7)
        assert await y.wait(10)  # Redis delivers in order: run X's doorbell was handled before
        assert await x.wait(0) and not await other_tenant_x.wait(0)

        await ring(2, run_x, 7)
        await ring(1, run_y, 8)
        assert await y.wait(10)
        assert await other_tenant_x.wait(0) and not await x.wait(0)


async def test_a_socket_gets_new_events_after_the_hubs_redis_connection_is_killed(setup, drive):
    run, token = setup
    ws = socket(run.id, token)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from(timeout=5))["seq"] == 1
    [killed] = await eventually(hub_connections)
    async with redis.asyncio.Redis.from_url(settings.REDIS_URL) as client:
        assert await client.client_kill_filter(_id=killed["id"]) == 1

    await sync_to_async(drive)(run)  # doorbells rung while the hub may still be away are read from the database
    assert [e["seq"] for e in await receive_until_finished(ws)] == [2, 3, 4, 5]

    async def reconnected():
        found = await hub_connections()
        return len(found) == 1 and found[0]["id"] != killed["id"] and found[0]["psub"] == "1"
    assert await eventually(reconnected)
    await ws.disconnect()


async def test_while_redis_is_down_streams_end_with_a_retry_and_sockets_close_to_come_back(setup, drive, settings):
    run, token = setup
    redis_url, settings.REDIS_URL = settings.REDIS_URL, "redis://127.0.0.1:1"  # nothing listens there
    ws = socket(run.id, token)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from(timeout=5))["seq"] == 1
    stream = api.event_stream(run, 0, heartbeat_s=3600)
    assert await anext(stream) == "retry: 2000\n\n"
    assert "run.queued" in await anext(stream)
    # Once the subscriber knows Redis is gone, the stream ends, as soon as a socket would and long before
    # its first heartbeat: the browser comes back after `retry`; the socket closes with "try again later"
    # and the client comes back with `after`.
    assert [chunk async for chunk in stream] == []
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": consumers.CLOSE_TRY_AGAIN}
    await sync_to_async(drive)(run)  # its doorbells are lost; the events are in the database
    assert [chunk.split("\n")[0] async for chunk in api.event_stream(run, 1, heartbeat_s=0.05)] == [
        "retry: 2000", "id: 2", "id: 3", "id: 4", "id: 5"]

    settings.REDIS_URL = redis_url
    ws = socket(run.id, token, after=1)
    assert (await ws.connect())[0]
    assert [e["seq"] for e in await receive_until_finished(ws, timeout=30)] == [2, 3, 4, 5]
    await ws.disconnect()


async def test_a_browser_event_source_gets_the_stream_and_resumes_from_last_event_id(setup, drive):
    """The headers Chromium's EventSource sends, on the ASGI app as deployed."""
    run, token = setup
    await sync_to_async(drive)(run)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", "Cache-Control": "no-cache",
               "Last-Event-ID": "3"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver") as http:
        response = await http.get(f"/api/v1/runs/{run.id}/events/stream/", headers=headers)
        missing = await http.get(f"/api/v1/runs/{uuid.uuid4()}/events/stream/", headers=headers)
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/event-stream"
    assert [line for line in response.text.splitlines() if line.startswith(("id:", "retry:"))] == [
        "retry: 2000", "id: 4", "id: 5"]
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/json"


async def test_while_redis_is_down_a_socket_sends_what_the_database_holds_then_closes(setup, drive, settings,
                                                                                      monkeypatch):
    run, token = setup
    monkeypatch.setattr(consumers.RunEventsConsumer, "redis_check_s", 0.05)
    await sync_to_async(drive)(run)
    redis_url, settings.REDIS_URL = settings.REDIS_URL, "redis://127.0.0.1:1"
    ws = socket(run.id, token, after=2)
    assert (await ws.connect())[0]
    assert [(await ws.receive_json_from(timeout=5))["seq"] for _ in range(3)] == [3, 4, 5]
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": consumers.CLOSE_TRY_AGAIN}

    settings.REDIS_URL = redis_url  # back: a socket stays open, waiting for new events
    ws = socket(run.id, token, after=5)
    assert (await ws.connect())[0]
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()


def postgres_connections() -> tuple[int, int]:
    """(max_connections, backends connected to the test database now)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('max_connections')::int, count(*) FROM pg_stat_activity"
                       " WHERE datname = current_database()")
        return cursor.fetchone()


async def test_more_streams_than_postgres_has_connections_each_get_every_event(setup, drive):
    """Streams hold no connection of their own: they read the database on a doorbell through the process's
    few reader threads."""
    run, token = setup
    limit, _ = await sync_to_async(postgres_connections)()
    streams = [stream_events(run, token) for _ in range(limit + 20)]
    assert [(await anext(stream))["seq"] for stream in streams] == [1] * len(streams)  # all open at once
    _, in_use = await sync_to_async(postgres_connections)()
    assert in_use < 20
    await sync_to_async(drive)(run)
    for stream in streams:
        assert [event["seq"] async for event in stream] == [2, 3, 4, 5]


async def test_stream_readers_whose_connections_postgres_ended_read_again_on_new_ones():
    """The reader threads keep their connections between reads; one that Postgres ended (a restart, an idle
    timeout) is replaced at the next read, which does not fail."""

    def backend_pid():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    async def on_every_thread(read):
        barrier, waited = threading.Barrier(settings.HIL_STREAM_DB_READS, timeout=30), threading.local()

        def each():
            if not getattr(waited, "done", False):  # each thread takes one read, however long the others take
                waited.done = True
                barrier.wait()
            return read()

        return set(await asyncio.gather(*(doorbells.db_read(each) for _ in range(settings.HIL_STREAM_DB_READS))))

    before = await on_every_thread(backend_pid)
    assert len(before) == settings.HIL_STREAM_DB_READS
    assert await on_every_thread(backend_pid) == before  # kept

    def end(pids):
        with connection.cursor() as cursor:
            for pid in pids:
                cursor.execute("SELECT pg_terminate_backend(%s, 30000)", [pid])

    await sync_to_async(end)(before)
    after = await on_every_thread(backend_pid)
    assert len(after) == settings.HIL_STREAM_DB_READS and not after & before
