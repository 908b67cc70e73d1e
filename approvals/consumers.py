"""The console's WebSocket, `/ws/console/?after=N`: one per open console tab, signed in by its session
(past the second factor) and working in the session's tenant.

Server to client, each message a JSON object with a `kind`:
- `desk`: a desk event (ticket opened, claimed, released, closed; approval requested, decided) with its
  `seq`, every one after `after`, then each new one as it commits. A client that reconnects with the last
  seq it saw misses none and gets none twice.
- `run`: an event of the run the client watches (`{"watch": {"run": id, "after": n}}`), same rules.
- `messages`: the watched conversation's messages after the last sent (`{"watch": {"conversation": id}}`).
- `presence`: `all`, who is online and what they look at or type in, by socket, whenever it changes
  (`{"presence": {"ticket": id, "typing": bool}}` sets this socket's).
- `error`: a message the server refused, and why.

Membership is checked on connect and again on every message: a member removed, or a session signed out,
is closed with 4403. While the socket is open, the member's leased ticket claims are renewed.

The consoles of a tenant in one process share one doorbell subscription, one frame of each desk event, and
one read of the presence list per change (_Room)."""

import asyncio
import json
import logging
import time
import uuid
import weakref
from urllib.parse import parse_qs

import redis
from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.auth import session_member
from core import redis as core_redis
from workflows import doorbells
from workflows.consumers import JsonConsumer, is_seq
from workflows.events import conversation_stream, doorbell_ring, events_after
from workflows.models import Conversation, Message, Run

from . import services, wire

log = logging.getLogger(__name__)
CLOSE_FORBIDDEN = 4403
PRESENCE = "presence"  # the doorbell stream that rings when someone's presence changes
PRESENCE_TTL_S = 90  # an entry a dead process left behind drops out of the list after this
PRESENCE_COALESCE_S = 0.1  # changes within this are sent as one list
MESSAGES_PER_S, MESSAGES_BURST = 5, 20  # what a console sends (each is checked against the database)


def _presence_key(tenant_id: int) -> str:
    return f"hil:t{tenant_id}:presence"


class ConsoleConsumer(JsonConsumer):
    channel_layer_alias = None  # none: the database and the doorbells carry everything a console hears

    async def connect(self):
        self.member = await doorbells.db_read(session_member, self.scope["user"], self.scope["session"])
        if self.member is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.tenant_id, self.username = self.member.tenant_id, self.scope["user"].get_username()
        try:
            self.sent = max(0, int(parse_qs(self.scope["query_string"].decode()).get("after", ["0"])[0]))
        except ValueError:
            self.sent = 0
        self.lock, self.watcher, self.socket_id = asyncio.Lock(), None, uuid.uuid4().hex
        self.presence = {"user": self.username, "ticket": None, "typing": False}
        self.allowance, self.counted_at = MESSAGES_BURST, time.monotonic()
        await self.accept()
        self.write = wire.writer(self.base_send)
        self.room = await _Room.join(self)
        await self._catch_up()
        await self._presence_publish()

    async def disconnect(self, code):
        if getattr(self, "room", None) is None:
            return
        await self.room.leave(self)
        if self.watcher:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        await asyncio.to_thread(_presence_leave, self.tenant_id, self.socket_id)

    async def _catch_up(self):
        """Send every desk event after the last one sent, until none is left that the room has seen."""
        async with self.lock:
            while True:
                for seq, text in await doorbells.db_read(_desk_messages, self.tenant_id, self.sent):
                    await self.send(text_data=text)
                    self.sent = seq
                if self.sent >= self.room.seq:
                    return

    async def deliver(self, seq: int, text: str, data: bytes):
        """The room's next desk event (`data`: `text` framed), if it is this console's next one (else its
        catch-up sends it)."""
        async with self.lock:
            if self.sent == seq - 1:
                if self.write:
                    self.write(data)
                else:
                    await self.send(text_data=text)
                self.sent = seq

    # --- messages from the client ---

    async def receive_json(self, content, **kwargs):
        now = time.monotonic()  # a bucket of MESSAGES_BURST messages, refilled at MESSAGES_PER_S
        self.allowance = min(MESSAGES_BURST, self.allowance + (now - self.counted_at) * MESSAGES_PER_S)
        self.counted_at = now
        if self.allowance < 1:
            return await self._refuse(f"too many messages: at most {MESSAGES_PER_S} a second")
        self.allowance -= 1
        member = await doorbells.db_read(session_member, self.scope["user"], self.scope["session"])
        if member is None or member.tenant_id != self.tenant_id:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not isinstance(content, dict) or len(content) != 1:
            return await self._refuse('send one of {"after": seq}, {"watch": {...}}, {"presence": {...}}')
        (verb, value), = content.items()
        if verb == "after" and is_seq(value):
            async with self.lock:
                self.sent = value
            await self._catch_up()
        elif verb == "watch" and isinstance(value, dict):
            await self._watch(value)
        elif verb == "presence" and isinstance(value, dict):
            await self._presence_set(value)
        else:
            await self._refuse(f"'{verb}' is not something this socket does, or its value is not valid")

    async def _refuse(self, detail: str):
        await self.send_json({"kind": "error", "detail": detail})

    # --- watching one conversation and its run ---

    async def _watch(self, value: dict):
        run_id, conversation_id, after = value.get("run"), value.get("conversation"), value.get("after", 0)
        if not is_seq(after):
            return await self._refuse("'after' is a non-negative integer")
        found = await doorbells.db_read(self._watchable, conversation_id, run_id)
        if found is None:
            return await self._refuse("no such conversation or run in this tenant")
        if self.watcher:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        self.watcher = asyncio.create_task(self._follow_watched(*found, after))

    def _watchable(self, conversation_id, run_id):
        try:
            conversation = Conversation.objects.filter(tenant_id=self.tenant_id, pk=conversation_id).first()
            run = run_id and Run.objects.filter(tenant_id=self.tenant_id, pk=run_id, conversation=conversation).first()
        except ValidationError:  # not a UUID
            return None
        if conversation is None or (run_id and run is None):
            return None
        return conversation, run or None

    async def _follow_watched(self, conversation, run, after: int):
        sent = 0  # messages
        async with doorbells.listen(self.tenant_id, conversation_stream(conversation.pk)) as said, \
                doorbells.listen(self.tenant_id, run.pk if run else "-") as done:
            while True:
                if run:
                    for envelope in await doorbells.db_read(events_after, run, after):
                        await self.send_json({"kind": "run", "run": str(run.pk), **envelope})
                        after = envelope["seq"]
                messages = await doorbells.db_read(_messages, conversation.pk, sent)
                if messages:
                    await self.send_json({"kind": "messages", "conversation": str(conversation.pk),
                                          "messages": messages, "from": sent})
                    sent += len(messages)
                waits = [asyncio.create_task(said.wait()), asyncio.create_task(done.wait())]
                try:
                    while not (await asyncio.wait(waits, timeout=doorbells.REDIS_CHECK_S,
                                                  return_when=asyncio.FIRST_COMPLETED))[0]:
                        if doorbells.redis_lost():  # without Redis, read the database every second
                            break
                finally:  # also when the watch ends or changes
                    for waiting in waits:
                        waiting.cancel()

    # --- presence ---

    async def _presence_set(self, value: dict):
        ticket, typing = value.get("ticket"), value.get("typing", False)
        if not (ticket is None or isinstance(ticket, str) and len(ticket) <= 64) or not isinstance(typing, bool):
            return await self._refuse("presence is {\"ticket\": <id or null>, \"typing\": true|false}")
        if (ticket, typing) != (self.presence["ticket"], self.presence["typing"]):  # only a change is news
            self.presence = {"user": self.username, "ticket": ticket, "typing": typing}
            await self._presence_publish()

    async def _presence_publish(self):
        await asyncio.to_thread(_presence_store, self.tenant_id, {self.socket_id: self.presence}, ring=True)


async def _forever(work) -> None:
    """Run `work()` again a second after it fails (the database or Redis away): consoles keep hearing."""
    while True:
        try:
            await work()
        except Exception:
            log.exception("console room: %s failed; again in 1 s", work.__name__)
            await asyncio.sleep(1)


def _presence_store(tenant_id: int, states: dict[str, dict], *, ring: bool) -> None:
    """Presence is a courtesy: without Redis a console goes on without it (the desk reads the database)."""
    now = time.time()
    try:
        core_redis.client().hset(_presence_key(tenant_id), mapping={
            socket_id: json.dumps({**state, "ts": now}) for socket_id, state in states.items()})
    except redis.RedisError as e:
        log.warning("presence not stored: %s", e)
        return
    if ring:
        doorbell_ring(tenant_id, PRESENCE)


def _presence_leave(tenant_id: int, socket_id: str) -> None:
    try:
        core_redis.client().hdel(_presence_key(tenant_id), socket_id)
    except redis.RedisError as e:  # the entry drops out of the list after PRESENCE_TTL_S
        log.warning("presence not removed: %s", e)
        return
    doorbell_ring(tenant_id, PRESENCE)


def _presence_all(tenant_id: int) -> str:
    """The `presence` message: everyone online, by socket (encoded once, for every console)."""
    now, alive = time.time(), {}
    for socket_id, raw in sorted(core_redis.client().hgetall(_presence_key(tenant_id)).items()):
        state = json.loads(raw)
        if now - state.pop("ts") < PRESENCE_TTL_S:
            alive[socket_id.decode()] = state
    return json.dumps({"kind": "presence", "all": alive})


class _Room:
    """The consoles of one tenant in this process, and what they share: one doorbell subscription; each
    desk event as its doorbell carried it (a database read only for what a doorbell did not carry), framed
    once and written straight to every console's socket (wire.py); one read of the presence list when it
    changes; and one renewal, every third of a lease, of the leased claims and presence entries of all."""

    rooms: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Room]]" = weakref.WeakKeyDictionary()

    def __init__(self, tenant_id: int):
        self.tenant_id, self.consoles, self.seq = tenant_id, set(), 0
        self.ready = asyncio.Event()
        self.tasks = [asyncio.create_task(_forever(f)) for f in (self._desk, self._presence, self._renew)]

    @classmethod
    async def join(cls, console: ConsoleConsumer) -> "_Room":
        rooms = cls.rooms.setdefault(asyncio.get_running_loop(), {})
        room = rooms.get(console.tenant_id) or rooms.setdefault(console.tenant_id, cls(console.tenant_id))
        room.consoles.add(console)
        await room.ready.wait()  # listening: what commits from now on rings
        return room

    async def leave(self, console: ConsoleConsumer) -> None:
        self.consoles.discard(console)
        if not self.consoles and self.rooms.get(asyncio.get_running_loop(), {}).get(self.tenant_id) is self:
            del self.rooms[asyncio.get_running_loop()][self.tenant_id]
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _desk(self):
        async with doorbells.listen(self.tenant_id, services.DESK) as bell:
            self.seq = await doorbells.db_read(lambda: services.desk_seq(tenant_id=self.tenant_id))
            self.ready.set()
            while True:
                rang = await bell.wait(doorbells.REDIS_CHECK_S)
                if not rang and not doorbells.redis_lost():
                    continue  # (without Redis, read the database every second)
                messages = _carried(bell.heard(), self.seq)
                if messages is None:
                    messages = await doorbells.db_read(_desk_messages, self.tenant_id, self.seq)
                for seq, text in messages:
                    self.seq = seq
                    data = wire.frame(text)
                    for console in list(self.consoles):
                        await console.deliver(seq, text, data)

    async def _presence(self):
        last = None
        async with doorbells.listen(self.tenant_id, PRESENCE) as bell:
            while True:
                await bell.wait()
                await asyncio.sleep(PRESENCE_COALESCE_S)  # the changes that come with it: one list for all
                text = await asyncio.to_thread(_presence_all, self.tenant_id)
                if text != last:
                    for console in list(self.consoles):
                        await console.send(text_data=text)
                    last = text

    async def _renew(self):
        while True:
            await asyncio.sleep(settings.HIL_CLAIM_LEASE_S / 3)
            user_ids = {c.member.user_id for c in self.consoles}
            await doorbells.db_read(lambda: services.tickets_renew(tenant_id=self.tenant_id, user_ids=user_ids))
            await asyncio.to_thread(_presence_store, self.tenant_id, {c.socket_id: c.presence for c in self.consoles},
                                    ring=False)


def _desk_messages(tenant_id: int, after: int) -> list[tuple[int, str]]:
    """The `desk` messages after `after`, encoded once for every console waiting there."""
    return [(e["seq"], services.desk_message(e)) for e in services.desk_after(tenant_id=tenant_id, after=after)]


def _carried(heard: list[bytes | None], after: int) -> list[tuple[int, str]] | None:
    """The desk messages that the doorbells heard carried, if they are all the ones after `after`;
    None where one is missing (a doorbell lost, too long a message, the hub subscribing again)."""
    if not heard:
        return None
    carried = {}
    for data in heard:
        seq, _, text = (data or b"").decode().partition(" ")
        if not text:
            return None
        carried[int(seq)] = text
    messages = sorted((seq, text) for seq, text in carried.items() if seq > after)
    if [seq for seq, _ in messages] != list(range(after + 1, after + 1 + len(messages))):
        return None
    return messages


def _messages(conversation_id, after: int) -> list[dict]:
    """The conversation's messages after the first `after` (they are posted under its lock, in order)."""
    messages = Message.objects.filter(conversation_id=conversation_id).select_related("author").order_by(
        "created_at", "id")[after:]
    return [{"id": str(m.id), "role": m.role, "text": m.text, "author": m.author.get_username() if m.author else None,
             "created_at": m.created_at.isoformat()} for m in messages]
