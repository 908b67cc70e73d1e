"""Model router benchmark: what `agents.router.complete` adds to a model call.

    python -m hil_project.launcher exec python bench/router.py [--callers 50] [--calls 20] [--latency-ms 500]

A local OpenAI-compatible server (agents/local_llm.py, its own process) serves every call, three ways in turn:
- direct: the `openai` client on its own, as the router calls it (the floor: HTTP, JSON, the server);
- router: `router.complete` for a real run of a real tenant: profile lookup, token count, breaker, budget
  reservation and settlement in Redis, the same `openai` call, the LLMCall row and event (which the engine
  commits with the step's outcome, in the statement it runs anyway: what they add to it is timed apart);
- LiteLLM: `litellm.completion`, run by bench/litellm_peer.py in a virtualenv of its own (`.venv-litellm`,
  made by `make bench-router`): LiteLLM needs another `openai` than HIL pins.
Callers are processes, as HIL's prefork workers are (bench/callers.py). Three settings:
- 1 caller, a server answering at once: the cost of one call;
- `--callers` callers, a server answering at once: 2 cores saturated, so latency is mostly queueing (Little's
  law: callers / throughput); the wall time per call tells what a call costs;
- `--callers` callers, a server taking `--latency-ms`, as a model does: that many calls in flight.
For each: p50/p95 of the direct client; the router's own time (the call's, but the `openai` client's), and of
that the CPU time of its process (the rest: waiting for Redis's reply, or for a CPU); and each way's p50/p95 over
the direct client's. The issue's target for the router: p50 under 1 ms and p95 under 3 ms at 50 concurrent
calls; LiteLLM publishes 2 to 12 ms p50. Never fails on a timing.
"""

import argparse
import itertools
import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
os.environ.setdefault("HIL_DEBUG", "1")
os.environ.setdefault("HIL_SECRET_KEY", secrets.token_urlsafe(32))

import django  # noqa: E402

django.setup()

import openai  # noqa: E402
from openai.types.chat import ChatCompletion  # noqa: E402
from django.db import connections  # noqa: E402

from accounts.models import Tenant  # noqa: E402
from agents import router  # noqa: E402
from agents.models import LLMCall, ModelEndpoint  # noqa: E402
from agents.registry import StepContext  # noqa: E402
from agents.services import endpoint_save, profile_save  # noqa: E402
from bench.callers import pct, timed  # noqa: E402
from core import tracing  # noqa: E402
from tools.services import secret_set  # noqa: E402
from workflows import services  # noqa: E402
from workflows.events import run_commit  # noqa: E402
from workflows.models import Run  # noqa: E402

KEY = "sk-bench-router"
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Where is order 42?"}]
LLM_EVENT = {"node": "answer", "model": "hil-local-chat", "endpoint": "local", "profile": "fast", "outcome": "ok",
             "error": "", "tokens_in": 24, "tokens_out": 9, "cost": "0.000009", "latency_ms": 2, "cache": "",
             "saved_cost": "0"}
PEER = REPO / ".venv-litellm" / "bin" / "python"


def server(latency_ms: float = 0) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "agents.local_llm", "--api-key", KEY, "--latency-ms",
                                str(latency_ms)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    base_url = process.stdout.readline().split()[-1]  # it prints its URL first
    return process, base_url


def tenant_with_model(base_url: str) -> tuple[Tenant, str]:
    tenant = Tenant.objects.create(slug=f"bench-router-{os.getpid()}", name="bench")
    secret_set(tenant=tenant, name="key", value=KEY)
    endpoint_save(tenant=tenant, name="local", base_url=base_url, api_key_secret="key", models=[
        {"model": "hil-local-chat", "context_window": 16000, "input_price": "0.15", "output_price": "0.6"}])
    profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-chat")])
    workflow = services.workflow_create(tenant=tenant, slug="bench")
    spec = "entry: a\nnodes:\n  - {id: a, agent: rules}\nedges:\n  - {from: a, to: FINISH}\n"
    services.workflow_version_publish(version=services.workflow_version_create(workflow=workflow, spec_yaml=spec))
    conversation = services.conversation_start(tenant=tenant, workflow_slug="bench")
    return tenant, str(services.message_post(conversation=conversation, text="hi", turn_id="t")[0].run_id)


def commit_cost(tenant: Tenant, run_id: str, n: int = 300) -> tuple[float, float]:
    """What a model call's row and event add to the statement that commits its step's outcome: that
    statement's p50/p95 with them minus without (one caller: the statement, not contention)."""
    run = Run.objects.get(id=run_id)
    step_event = ("step.succeeded", {"node": "answer", "output": {"reply": "Order 42 ships today."}})
    with_call, without = [], []
    for i in range(2 * n):
        call = LLMCall(tenant=tenant, run=run, model="hil-local-chat", outcome="ok")
        rows, events = ((), [step_event]) if i % 2 else ((call,), [("llm.call", LLM_EVENT), step_event])
        t0 = time.perf_counter()
        run_commit(run, where=("TRUE", []), fields={}, events=events, rows=rows)
        (without if i % 2 else with_call).append((time.perf_counter() - t0) * 1000)
    return tuple(a - b for a, b in zip(pct(with_call), pct(without)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=500)
    args = parser.parse_args()
    settings = [(1, args.calls * 10, 0), (args.callers, args.calls, 0), (args.callers, args.calls, args.latency_ms)]
    servers = {latency: server(latency) for latency in {0, args.latency_ms}}
    tenant = None
    try:
        tenant, run_id = tenant_with_model(servers[0][1])
        rows = []
        for callers, calls, latency in settings:
            base_url = servers[latency][1]
            ModelEndpoint.objects.filter(tenant=tenant).update(base_url=base_url)
            router.config_changed(tenant.id)
            connections.close_all()  # the callers are forked: each opens its own
            spread_s = latency / 1000  # callers start spread over one latency, not in lockstep
            direct = timed(lambda: direct_call(base_url), callers, calls, spread_s)
            hil = timed(lambda: routed_call(tenant.id, run_id, base_url), callers, calls, spread_s)
            rows.append((f"{callers} caller{'s' * (callers > 1)}, server {latency:g} ms", direct, hil,
                         litellm(base_url, callers, calls, spread_s)))
        report(rows, commit_cost(tenant, run_id))
    finally:
        for process, _ in servers.values():
            process.terminate()
        if tenant is not None:
            tenant.delete()  # with its endpoint, profile, run and calls


def direct_call(base_url: str):
    """The call the router makes, alone."""
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    body = {"model": "hil-local-chat", "messages": MESSAGES, "max_tokens": 50}
    return lambda: client.post("/chat/completions", body=body, cast_to=ChatCompletion)


def routed_call(tenant_id: int, run_id: str, base_url: str):
    """A router call that returns its own time and its process's CPU time in it (ms): all of the call's but the
    `openai` client's. Each asks about another order: the router remembers token counts of short texts, which a
    node's system prompt is and a customer's messages mostly are not. A read of the CPU clock is a system call
    (18 µs on a machine of bench/README.md): the call's own time has none in it, its CPU time one."""
    ctx = StepContext(tenant_id=tenant_id, run_id=run_id, node_id="answer", attempt=1, config={}, state={})
    http, orders = {}, itertools.count(random.randrange(10**9))
    client = router._client(base_url, KEY)  # the one the router calls (it keeps one per endpoint and key)
    post = client.post

    def timed_post(*args, **kwargs):
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        try:
            return post(*args, **kwargs)
        finally:
            http["cpu_ms"] = (time.thread_time() - cpu0) * 1000
            http["ms"] = (time.perf_counter() - t0) * 1000

    client.post = timed_post

    def call() -> tuple[float, float]:
        messages = [MESSAGES[0], {"role": "user", "content": f"Where is order {next(orders)}?"}]
        with tracing.span("invoke_agent bench"):  # as the engine runs a step: its model calls inside its span
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            router.complete(ctx, messages=messages, profile="fast", max_tokens=50, cache="none", offline=lambda: "")
            t1 = time.perf_counter()
            cpu1 = time.thread_time()
        ctx.rows.clear(), ctx.events.clear()  # the engine commits them with the step: see commit_cost
        return (t1 - t0) * 1000 - http["ms"], (cpu1 - cpu0) * 1000 - http["cpu_ms"]
    return call


def litellm(base_url: str, callers: int, calls: int, spread_s: float) -> dict | None:
    """LiteLLM's and its own direct client's figures, from its virtualenv; None without one."""
    if not PEER.exists():
        return None
    out = subprocess.run([str(PEER), str(REPO / "bench" / "litellm_peer.py"), base_url, KEY, str(callers),
                          str(calls), str(spread_s)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def report(rows, commit: tuple[float, float]) -> None:
    print(f"{'ms':28} {'direct p50/p95':>16} {'HIL own p50/p95':>16} {'of it CPU':>15} {'HIL-direct p50/p95':>19}"
          f" {'LiteLLM-direct p50/p95':>23} {'wall/call: HIL, LiteLLM':>24}")
    for name, direct, hil, peer in rows:
        over = "{:.2f} / {:.2f}".format(*(a - b for a, b in zip(hil["p"], direct["p"])))
        per_call, lite = f"+{hil['per_call'] - direct['per_call']:.2f}", "not measured"
        if peer:
            lite = "{:.2f} / {:.2f}".format(*(a - b for a, b in zip(peer["litellm"]["p"], peer["direct"]["p"])))
            per_call += f", +{peer['litellm']['per_call'] - peer['direct']['per_call']:.2f}"
        own, cpu = hil["own"]
        print(f"{name:28} {direct['p'][0]:7.2f} / {direct['p'][1]:6.2f} {own[0]:7.2f} / {own[1]:6.2f}"
              f" {cpu[0]:6.2f} / {cpu[1]:6.2f} {over:>19} {lite:>23} {per_call:>24}")
    print(f"HIL own: the router's time in a call, but the `openai` client's; of it CPU: its process's CPU time in it"
          f" (the rest is waiting).\nWall/call: over the direct client's."
          f" The router's target: p50 < 1, p95 < 3 at 50 concurrent calls. The LLMCall row and llm.call event add"
          f" p50 {commit[0]:.2f}, p95 {commit[1]:.2f} to the statement that commits the step.")
    if not PEER.exists():
        print("LiteLLM not measured: `make bench-router` makes its virtualenv (.venv-litellm)")


if __name__ == "__main__":
    main()
