"""Router parts benchmark: the latency of a budget reservation and settle, and of a circuit breaker's
`allow`, with many callers at once against the same Redis.

    python -m hil_project.launcher exec python bench/router_parts.py [--callers 50] [--calls 200]
                                                                    [--processes 1] [--model-ms 50]

`--callers` threads make model calls at once, spread over `--processes` processes (each with its own
Redis connections). A call is what the router will do: `allow` on one breaker shared by every caller
(closed, the common case), `reserve` against three budgets (the caller's step and run, and one month
shared by every caller: the tenant's, the hottest key), the model call (a sleep of `--model-ms`, ±50 %),
then `settle`. With `--model-ms 0` the callers hammer Redis back to back: that measures saturation,
where by Little's law latency = callers / throughput, not the overhead of one call among 50 under way.
Prints p50/p95 per call against the target for the router's whole overhead: p50 < 1 ms and p95 < 3 ms
at 50 concurrent calls. It never fails on a timing.
"""

import argparse
import multiprocessing
import os
import random
import secrets
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
os.environ["HIL_DEBUG"] = "0"
os.environ.setdefault("HIL_SECRET_KEY", secrets.token_urlsafe(32))  # children inherit the same throwaway
os.environ.setdefault("HIL_MASTER_KEY", "A" * 43 + "=")  # the bench stores no secret

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402

from agents import breaker, budgets  # noqa: E402

TENANT = 999_999_999  # the bench's keys: hil:{t999999999}:...
MODEL = breaker.model_key(tenant_id=TENANT, endpoint="bench", model="bench-model")
WARM_UP = 5


def caller(run_id: str, calls: int, model_s: float, start, samples: dict) -> None:
    month = budgets.Budget.month(tenant_id=TENANT, limit_micros=None)
    run = budgets.Budget.run(tenant_id=TENANT, run_id=run_id, limit_micros=10**12)
    step = budgets.Budget.step(tenant_id=TENANT, run_id=run_id, node_id="answer", attempt=1, limit_micros=10**12)
    for _ in range(WARM_UP):  # connections opened, scripts loaded
        budgets.settle(budgets.reserve([month, run, step], 1_000), 900)
        breaker.allow(MODEL)
    start.wait()
    for _ in range(calls):
        t0 = time.perf_counter()
        breaker.allow(MODEL)
        t1 = time.perf_counter()
        reservation = budgets.reserve([month, run, step], 1_000)
        t2 = time.perf_counter()
        time.sleep(model_s * random.uniform(0.5, 1.5))  # the model call
        t3 = time.perf_counter()
        budgets.settle(reservation, 900)
        t4 = time.perf_counter()
        samples["allow"].append((t1 - t0) * 1000)
        samples["reserve+settle"].append((t2 - t1 + t4 - t3) * 1000)


def callers_in_process(threads: int, calls: int, model_s: float, start, results) -> None:
    samples = {"reserve+settle": [], "allow": []}
    run_ids = [f"bench-{uuid.uuid4().hex}" for _ in range(threads)]
    started = [threading.Thread(target=caller, args=(r, calls, model_s, start, samples)) for r in run_ids]
    for t in started:
        t.start()
    for t in started:
        t.join()
    results.put((samples, run_ids))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200, help="per caller")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--model-ms", type=float, default=50, help="how long a model call takes, on average")
    args = parser.parse_args()
    client = redis.Redis.from_url(settings.REDIS_URL)
    before = client.info("commandstats").get("cmdstat_evalsha", {})
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(args.callers), spawn.Queue()
    per_process = [args.callers // args.processes + (n < args.callers % args.processes) for n in range(args.processes)]
    processes = [spawn.Process(target=callers_in_process, args=(n, args.calls, args.model_ms / 1000, start, results))
                 for n in per_process]
    for p in processes:
        p.start()
    samples, run_ids = {"reserve+settle": [], "allow": []}, []
    for _ in processes:
        process_samples, process_run_ids = results.get()
        run_ids += process_run_ids
        for name, values in process_samples.items():
            samples[name] += values
    for p in processes:
        p.join()

    print(f"{args.callers} callers at once in {args.processes} process(es), {args.calls} calls each, "
          f"model calls of {args.model_ms:g} ms; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, values in samples.items():
        p50, p95 = statistics.median(values), statistics.quantiles(values, n=100)[94]
        verdict = "met" if p50 < 1 and p95 < 3 else "missed"
        print(f"  {name:<15} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   (target p50 < 1, p95 < 3: {verdict})")
    after = client.info("commandstats")["cmdstat_evalsha"]
    calls, usec = after["calls"] - before.get("calls", 0), after["usec"] - before.get("usec", 0)
    print(f"  Redis itself: {usec / calls:.1f} µs per script on average ({calls} scripts run); the rest is the "
          "client's and the network's")
    month = budgets.Budget.month(tenant_id=TENANT, limit_micros=None)
    keys = [month.key] + [budgets.Budget.run(tenant_id=TENANT, run_id=r, limit_micros=None).key for r in run_ids]
    keys += [budgets.Budget.step(tenant_id=TENANT, run_id=r, node_id="answer", attempt=1, limit_micros=None).key
             for r in run_ids]
    client.delete(*keys, *(f"{k}:holds" for k in keys), *(f"{MODEL}:{k}" for k in ("fails", "open", "probe")))


if __name__ == "__main__":
    main()
