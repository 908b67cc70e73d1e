"""The console's WebSocket, `/ws/console/?after=N`: one per open console tab, signed in by its session
(past the second factor) and working in the session's tenant.

Server to client, each message a JSON object with a `kind`:
- `desk`: a desk event (ticket opened, claimed, released, closed; approval requested, decided) with its
  `seq`, every one after `after`, then each new one as it commits. A client that reconnects with the last
  seq it saw misses none and gets none twice.
- `run`: an event of the run the client watches (`{"watch": {"run": id, "after": n}}`), same rules.
- `messages`: the watched conversation's messages after the last sent (`{"watch": {"conversation": id}}`).
- `presence`: who is online and what they look at or type in (`{"presence": {"ticket": id, "typing": bool}}`).
- `error`: a message the server refused, and why.

Membership is checked on connect and again on every message: a member removed, or a session signed out,
is closed with 4403. While the socket is open, the member's leased ticket claims are renewed."""

import asyncio
import json
import time
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.auth import session_member
from core import redis as core_redis
from workflows import doorbells
from workflows.events import conversation_stream, events_after
from workflows.models import Conversation, Message, Run

from . import services

CLOSE_FORBIDDEN = 4403
PRESENCE_TTL_S = 90  # an entry a dead process left behind drops out of the list after this


def _presence_key(tenant_id: int) -> str:
    return f"hil:t{tenant_id}:presence"


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.member = await doorbells.db_read(session_member, self.scope["user"], self.scope["session"])
        if self.member is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.tenant_id, self.username = self.member.tenant_id, self.scope["user"].get_username()
        self.group = f"console.t{self.tenant_id}"
        try:
            self.sent = max(0, int(parse_qs(self.scope["query_string"].decode()).get("after", ["0"])[0]))
        except ValueError:
            self.sent = 0
        self.lock, self.watcher, self.watching = asyncio.Lock(), None, {}
        self.presence = {"user": self.username, "ticket": None, "typing": False}
        await self.accept()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self._presence_publish()
        await self.send_json({"kind": "presence", "all": await self._presence_all()})
        self.tasks = [asyncio.create_task(self._follow_desk()), asyncio.create_task(self._keep_alive())]

    async def disconnect(self, code):
        if getattr(self, "tasks", None) is None:
            return
        for task in [*self.tasks, *([self.watcher] if self.watcher else [])]:
            task.cancel()
        await asyncio.gather(*self.tasks, *([self.watcher] if self.watcher else []), return_exceptions=True)
        await asyncio.to_thread(core_redis.client().hdel, _presence_key(self.tenant_id), self.channel_name)
        await self.channel_layer.group_send(self.group, {"type": "presence.changed", "channel": self.channel_name,
                                                         "state": None})
        await self.channel_layer.group_discard(self.group, self.channel_name)

    # --- the desk: the queue and the inbox ---

    async def _follow_desk(self):
        async with doorbells.listen(self.tenant_id, services.DESK) as bell:
            since = time.monotonic()  # listening before the first read, so that no event falls between the two
            while True:
                await self._send_desk(since)
                rang = await bell.wait(doorbells.REDIS_CHECK_S)
                while not rang and not doorbells.redis_lost():  # without Redis, read the database every second
                    rang = await bell.wait(doorbells.REDIS_CHECK_S)
                since = bell.rang_at if rang else time.monotonic()

    async def _send_desk(self, since: float | None = None):
        async with self.lock:
            events = await _desk_read(self.tenant_id, self.sent, time.monotonic() if since is None else since)
            for envelope in events:
                await self.send_json({"kind": "desk", **envelope})
                self.sent = envelope["seq"]

    async def _keep_alive(self):
        """Renew the member's leased claims and their presence while the console is open."""
        while True:
            await doorbells.db_read(lambda: services.tickets_renew(tenant_id=self.tenant_id, user_id=self.member.user_id))
            await self._presence_store()
            await asyncio.sleep(settings.HIL_CLAIM_LEASE_S / 3)

    # --- messages from the client ---

    @classmethod
    async def decode_json(cls, text_data):
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None  # refused in receive_json like any other bad message

    async def receive_json(self, content, **kwargs):
        member = await doorbells.db_read(session_member, self.scope["user"], self.scope["session"])
        if member is None or member.tenant_id != self.tenant_id:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not isinstance(content, dict) or len(content) != 1:
            return await self._refuse('send one of {"after": seq}, {"watch": {...}}, {"presence": {...}}')
        (verb, value), = content.items()
        if verb == "after" and _count(value):
            async with self.lock:
                self.sent = value
            await self._send_desk()
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
        if not _count(after):
            return await self._refuse("'after' is a non-negative integer")
        found = await doorbells.db_read(self._watchable, conversation_id, run_id)
        if found is None:
            return await self._refuse("no such conversation or run in this tenant")
        if self.watcher:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        self.watching = {"conversation": found[0], "run": found[1], "after": after, "messages": 0}
        self.watcher = asyncio.create_task(self._follow_watched())

    def _watchable(self, conversation_id, run_id):
        try:
            conversation = Conversation.objects.filter(tenant_id=self.tenant_id, pk=conversation_id).first()
            run = run_id and Run.objects.filter(tenant_id=self.tenant_id, pk=run_id, conversation=conversation).first()
        except ValidationError:  # not a UUID
            return None
        if conversation is None or (run_id and run is None):
            return None
        return conversation, run or None

    async def _follow_watched(self):
        w = self.watching
        async with doorbells.listen(self.tenant_id, conversation_stream(w["conversation"].pk)) as said, \
                doorbells.listen(self.tenant_id, w["run"].pk if w["run"] else "-") as done:
            while True:
                if w["run"]:
                    for envelope in await doorbells.db_read(events_after, w["run"], w["after"]):
                        await self.send_json({"kind": "run", "run": str(w["run"].pk), **envelope})
                        w["after"] = envelope["seq"]
                messages = await doorbells.db_read(_messages, w["conversation"].pk)
                if len(messages) > w["messages"]:
                    await self.send_json({"kind": "messages", "conversation": str(w["conversation"].pk),
                                          "messages": messages[w["messages"]:], "from": w["messages"]})
                    w["messages"] = len(messages)
                waits = [asyncio.create_task(said.wait()), asyncio.create_task(done.wait())]
                await asyncio.wait(waits, timeout=doorbells.REDIS_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()

    # --- presence ---

    async def _presence_set(self, value: dict):
        ticket, typing = value.get("ticket"), value.get("typing", False)
        if not (ticket is None or isinstance(ticket, str) and len(ticket) <= 64) or not isinstance(typing, bool):
            return await self._refuse("presence is {\"ticket\": <id or null>, \"typing\": true|false}")
        self.presence = {"user": self.username, "ticket": ticket, "typing": typing}
        await self._presence_publish()

    async def _presence_store(self):
        entry = json.dumps({**self.presence, "ts": time.time()})
        await asyncio.to_thread(core_redis.client().hset, _presence_key(self.tenant_id), self.channel_name, entry)

    async def _presence_publish(self):
        await self._presence_store()
        await self.channel_layer.group_send(self.group, {"type": "presence.changed", "channel": self.channel_name,
                                                         "state": self.presence})

    async def _presence_all(self) -> dict:
        entries = await asyncio.to_thread(core_redis.client().hgetall, _presence_key(self.tenant_id))
        now, alive = time.time(), {}
        for channel, raw in entries.items():
            state = json.loads(raw)
            if now - state.pop("ts") < PRESENCE_TTL_S:
                alive[channel.decode()] = state
        return alive

    async def presence_changed(self, event):
        if event["channel"] != self.channel_name:
            await self.send_json({"kind": "presence", "channel": event["channel"], "state": event["state"]})


_desk_reads: dict[tuple, tuple[float, asyncio.Future]] = {}


async def _desk_read(tenant_id: int, after: int, since: float) -> list[dict]:
    """The tenant's desk events after `after`, read once for all the consoles of this process that wait at
    that seq: a doorbell heard by 500 consoles is one query, not 500. Only a read that started at or
    after `since` (when the doorbell rang) is shared: an older one may have missed the rung event."""
    key = (asyncio.get_running_loop(), tenant_id, after)
    entry = _desk_reads.get(key)
    if entry is None or entry[0] < since:
        read = asyncio.ensure_future(doorbells.db_read(lambda: services.desk_after(tenant_id=tenant_id, after=after)))
        entry = _desk_reads[key] = (time.monotonic(), read)

        def forget(_, entry=entry):
            if _desk_reads.get(key) is entry:
                del _desk_reads[key]

        read.add_done_callback(forget)
    return await asyncio.shield(entry[1])  # one console leaving does not cancel the others' read


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _messages(conversation_id) -> list[dict]:
    return [{"id": str(m.id), "role": m.role, "text": m.text, "author": m.author.get_username() if m.author else None,
             "created_at": m.created_at.isoformat()}
            for m in Message.objects.filter(conversation_id=conversation_id).select_related("author").order_by(
                "created_at", "id")]
