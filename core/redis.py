"""This process's Redis client for HIL's own keys and messages (model budgets, breakers, Retry-After marks,
run doorbells, the worker heartbeat). Celery and Channels keep their own connections."""

import functools

import redis
from django.conf import settings

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
    """A Lua script, sent to Redis once and then called by its hash."""
    return client().register_script(lua)
