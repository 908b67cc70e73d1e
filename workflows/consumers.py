"""The WebSocket for one run's events: `/ws/runs/<id>/?after=N`.

Authenticate with `Authorization: Bearer <token>`, or, from a browser (which cannot set
headers on a WebSocket), with the subprotocols `bearer, <token>`: never in the URL, which
servers log. The server sends each event envelope after `after`, then each new one as it is
committed. Send `{"after": N}` at any time to be sent everything after N again.

While the server has lost Redis it cannot hear of new events: it sends what the database holds, then
closes with 4503 (try again later), and the client connects again with `?after=<last seq>`."""

import asyncio
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.auth import authenticate_key, token_from_header

from . import doorbells
from .events import events_after
from .models import Run

# 1013 ("try again later") is what the WebSocket spec has, but Daphne (autobahn) sends only 1000 and
# 3000-4999: 4000 + the HTTP status, like 4404, and 503 is what the API answers while a server is away.
CLOSE_TRY_AGAIN = 4503


def is_seq(value) -> bool:
    """A sequence number a client sent: a non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class JsonConsumer(AsyncJsonWebsocketConsumer):
    """A JSON socket whose malformed messages reach `receive_json` as None, to be refused there in words."""

    @classmethod
    async def decode_json(cls, text_data):
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None


class RunEventsConsumer(JsonConsumer):
    redis_check_s = doorbells.REDIS_CHECK_S

    async def connect(self):
        query = parse_qs(self.scope["query_string"].decode())
        headers = dict(self.scope["headers"])
        subprotocols = self.scope.get("subprotocols") or []
        from_protocol = subprotocols[1] if len(subprotocols) == 2 and subprotocols[0] == "bearer" else None
        raw = token_from_header(headers.get(b"authorization", b"").decode()) or from_protocol
        self.run = await doorbells.db_read(self._run_for, raw, self.scope["url_route"]["kwargs"]["run_id"])
        if self.run is None:
            await self.close(code=4404)  # no such run for this token: the same answer as the API's 404
            return
        try:
            self.sent = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.sent = 0
        self.lock = asyncio.Lock()
        await self.accept(subprotocol="bearer" if from_protocol else None)
        self.follower = asyncio.create_task(self._follow())

    @staticmethod
    def _run_for(raw, run_id):
        auth = authenticate_key(raw) if raw else None
        if auth is None:
            return None
        return Run.objects.filter(id=run_id, tenant_id=auth[1].tenant_id).first()

    async def _follow(self):
        async with doorbells.listen(self.run.tenant_id, self.run.id) as bell:
            while True:  # listening before the first read, so that no event falls between the two
                await self._send_new()
                while not await bell.wait(self.redis_check_s):
                    if doorbells.redis_lost():  # no doorbell can reach us: send what is in the database, then go
                        await self._send_new()
                        await self.close(code=CLOSE_TRY_AGAIN)
                        return

    async def _send_new(self):
        async with self.lock:
            for envelope in await doorbells.db_read(events_after, self.run, self.sent):
                await self.send_json(envelope)
                self.sent = envelope["seq"]

    async def receive_json(self, content, **kwargs):
        after = content.get("after") if isinstance(content, dict) else None
        if not is_seq(after):
            await self.send_json({"error": "send {\"after\": <seq>} with a non-negative integer"})
            return
        async with self.lock:
            self.sent = after
        await self._send_new()

    async def disconnect(self, code):
        if getattr(self, "follower", None):
            self.follower.cancel()
            await asyncio.wait([self.follower])  # it has stopped listening
