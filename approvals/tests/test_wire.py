"""Desk events as Daphne sends them to consoles (approvals/wire.py) and as their doorbells carry them."""

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import transaction

from approvals import services
from approvals.consumers import _carried, _desk_messages
from core import redis as core_redis
from workflows.events import doorbell_channel
from workflows.tests.conftest import daphne  # noqa: F401  (fixture)

from .test_console_socket import close_thread_connections, person, session_cookie  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.django_db(transaction=True)
BIG, EVENTS = 200_000, 100  # 20 MB of desk events: more than the kernel holds for a socket that does not read


def desk_append(tenant, n: int, size: int = 10) -> None:
    with transaction.atomic():
        services.desk_append(tenant_id=tenant.id, type_="test.event", data={"n": n, "blob": "x" * size})


async def console(url: str, cookie: str, *, rcvbuf: int = 0):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a slow reader's small window
    sock.connect((urlsplit(url).hostname, urlsplit(url).port))
    return await websockets.connect(f"{url.replace('http', 'ws')}/ws/console/", sock=sock, origin=url, max_size=None,
                                    max_queue=1, additional_headers={"Cookie": f"sessionid={cookie}"})


async def desk(ws, n: int) -> list[dict]:
    got = []
    while len(got) < n:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert message["kind"] in ("desk", "presence"), message
        if message["kind"] == "desk":
            got.append(message)
    return got


async def test_a_console_that_stops_reading_gets_every_desk_event_whole_and_in_order(daphne, tenant):  # noqa: F811
    """Frames go straight to the socket until the kernel's buffers are full, then queue behind what Twisted
    holds, with Channels' own sends in between (presence lists, as another tab comes and goes): nothing is
    lost, torn or reordered, for the tab that stops reading and for the one that reads along."""
    cookie = await sync_to_async(session_cookie)(await sync_to_async(person)(tenant, "alice"))
    slow = await console(daphne.url, cookie, rcvbuf=4096)
    fast = await console(daphne.url, cookie)
    fast_got = asyncio.create_task(desk(fast, EVENTS))
    for n in range(EVENTS):
        await sync_to_async(desk_append)(tenant, n, BIG)
        if n == EVENTS // 2:
            await (await console(daphne.url, cookie)).close()
    for ws, got in ((fast, await fast_got), (slow, await desk(slow, EVENTS))):  # the slow one reads only now
        assert [(m["seq"], m["data"]["n"], len(m["data"]["blob"])) for m in got] == [
            (n + 1, n, BIG) for n in range(EVENTS)]
        await ws.close()


async def test_a_desk_event_rides_on_its_doorbell_as_the_socket_sends_it(tenant):
    pubsub = core_redis.client().pubsub()
    pubsub.subscribe(doorbell_channel(tenant.id, services.DESK))
    assert pubsub.get_message(timeout=60)["type"] == "subscribe"
    await sync_to_async(desk_append)(tenant, 1)
    await sync_to_async(desk_append)(tenant, 2, services.DESK_RING_MAX)  # too long to ride: the seq alone
    carried = [pubsub.get_message(timeout=60)["data"] for _ in range(2)]
    pubsub.close()
    [(_, text), _] = await sync_to_async(_desk_messages)(tenant.id, 0)
    assert carried == [f"1 {text}".encode(), b"2"]
    assert json.loads(text)["data"] == {"n": 1, "blob": "x" * 10}


def test_the_room_sends_what_doorbells_carried_only_when_none_is_missing():
    rung = [b'3 {"seq": 3}', b'2 {"seq": 2}']  # out of order: each process commits, then rings
    assert _carried(rung, 1) == [(2, '{"seq": 2}'), (3, '{"seq": 3}')]
    assert _carried(rung, 2) == [(3, '{"seq": 3}')]
    assert _carried(rung, 3) == []  # sent already: nothing to read either
    assert _carried(rung, 0) is None  # 1 is missing: read the database
    assert _carried([b"2"], 1) is None  # too long to ride
    assert _carried([None], 1) is None  # the hub subscribed again: some may be lost
    assert _carried([], 1) is None  # no doorbell (Redis lost): read the database
