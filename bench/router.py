"""Model router benchmark: what `agents.router.complete` adds to a model call.

    python -m hil_project.launcher exec python bench/router.py [--callers 50] [--calls 40]

A local OpenAI-compatible server (agents/local_llm.py, its own process, answering at once) serves every
call. `--callers` threads each make `--calls` calls, three ways in turn:
- direct: the `openai` client on its own (the floor: HTTP, JSON, the server);
- router: `router.complete` for a real run of a real tenant: profile lookup, token count, breaker, budget
  reservation and settlement in Redis, the same `openai` call, the LLMCall row;
- LiteLLM: `litellm.completion`, run by bench/litellm_peer.py in a virtualenv of its own (`.venv-litellm`,
  made by `make bench-router`): LiteLLM needs another `openai` than HIL pins.
The overhead of each is its p50/p95 minus the direct client's. The issue's target for the router: p50 under
1 ms and p95 under 3 ms at 50 concurrent calls; LiteLLM publishes 2 to 12 ms p50. Never fails on a timing.
"""

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
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

from accounts.models import Tenant  # noqa: E402
from agents import router  # noqa: E402
from agents.registry import StepContext  # noqa: E402
from agents.services import endpoint_save, profile_save  # noqa: E402
from tools.services import secret_set  # noqa: E402
from workflows import services  # noqa: E402

KEY = "sk-bench-router"
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Where is order 42?"}]
PEER = REPO / ".venv-litellm" / "bin" / "python"


def server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "agents.local_llm", "--api-key", KEY], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    base_url = process.stdout.readline().split()[-1]  # it prints its URL first
    return process, base_url


def tenant_with_model(base_url: str) -> tuple[Tenant, str]:
    tenant = Tenant.objects.create(slug=f"bench-router-{os.getpid()}", name="bench")
    secret_set(tenant=tenant, name="key", value=KEY)
    endpoint_save(tenant=tenant, name="local", base_url=base_url, api_key_secret="key", models=[
        {"model": "hil-local-chat", "context_window": 16000, "input_price": "0.15", "output_price": "0.6"}])
    profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-chat")])
    workflow = services.workflow_create(tenant=tenant, slug="bench")
    services.workflow_version_publish(version=services.workflow_version_create(
        workflow=workflow, spec_yaml="entry: a\nnodes:\n  - {id: a, agent: rules}\nedges:\n  - {from: a, to: FINISH}\n"))
    conversation = services.conversation_start(tenant=tenant, workflow_slug="bench")
    return tenant, str(services.message_post(conversation=conversation, text="hi", turn_id="t")[0].run_id)


def timed(call, callers: int, calls: int) -> list[float]:
    samples, start = [], threading.Barrier(callers)

    def caller():
        call()  # warm: connections, caches
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1000)
        django.db.connection.close()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def pct(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49], q[94]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    process, base_url = server()
    tenant = None
    try:
        tenant, run_id = tenant_with_model(base_url)
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        ctx = StepContext(tenant_id=tenant.id, run_id=run_id, node_id="answer", attempt=1, config={}, state={})
        ways = {
            "direct openai": lambda: client.chat.completions.create(model="hil-local-chat", messages=MESSAGES,
                                                                    max_tokens=50),
            "HIL router": lambda: router.complete(ctx, messages=MESSAGES, profile="fast", max_tokens=50,
                                                  offline=lambda: "unused"),
        }
        results = {name: pct(timed(call, args.callers, args.calls)) for name, call in ways.items()}
        if PEER.exists():
            out = subprocess.run([str(PEER), str(REPO / "bench" / "litellm_peer.py"), base_url, KEY,
                                  str(args.callers), str(args.calls)], capture_output=True, text=True, check=True)
            peer = json.loads(out.stdout.splitlines()[-1])
            results["LiteLLM (direct in its venv)"], results["LiteLLM"] = peer["direct"], peer["litellm"]
        print(f"{args.callers} callers x {args.calls} calls each, local server answering at once")
        print(f"{'':30} {'p50 ms':>8} {'p95 ms':>8}")
        for name, (p50, p95) in results.items():
            print(f"{name:30} {p50:8.2f} {p95:8.2f}")
        base = results["direct openai"]
        router_overhead = [r - b for r, b in zip(results["HIL router"], base)]
        print(f"\nHIL router overhead: p50 {router_overhead[0]:.2f} ms, p95 {router_overhead[1]:.2f} ms "
              "(target p50 < 1 ms, p95 < 3 ms)")
        if "LiteLLM" in results:
            peer_base = results["LiteLLM (direct in its venv)"]
            lite = [r - b for r, b in zip(results["LiteLLM"], peer_base)]
            print(f"LiteLLM overhead:    p50 {lite[0]:.2f} ms, p95 {lite[1]:.2f} ms; "
                  f"ratio HIL/LiteLLM p50 {router_overhead[0] / lite[0]:.2f}")
        else:
            print("LiteLLM not measured: `make bench-router` makes its virtualenv (.venv-litellm)")
    finally:
        process.terminate()
        if tenant is not None:
            tenant.delete()  # with its endpoint, profile, run and calls


if __name__ == "__main__":
    main()
