"""This process's Redis client for HIL's own keys and messages (model budgets, breakers, Retry-After marks,
run doorbells, the worker heartbeat). Celery and Channels keep their own connections."""

import functools
import hashlib
import logging
import os
import threading

import hiredis
import redis
from django.conf import settings
from redis.exceptions import ConnectionError, NoScriptError

log = logging.getLogger(__name__)

TIMEOUT_S = 2  # a hung Redis fails the command instead of holding its worker

# The start of a Lua script that needs the time: Redis's clock in ms, so that workers with skewed clocks agree.
LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


@functools.cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


@functools.cache
def script(lua: str):
    """A Lua script, called as `script(lua)(keys=[...], args=[...])`: by its hash (EVALSHA; loaded when Redis
    does not know it) on this thread's own connection, which costs half what a command through redis-py's pool
    and its instrumentation costs (the model router runs two scripts per call: bench/router.py).

    `wait=False` sends it and returns None: its reply is read by `reply()`, else before this thread's next script
    (and `caught_up`), a failure then logged. Redis runs it as soon as it arrives: the caller does other work
    meanwhile (the router builds a call's row while its reservation is made), or none at all with the reply for a
    script whose reply nobody needs (a model call's settlement). A script may run twice (sent again when the
    connection dropped): each here is written to tolerate it."""
    sha = hashlib.sha1(lua.encode()).hexdigest()

    def run(*, keys=(), args=(), wait: bool = True):
        connection = _connection()
        caught_up()
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        packed = [hiredis.pack_command(command)]  # as redis-py packs it, without its walk over the arguments
        try:
            connection.send_packed_command(packed)
        except ConnectionError:  # it had dropped while idle
            connection.disconnect()
            connection.send_packed_command(packed)
        if not wait:
            _own.pending = (command, lua)
            return None
        return _reply(connection, command, lua)
    return run


_own = threading.local()  # this thread's connection, and the script it sent without waiting for the reply


def _connection() -> redis.Connection:
    connection = getattr(_own, "connection", None)
    if connection is None or connection.pid != os.getpid():  # a forked child makes its own
        pool = client().connection_pool
        connection = _own.connection = pool.connection_class(**pool.connection_kwargs)
        _own.pending = None
    return connection


def _reply(connection: redis.Connection, command: tuple, lua: str):
    """The reply to `command`, sent already. When Redis did not know the script (a new or restarted Redis) or the
    connection dropped (the reply lost with it), the script is loaded and sent again, on a new connection if it
    must: twice at most."""
    for retry in range(3):
        try:
            if retry:
                connection.send_command("SCRIPT", "LOAD", lua)
                connection.read_response()
                connection.send_command(*command)
            return connection.read_response()
        except (NoScriptError, ConnectionError):
            if retry == 2:
                raise


def reply():
    """The reply to the script this thread sent without waiting: its result, or its failure raised."""
    command, lua = _own.pending
    _own.pending = None
    return _reply(_own.connection, command, lua)


def caught_up() -> None:
    """Wait for the script this thread sent without waiting: once this returns, Redis has run it (a reader on
    another connection sees its writes)."""
    if getattr(_own, "pending", None):
        try:
            reply()
        except redis.RedisError:
            log.exception("a Redis script sent without waiting failed")
