"""Celery's broker transport: kombu's Redis transport with one fault mended.

When Redis goes away while a task is unacknowledged (every task is acks_late), Celery 5.7 collects the
lost connection, which detaches its transport, and then closes it. Closing the default channel restores
the unacknowledged messages through that detached transport and raises AttributeError, which stops the
worker ("Unrecoverable error"). Raised as a connection error instead, the close carries on and the worker
reconnects once Redis is back; a run whose message was not restored is sent again by the sweeper."""

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
