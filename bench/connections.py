"""Connection benchmark: many event-stream clients on one Daphne process, and the Postgres connections they use.

    python bench/connections.py [--sse 1000] [--ws 500] [--runs 50] [--events 10]   # DATABASE_URL, REDIS_URL set
    make bench-connections                                                           # with the embedded services

Starts one Daphne process (production settings) on a free port, opens `--sse` server-sent-event
streams and `--ws` WebSockets spread over `--runs` runs, then appends `--events` events to each run,
one run after another, and times each event from its commit to its arrival at every client. Prints the
delivery p50/p95, how many clients got every event, and the most Postgres connections the Daphne
process held meanwhile (the target: under 20, whatever the number of clients).
It never fails on a timing.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

from bench import production  # noqa: E402, F401  (Django set up as production runs it)

import httpx  # noqa: E402
import websockets  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from accounts.models import Role, Tenant  # noqa: E402
from accounts.services import api_token_create, membership_set, user_ensure  # noqa: E402
from workflows import services  # noqa: E402
from workflows.events import events_append  # noqa: E402
from workflows.models import Run  # noqa: E402

TENANT = "bench-connections"
SPEC = """
entry: a
nodes:
  - {id: a, agent: responder, config: {template: "hi"}}
edges:
  - {from: a, to: FINISH}
"""


def setup(runs: int) -> tuple[list[Run], str]:
    Tenant.objects.filter(slug=TENANT).delete()
    tenant = Tenant.objects.create(slug=TENANT, name="Connection bench")
    user = user_ensure(username="bench-connections")
    membership_set(tenant=tenant, user=user, role=Role.OPERATOR)
    workflow = services.workflow_create(tenant=tenant, slug="bench")
    services.workflow_version_publish(version=services.workflow_version_create(workflow=workflow, spec_yaml=SPEC))
    started = []
    for n in range(runs):
        conversation = services.conversation_start(tenant=tenant, workflow_slug="bench")
        started.append(services.message_post(conversation=conversation, text="hi", turn_id=f"t{n}")[0].run)
    return started, api_token_create(tenant=tenant, user=user)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daphne_connections() -> int:
    """Client backends of the database but this one: the Daphne process's (the bench keeps none open)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return cursor.fetchone()[0]


async def client(connect, ready, failures):
    """Run one client; a client that fails is counted, never waited for."""
    try:
        await connect
    except Exception as e:
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        ready.set()


async def sse_client(http, base, run_id, token, arrivals, ready):
    async with http.stream("GET", f"{base}/api/v1/runs/{run_id}/events/stream/?after=1",
                           headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        ready.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.time() - json.loads(line[6:])["data"]["t"])


async def ws_client(base, run_id, token, arrivals, ready):
    async with websockets.connect(f"{base.replace('http', 'ws')}/ws/runs/{run_id}/?after=1",
                                  subprotocols=["bearer", token], max_queue=None) as ws:
        ready.set()
        async for message in ws:
            arrivals.append(time.time() - json.loads(message)["data"]["t"])


async def measure(args, runs, token, base):
    arrivals: list[float] = []
    readies, tasks, failures = [], [], []
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as http:
        started = time.monotonic()
        for n in range(args.sse + args.ws):
            ready = asyncio.Event()
            run = runs[n % len(runs)]
            connect = (sse_client(http, base, run.id, token, arrivals, ready) if n < args.sse
                       else ws_client(base, run.id, token, arrivals, ready))
            tasks.append(asyncio.create_task(client(connect, ready, failures)))
            readies.append(ready)
            if n % 50 == 49:
                await asyncio.gather(*(r.wait() for r in readies[-50:]))
        await asyncio.gather(*(r.wait() for r in readies))
        print(f"{args.sse} SSE streams and {args.ws} WebSockets opened in {time.monotonic() - started:.1f} s; "
              f"{len(failures)} failed{': ' + failures[0] if failures else ''}")
        await asyncio.sleep(1)  # the clients' first database reads

        most = 0
        for n in range(args.events):
            for run in runs:
                await asyncio.to_thread(append, run)
            most = max(most, await asyncio.to_thread(daphne_connections))
        expected = (args.sse + args.ws) * args.events
        deadline = time.monotonic() + 120
        while len(arrivals) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        most = max(most, await asyncio.to_thread(daphne_connections))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return arrivals, expected, most


def append(run: Run) -> None:
    with transaction.atomic():
        events_append(run, ("bench.tick", {"t": time.time()}))
    connection.close()  # one thread of many: keep no connection of the bench's own


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sse", type=int, default=1000)
    parser.add_argument("--ws", type=int, default=500)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=10)
    args = parser.parse_args()

    runs, token = setup(args.runs)
    port = free_port()
    daphne = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "hil_project.asgi:application"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        connection.close()
        idle = daphne_connections()
        arrivals, expected, most = asyncio.run(measure(args, runs, token, base))
    finally:
        daphne.terminate()
        daphne.wait(30)
        Tenant.objects.filter(slug=TENANT).delete()

    ms = sorted(a * 1000 for a in arrivals)
    print(f"events delivered: {len(arrivals)} of {expected} ({args.events} per run, {args.runs} runs)")
    if ms:
        p95 = ms[int(len(ms) * 0.95) - 1]
        print(f"delivery, commit → client: p50 {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms")
    print(f"Postgres connections in use by clients of the database: {idle} before, at most {most} while "
          f"{args.sse + args.ws} clients listened (target < 20: {'met' if most < 20 else 'MISSED'})")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
