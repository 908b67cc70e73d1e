"""One Redis subscriber per event loop that fans run doorbells out to every SSE and WebSocket client on it.

    async with doorbells.listen(tenant_id, run_id) as bell:
        ...read the database...
        rang = await bell.wait(timeout)

A bell is set by a doorbell of its own run and tenant, and by the hub (re)subscribing: a doorbell
rung while nobody listened is in the database, so a client listens first, then reads, then waits.
The hub's Redis connection opens with the first listener and closes when the last one leaves."""

import asyncio
import logging
import threading
import weakref
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import redis
import redis.asyncio
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from .events import doorbell_channel

log = logging.getLogger(__name__)
CLIENT_NAME = "hil-doorbells"
PATTERN = doorbell_channel("*", "*")  # every run of every tenant: one subscription, never changed
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5  # the wait before connecting again doubles up to the cap
HEARD_MAX = 100  # what a bell keeps of the doorbells it heard (a listener that falls behind reads the database)


class Bell:
    def __init__(self):
        self._rang = asyncio.Event()
        self._heard: deque[bytes | None] = deque(maxlen=HEARD_MAX)

    def ring(self, data: bytes | None = None) -> None:
        self._heard.append(data)
        self._rang.set()

    def heard(self) -> list[bytes | None]:
        """What the doorbells carried since the last call, oldest first (None: a ring that carried nothing,
        the hub subscribing again); at most the last HEARD_MAX."""
        heard = list(self._heard)
        self._heard.clear()
        return heard

    async def wait(self, timeout: float | None = None) -> bool:
        """True once rung since the last wait returned True (at once if it already was); False after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._rang.wait()
        except TimeoutError:
            return False
        self._rang.clear()
        return True


class _Hub:
    def __init__(self):
        self.bells: dict[str, set[Bell]] = defaultdict(set)
        self.reader: asyncio.Task | None = None
        self.lost = False  # Redis could not be reached: no doorbell reaches a bell until it is back

    def add(self, channel: str, bell: Bell) -> None:
        self.bells[channel].add(bell)
        if self.reader is None:
            self.lost = False  # until this reader finds otherwise
            self.reader = asyncio.create_task(self._read(), name=CLIENT_NAME)

    async def remove(self, channel: str, bell: Bell) -> None:
        self.bells[channel].discard(bell)
        if not self.bells[channel]:
            del self.bells[channel]
        if not self.bells and self.reader is not None:
            reader, self.reader = self.reader, None
            reader.cancel()
            await asyncio.wait([reader])  # its connection is closed before the last listener has left

    def ring_all(self) -> None:
        for bells in self.bells.values():
            for bell in bells:
                bell.ring()

    async def _read(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            client = redis.asyncio.Redis.from_url(settings.REDIS_URL, client_name=CLIENT_NAME)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(PATTERN)
                    async for message in pubsub.listen():
                        if message["type"] == "psubscribe":  # doorbells rung before this are in the database only
                            backoff, self.lost = BACKOFF_MIN_S, False
                            self.ring_all()
                        elif message["type"] == "pmessage":
                            for bell in self.bells.get(message["channel"].decode(), ()):
                                bell.ring(message["data"])
            except (redis.RedisError, OSError) as e:
                self.lost = True
                log.warning("doorbells: Redis lost (%s), connecting again in %.1fs", e, backoff)
            finally:
                await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()
_reads: ThreadPoolExecutor | None = None
_reads_lock = threading.Lock()


async def db_read(read, *args):
    """A client's database read on a doorbell, on this process's few reader threads, each keeping a
    connection of its own: a doorbell heard by a thousand clients uses at most HIL_STREAM_DB_READS
    connections, and no read waits for one to open."""
    global _reads
    with _reads_lock:
        if _reads is None:
            _reads = ThreadPoolExecutor(settings.HIL_STREAM_DB_READS, thread_name_prefix="hil-stream-reads")
    return await asyncio.get_running_loop().run_in_executor(_reads, _read, read, args)


def _read(read, args):
    try:
        return read(*args)
    except (OperationalError, InterfaceError):  # Postgres cut the kept connection (a restart): once more, anew
        connection.close()
        return read(*args)


def db_reads_close() -> None:
    """Close every reader thread's connection (tests, before their database is flushed)."""
    if _reads is None:
        return
    barrier = threading.Barrier(settings.HIL_STREAM_DB_READS)  # one close per thread: each waits for the others

    def close():
        barrier.wait(timeout=30)
        connection.close()

    for future in [_reads.submit(close) for _ in range(settings.HIL_STREAM_DB_READS)]:
        future.result()


REDIS_CHECK_S = 1.0  # how soon a waiting stream or socket notices that Redis is lost (an attribute read)


def redis_lost() -> bool:
    """Whether this event loop's subscriber has lost Redis (and not subscribed again since)."""
    hub = _hubs.get(asyncio.get_running_loop())
    return hub is not None and hub.lost


@asynccontextmanager
async def listen(tenant_id: int, stream):
    """A bell rung by each doorbell of this stream (a run's id; see events.doorbell_channel), on this
    event loop's shared subscriber."""
    hub = _hubs.setdefault(asyncio.get_running_loop(), _Hub())
    channel, bell = doorbell_channel(tenant_id, stream), Bell()
    hub.add(channel, bell)
    try:
        yield bell
    finally:
        await hub.remove(channel, bell)
