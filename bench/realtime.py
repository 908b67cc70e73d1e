"""Console realtime benchmark: 500 console WebSockets of one tenant on one Daphne process.

    python bench/realtime.py [--clients 500] [--events 100] [--handovers 20]   # DATABASE_URL, REDIS_URL set
    make bench-realtime                                                         # with the embedded services

Starts Daphne (production settings) and a Celery worker on free ports and a queue of its own, signs
`--clients` console sockets in (50 agents, each with a verified session, several tabs each), then:
1. desk events: appends `--events` desk events, 10 a second, and times each from its commit to its
   arrival at every client (target: p95 under 20 ms);
2. handovers: posts `--handovers` customer messages that the demo workflow hands over; the worker runs
   them, and each ticket's arrival at the last of the clients is timed from the handover's commit
   (target: p95 under 100 ms);
3. the peer: the same fan-out through Channels' own group send (channels_redis), to as many sockets of a
   minimal Channels consumer (bench/channels_peer.py) on a Daphne of its own (published anchor: 26 to 38 ms).
Checks that every client got every desk event once, in order. It never fails on a timing.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

from bench import production  # noqa: E402, F401  (Django set up as production runs it)

import websockets  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django_otp import DEVICE_ID_SESSION_KEY  # noqa: E402

from accounts.models import Role, Tenant  # noqa: E402
from accounts.services import membership_set, totp_demo_device, user_ensure  # noqa: E402
from approvals.services import desk_append  # noqa: E402
from bench import channels_peer  # noqa: E402
from hil_project.launcher import DAPHNE, _free_port  # noqa: E402
from workflows import services  # noqa: E402

TENANT = "bench-realtime"
AGENTS = 50


def setup(clients: int) -> tuple[Tenant, list[str]]:
    """The tenant, its demo workflow and a verified session cookie per client (AGENTS agents, many tabs)."""
    Tenant.objects.filter(slug=TENANT).delete()
    tenant = Tenant.objects.create(slug=TENANT, name="Realtime bench")
    workflow = services.workflow_create(tenant=tenant, slug="support")
    spec = (REPO / "workflows" / "demo" / "customer_support.yaml").read_text()
    services.workflow_version_publish(version=services.workflow_version_create(workflow=workflow, spec_yaml=spec))
    sessions = []
    for n in range(AGENTS):
        user = user_ensure(username=f"bench-agent-{n}")
        membership_set(tenant=tenant, user=user, role=Role.AGENT)
        session = SessionStore()
        session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[-1],
                        HASH_SESSION_KEY: user.get_session_auth_hash(),
                        DEVICE_ID_SESSION_KEY: totp_demo_device(user=user).persistent_id})
        session.create()
        sessions.append(session.session_key)
    return tenant, [sessions[n % AGENTS] for n in range(clients)]


def start(args: list[str], log: str) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


class Client:
    def __init__(self):
        self.desk: list[tuple[int, str, float]] = []  # seq, type, ms from commit to arrival
        self.peer: list[float] = []

    async def console(self, base: str, session: str, ready: asyncio.Event):
        async with websockets.connect(f"{base.replace('http', 'ws')}/ws/console/", origin=base, max_queue=None,
                                      additional_headers={"Cookie": f"sessionid={session}"}) as ws:
            ready.set()
            async for raw in ws:
                if raw.startswith('{"kind": "presence"'):  # who is online: not timed
                    continue
                now, message = time.time(), json.loads(raw)
                if message["kind"] == "desk":
                    sent = datetime.fromisoformat(message["ts"]).timestamp()
                    self.desk.append((message["seq"], message["type"], (now - sent) * 1000))

    async def peer_socket(self, base: str, ready: asyncio.Event):
        async with websockets.connect(f"{base.replace('http', 'ws')}/ws/peer/", max_queue=None) as ws:
            ready.set()
            async for raw in ws:
                self.peer.append((time.time() - json.loads(raw)["t"]) * 1000)


def desk_tick(tenant_id: int) -> None:
    with transaction.atomic():
        desk_append(tenant_id=tenant_id, type_="bench.tick", data={})
    connection.close()  # one thread of many: keep no connection of the bench's own


def customer_asks_for_a_person(tenant: Tenant, n: int) -> None:
    conversation = services.conversation_start(tenant=tenant, workflow_slug="support")
    services.message_post(conversation=conversation, text="Can I speak to a person?", turn_id=f"t{n}")
    connection.close()


async def until(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def open_sockets(sockets) -> list[asyncio.Task]:
    """Start each socket (a coroutine taking its `ready` event), 50 at a time."""
    tasks, readies = [], []
    for n, run_socket in enumerate(sockets):
        readies.append(asyncio.Event())
        tasks.append(asyncio.create_task(run_socket(readies[-1])))
        if n % 50 == 49:
            await asyncio.gather(*(r.wait() for r in readies[-50:]))
    await asyncio.gather(*(r.wait() for r in readies))
    return tasks


async def close_sockets(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def measure(args, tenant: Tenant, sessions: list[str], base: str, peer_base: str):
    clients = [Client() for _ in sessions]
    started = time.monotonic()
    tasks = await open_sockets([lambda ready, c=c, s=s: c.console(base, s, ready) for c, s in zip(clients, sessions)])
    print(f"{len(clients)} console sockets of {AGENTS} agents signed in in {time.monotonic() - started:.1f} s")
    await asyncio.sleep(1)

    for _ in range(args.events):  # 1. desk events
        await asyncio.to_thread(desk_tick, tenant.id)
        await asyncio.sleep(0.1)
    await until(lambda: all(len(c.desk) >= args.events for c in clients))

    for n in range(args.handovers):  # 2. handovers, through the worker
        await asyncio.to_thread(customer_asks_for_a_person, tenant, n)
        await asyncio.sleep(0.5)
    await until(lambda: all(len(c.desk) >= args.events + args.handovers for c in clients))

    await close_sockets(tasks)

    tasks = await open_sockets([lambda ready, c=c: c.peer_socket(peer_base, ready) for c in clients])  # 3. the peer
    await asyncio.sleep(1)
    layer = get_channel_layer()
    for _ in range(args.events):
        await layer.group_send(channels_peer.GROUP, {"type": "bench.tick", "t": time.time()})
        await asyncio.sleep(0.1)
    await until(lambda: all(len(c.peer) >= args.events for c in clients))
    await close_sockets(tasks)
    return clients


def wait_listening(port: int, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def percentiles(values: list[float]) -> str:
    if not values:
        return "none arrived"
    ms = sorted(values)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    return f"p50 {statistics.median(ms):6.1f} ms, p95 {p95:6.1f} ms, max {ms[-1]:6.1f} ms"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--handovers", type=int, default=20)
    args = parser.parse_args()

    tenant, sessions = setup(args.clients)
    connection.close()
    port, peer_port, logs = _free_port(), _free_port(), Path(os.environ.get("TMPDIR", "/tmp"))
    base, peer_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    daphne = start([sys.executable, "-c", DAPHNE, "-b", "127.0.0.1", "-p", str(port), "hil_project.asgi:application"],
                   str(logs / "bench-realtime-daphne.log"))
    peer = start([sys.executable, "-c", DAPHNE, "-b", "127.0.0.1", "-p", str(peer_port),
                  "bench.channels_peer:application"], str(logs / "bench-realtime-peer.log"))
    worker = start([sys.executable, "-m", "celery", "-A", "hil_project", "worker", "-Q", os.environ["HIL_QUEUE"],
                    "-c", "1", "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                   str(logs / "bench-realtime-worker.log"))
    try:
        for port_ in (port, peer_port):
            wait_listening(port_)
        clients = asyncio.run(measure(args, tenant, sessions, base, peer_base))
    finally:
        for process in (daphne, peer, worker):
            process.terminate()
            process.wait(30)
        Tenant.objects.filter(slug=TENANT).delete()

    ticks = [ms for c in clients for _, type_, ms in c.desk if type_ == "bench.tick"]
    handovers: dict[int, list[float]] = {}
    for c in clients:
        for seq, type_, ms in c.desk:
            if type_ == "ticket.opened":
                handovers.setdefault(seq, []).append(ms)
    complete = sum(1 for c in clients if [s for s, _, _ in c.desk] == list(range(1, len(c.desk) + 1))
                   and len(c.desk) == args.events + args.handovers)
    peer = [ms for c in clients for ms in c.peer]
    print(f"every desk event once and in order: {complete} of {len(clients)} clients")
    print(f"desk event, commit → each of {len(clients)} clients ({len(ticks)} deliveries): {percentiles(ticks)}"
          f"  (target p95 < 20 ms)")
    print(f"handover, commit → the last of the clients ({len(handovers)} handovers): "
          f"{percentiles([max(v) for v in handovers.values()])}  (target p95 < 100 ms)")
    print(f"peer, Channels group send → each of {len(clients)} sockets ({len(peer)} deliveries): {percentiles(peer)}"
          f"  (published anchor: 26-38 ms)")
    if ticks and peer:
        hil_p95, peer_p95 = (sorted(v)[max(0, int(len(v) * 0.95) - 1)] for v in (ticks, peer))
        print(f"p95 ratio, Channels group send / HIL desk doorbell: {peer_p95 / hil_p95:.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
