"""Console realtime benchmark: 500 console WebSockets of one tenant on one Daphne process.

    python bench/realtime.py [--clients 500] [--events 100] [--handovers 20]   # DATABASE_URL, REDIS_URL set
    make bench-realtime                                                         # with the embedded services

Starts Daphne (production settings) and a Celery worker on free ports and a queue of its own, signs
`--clients` console sockets in (50 agents, each with a verified session, several tabs each), then:
1. desk events: appends `--events` desk events, 10 a second, and times each from its commit to its
   arrival at every client (target: p95 under 20 ms);
2. handovers: posts `--handovers` customer messages that the demo workflow hands over; the worker runs
   them, and each ticket's arrival at the last of the clients is timed from the desk event's timestamp,
   taken before its insert and commit (target: p95 under 100 ms);
3. the peer: the same fan-out through Channels' own group send (channels_redis), to as many sockets of a
   minimal Channels consumer (bench/channels_peer.py) on a Daphne of its own (published anchor: 26 to 38 ms).
The clients are picows sockets in this process, each message stamped as its frame is read. Checks that
every client got every desk event once, in order. It never fails on a timing.
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

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # noqa: E402
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
    """One console tab's messages, each stamped as its frame is read and parsed after the run. picows
    parses the frames in C, as a browser's WebSocket does: one Python process reading 500 sockets through
    a pure-Python client would time its own parsing as much as the server's delivery."""

    def __init__(self):
        self.heard: list[tuple[float, str]] = []  # desk messages (who is online is not timed), with their arrival
        self.peer: list[float] = []

    def console(self, now: float, raw: str) -> None:
        if raw.startswith('{"kind": "desk"'):
            self.heard.append((now, raw))

    def desk(self) -> list[tuple[int, str, float, float]]:
        """seq, type, arrival and the event's time (epoch s) of each desk event heard."""
        return [(m["seq"], m["type"], now, datetime.fromisoformat(m["ts"]).timestamp())
                for now, m in ((now, json.loads(raw)) for now, raw in self.heard)]

    def peer_socket(self, now: float, raw: str) -> None:
        self.peer.append((now - json.loads(raw)["t"]) * 1000)


class Socket(WSListener):
    def __init__(self, heard):
        self.heard = heard

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.heard(time.time(), frame.get_payload_as_utf8_text())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


def desk_tick(tenant_id: int, committed: dict[int, float]) -> None:
    """Append a desk event; `committed` gets the time its commit returned (before its doorbell rings)."""
    with transaction.atomic():
        transaction.on_commit(lambda: committed.__setitem__(event.seq, time.time()))  # runs first of the two
        event = desk_append(tenant_id=tenant_id, type_="bench.tick", data={})
    connection.close()  # one thread of many: keep no connection of the bench's own


def customer_asks_for_a_person(tenant: Tenant, n: int) -> None:
    conversation = services.conversation_start(tenant=tenant, workflow_slug="support")
    services.message_post(conversation=conversation, text="Can I speak to a person?", turn_id=f"t{n}")
    connection.close()


async def until(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def open_sockets(url: str, heard: list, headers: list[dict]) -> list[WSTransport]:
    """A socket to `url` per listener in `heard` (with its headers), opened 50 at a time."""
    transports = []
    for start in range(0, len(heard), 50):
        transports += [transport for transport, _ in await asyncio.gather(*(
            ws_connect(lambda h=h: Socket(h), url, extra_headers=headers[n])
            for n, h in enumerate(heard[start:start + 50], start)))]
    return transports


async def close_sockets(transports: list[WSTransport]) -> None:
    for transport in transports:
        transport.disconnect()
    await asyncio.gather(*(transport.wait_disconnected() for transport in transports))


async def measure(args, tenant: Tenant, sessions: list[str], base: str, peer_base: str, committed: dict):
    clients = [Client() for _ in sessions]
    started = time.monotonic()
    sockets = await open_sockets(f"{base.replace('http', 'ws')}/ws/console/", [c.console for c in clients],
                                 [{"Cookie": f"sessionid={s}", "Origin": base} for s in sessions])
    print(f"{len(clients)} console sockets of {AGENTS} agents signed in in {time.monotonic() - started:.1f} s")
    await asyncio.sleep(1)

    for _ in range(args.events):  # 1. desk events
        await asyncio.to_thread(desk_tick, tenant.id, committed)
        await asyncio.sleep(0.1)
    await until(lambda: all(len(c.heard) >= args.events for c in clients))

    for n in range(args.handovers):  # 2. handovers, through the worker
        await asyncio.to_thread(customer_asks_for_a_person, tenant, n)
        await asyncio.sleep(0.5)
    await until(lambda: all(len(c.heard) >= args.events + args.handovers for c in clients))

    await close_sockets(sockets)

    sockets = await open_sockets(f"{peer_base.replace('http', 'ws')}/ws/peer/", [c.peer_socket for c in clients],
                                 [{}] * len(clients))  # 3. the peer
    await asyncio.sleep(1)
    layer = get_channel_layer()
    for _ in range(args.events):
        await layer.group_send(channels_peer.GROUP, {"type": "bench.tick", "t": time.time()})
        await asyncio.sleep(0.1)
    await until(lambda: all(len(c.peer) >= args.events for c in clients))
    await close_sockets(sockets)
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
        committed = {}
        clients = asyncio.run(measure(args, tenant, sessions, base, peer_base, committed))
    finally:
        for process in (daphne, peer, worker):
            process.terminate()
            process.wait(30)
        Tenant.objects.filter(slug=TENANT).delete()

    ticks: dict[int, list[float]] = {}  # from the commit
    handovers: dict[int, list[float]] = {}  # from the event's time, taken before its insert and commit
    every_seq, complete = list(range(1, args.events + args.handovers + 1)), 0
    for c in clients:
        desk = c.desk()
        complete += [seq for seq, _, _, _ in desk] == every_seq
        for seq, type_, arrived, ts in desk:
            if type_ == "bench.tick":
                ticks.setdefault(seq, []).append((arrived - committed[seq]) * 1000)
            elif type_ == "ticket.opened":
                handovers.setdefault(seq, []).append((arrived - ts) * 1000)
    peer = [ms for c in clients for ms in c.peer]
    print(f"every desk event once and in order: {complete} of {len(clients)} clients")
    every = [ms for v in ticks.values() for ms in v]
    print(f"desk event, commit → each of {len(clients)} clients ({len(every)} deliveries): {percentiles(every)}"
          f"  (target p95 < 20 ms)")
    print(f"desk event, commit → the first of the clients: {percentiles([min(v) for v in ticks.values()])}")
    print(f"handover, event time → the last of the clients ({len(handovers)} handovers): "
          f"{percentiles([max(v) for v in handovers.values()])}  (target p95 < 100 ms)")
    print(f"peer, Channels group send → each of {len(clients)} sockets ({len(peer)} deliveries): {percentiles(peer)}"
          f"  (published anchor: 26-38 ms)")
    if every and peer:
        hil_p95, peer_p95 = (sorted(v)[max(0, int(len(v) * 0.95) - 1)] for v in (every, peer))
        print(f"p95 ratio, Channels group send / HIL desk doorbell: {peer_p95 / hil_p95:.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
