"""bench/realtime.py's peer, served by a Daphne of its own: Channels' own fan-out, a channels_redis group
send to every socket of one group, on the same Redis."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "bench-peer"


class GroupConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_tick(self, event):
        await self.send_json({"t": event["t"]})


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws/peer/", GroupConsumer.as_asgi())])})
