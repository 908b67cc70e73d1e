"""Engine benchmark: HIL's durable engine through real Celery workers, against LangGraph + PostgresSaver.

    python bench/engine.py [--runs 200] [--burst 200]     # needs DATABASE_URL and REDIS_URL
    make bench                                             # the same, with the embedded services
    python -m hil_project.launcher exec python bench/engine.py --compare-tracing 3 [--runs 100] [--burst 100]

The workflow has six nodes: classify → fetch_order → check_eligibility → respond → FINISH, or
check_eligibility → HANDOVER. Its agents take no time (bench/agents.py), so only the engines are
measured; half of the runs hand over. HIL runs with production settings (DEBUG off) on two worker
processes (prefork, one child each) listening on a queue of their own. A run starts as a user message
(`message_post`) and is timed until the client sees it done (a doorbell, then the database).
LangGraph, when bench/requirements.txt is installed, runs the same graph with PostgresSaver on the
same Postgres (in a schema of its own), in this process, each run on its own thread. The sequential
runs of both alternate, so a machine that gets busier part-way slows both alike.

`--compare-tracing ROUNDS` measures instead what tracing (core/tracing.py) costs: ROUNDS pairs of HIL-only benches
whose workers trace as by default or not at all (OTEL_SDK_DISABLED=true in the environment they inherit), each pair
in the other order than the one before, so that a machine getting busier weighs on both, after one bench that is
not counted (the first finds the caches cold). This process only posts messages, outside any span, so the tracing
measured is the workers': each run's invoke_workflow span and each step's invoke_agent span, no exporter.

Prints figures and whether the targets are met; it never fails on a timing.
"""

import argparse
import base64
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/engine.py` puts bench/ first on sys.path, where agents.py would shadow the `agents` app.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

QUEUE = f"hil-bench-{os.getpid()}"  # no other worker takes these tasks
os.environ["HIL_QUEUE"] = QUEUE
os.environ["HIL_AGENT_MODULES"] = ",".join(filter(None, [os.environ.get("HIL_AGENT_MODULES"), "bench.agents"]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
os.environ.setdefault("HIL_LOG_LEVEL", "WARNING")
os.environ["HIL_DEBUG"] = "0"  # measure what production runs
if not os.environ.get("HIL_SECRET_KEY"):
    os.environ["HIL_SECRET_KEY"] = secrets.token_urlsafe(32)  # throwaway: nothing signed here outlives the bench
if not os.environ.get("HIL_MASTER_KEY"):  # throwaway too: the bench stores no secret
    os.environ["HIL_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models import Max  # noqa: E402

from accounts.models import Tenant  # noqa: E402
from bench import agents as bench_agents  # noqa: E402
from hil_project.celery import app as celery_app  # noqa: E402
from workflows import services  # noqa: E402
from workflows.events import doorbell_channel  # noqa: E402
from workflows.models import Conversation, Run  # noqa: E402

SPEC = """
entry: classify
nodes:
  - {id: classify, agent: bench_classify}
  - {id: fetch_order, agent: bench_fetch_order}
  - {id: check_eligibility, agent: bench_check_eligibility}
  - {id: respond, agent: bench_respond}
edges:
  - {from: classify, to: fetch_order}
  - {from: fetch_order, to: check_eligibility}
  - {from: check_eligibility, to: respond, when: check_eligibility.eligible}
  - {from: check_eligibility, to: HANDOVER}
  - {from: respond, to: FINISH}
"""
# A recent order gets its refund (FINISH), an old one goes to a human (HANDOVER); runs alternate.
TEXTS = {"refund order 42": "FINISH", "refund order 43": "HANDOVER"}
WORKERS = 2
WARM_UP_RUNS = 20
TENANT = "bench-engine"
LANGGRAPH_SCHEMA = "langgraph_bench"
LANGGRAPH_MODES = ("sync", "async")  # sync: each step committed before the next starts, as in HIL
START_TIMEOUT_S = 60
WAIT_TIMEOUT_S = 120


class BenchError(Exception):
    pass


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the workers


# --- HIL ---------------------------------------------------------------------------------


def workers_start(log) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "celery", "-A", "hil_project", "worker", "-c", "1", "-P", "prefork",
               "-Q", QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    return [subprocess.Popen(command + ["-n", f"{QUEUE}-{i}@%h"], cwd=REPO, env=os.environ, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT) for i in range(WORKERS)]


def workers_wait_ready(workers: list[subprocess.Popen]) -> float:
    """Seconds until every worker answers a ping (its consumer is then reading our queue)."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if any(w.poll() is not None for w in workers):
            raise BenchError("a Celery worker exited while starting")
        replies = celery_app.control.ping(timeout=0.5) or []
        if sum(name.startswith(f"{QUEUE}-") for reply in replies for name in reply) == len(workers):
            return time.monotonic() - started
    raise BenchError(f"the Celery workers did not answer a ping within {START_TIMEOUT_S} s")


def workers_stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.terminate()  # warm shutdown: the task in flight finishes
    for w in workers:
        try:
            w.wait(15)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    kombu_keys = (f"_kombu.binding.{QUEUE}", f"_kombu.binding_permanent.{QUEUE}")  # the queue's routing
    redis.Redis.from_url(settings.REDIS_URL).delete(QUEUE, *kombu_keys)


def hil_cleanup() -> None:
    """Delete the bench tenant with everything it has."""
    Tenant.objects.filter(slug=TENANT).delete()


class Hil:
    """Posts user messages as an integration would, and waits for their runs to be done."""

    def __init__(self):
        hil_cleanup()  # what a bench that was killed left behind
        self.tenant = Tenant.objects.create(slug=TENANT, name="Engine benchmark")
        workflow = services.workflow_create(tenant=self.tenant, slug="refund")
        services.workflow_version_publish(version=services.workflow_version_create(workflow=workflow, spec_yaml=SPEC))
        self.pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(doorbell_channel(self.tenant.id, "*"))
        self.prefix = doorbell_channel(self.tenant.id, "").encode()
        self.expected: dict[str, str] = {}  # run id → sink
        self.timeline: dict[str, tuple[float, float]] = {}  # run id → (posted, seen done), wall clock

    def conversations(self, count: int) -> list[Conversation]:
        return [services.conversation_start(tenant=self.tenant, workflow_slug="refund") for _ in range(count)]

    def post(self, conversation: Conversation, text: str) -> str:
        message, _ = services.message_post(conversation=conversation, text=text, turn_id="1")
        self.expected[str(message.run_id)] = TEXTS[text]
        return str(message.run_id)

    def run_one(self, conversation: Conversation, text: str) -> float:
        """One run, from posting its message to seeing it done: seconds."""
        started, posted_at = time.perf_counter(), time.time()  # wall clock: comparable with the rows' timestamps
        run_id = self.post(conversation, text)
        self.wait_done([run_id])
        self.timeline[run_id] = (posted_at, time.time())
        return time.perf_counter() - started

    def wait_done(self, run_ids: list[str], poll_s: float = 0) -> None:
        """Until the runs are done: woken by their doorbells, or checking every `poll_s` (it takes CPU
        from the workers to answer each doorbell when many runs are in flight)."""
        pending = set(run_ids)
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while True:
            done = Run.objects.filter(id__in=pending, status=Run.Status.DONE).values_list("id", flat=True)
            pending -= {str(run_id) for run_id in done}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{len(pending)} runs not done after {WAIT_TIMEOUT_S} s")
            if poll_s:
                time.sleep(poll_s)
            else:
                self._wait_doorbell(pending)

    def _wait_doorbell(self, pending: set[str]) -> None:
        """Until a doorbell rings for a pending run (then drain what else arrived), at most 50 ms."""
        timeout = 0.05
        while (message := self.pubsub.get_message(timeout=timeout)) is not None:
            if message["channel"].removeprefix(self.prefix).decode() in pending:
                timeout = 0

    def check_outcomes(self) -> dict[str, int]:
        sinks = dict(Run.objects.filter(tenant=self.tenant, status=Run.Status.DONE).values_list("id", "sink"))
        wrong = sum(sinks.get(uuid.UUID(run_id)) != sink for run_id, sink in self.expected.items())
        if wrong:
            raise BenchError(f"{wrong} of {len(self.expected)} HIL runs did not end in the expected sink")
        return {sink: list(sinks.values()).count(sink) for sink in Run.Sink.values}

    def db_latencies(self) -> list[float]:
        """The timed runs by the database's timestamps: from the run's row created to its sink reached."""
        return [(finished - created).total_seconds() for created, finished in
                Run.objects.filter(id__in=self.timeline).values_list("created_at", "finished_at")]

    def breakdown(self) -> dict[str, float]:
        """Where the timed runs' time went (medians, ms), from the client's clock and the rows' timestamps:
        posted → row created → claimed by a worker → first step → last step (per step) → sink → seen done."""
        parts = {"post": [], "to worker": [], "claim": [], "per step": [], "last step": [], "sink + seen": []}
        for run in Run.objects.filter(id__in=self.timeline).prefetch_related("steps"):
            posted, seen = self.timeline[str(run.id)]
            steps = list(run.steps.all())
            marks = [posted, run.created_at.timestamp(), run.started_at.timestamp(), steps[0].started_at.timestamp(),
                     steps[-1].started_at.timestamp(), run.finished_at.timestamp(), seen]
            for (part, values), begin, end in zip(parts.items(), marks, marks[1:]):
                values.append((end - begin) / (len(steps) - 1 if part == "per step" else 1))
        return {part: statistics.median(values) * 1000 for part, values in parts.items()}


# --- LangGraph ---------------------------------------------------------------------------


def langgraph_graph(checkpointer):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):  # HIL's run state: the input, then one key per node
        input: dict
        classify: dict
        fetch_order: dict
        check_eligibility: dict
        respond: dict
        handover: dict

    graph = StateGraph(State)
    graph.add_node("classify", lambda s: {"classify": bench_agents.classify(s["input"]["text"])})
    graph.add_node("fetch_order", lambda s: {"fetch_order": bench_agents.fetch_order(s["classify"])})
    graph.add_node("check_eligibility",
                   lambda s: {"check_eligibility": bench_agents.check_eligibility(s["fetch_order"])})
    graph.add_node("respond", lambda s: {"respond": bench_agents.respond(s["fetch_order"])})
    # HIL's sinks write a reply or a handover ticket; here FINISH is END and HANDOVER a node that records why.
    graph.add_node("handover", lambda s: {"handover": {"reason": s["check_eligibility"]["reason"]}})
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "fetch_order")
    graph.add_edge("fetch_order", "check_eligibility")
    graph.add_conditional_edges(
        "check_eligibility", lambda s: "respond" if s["check_eligibility"]["eligible"] else "handover",
        ["respond", "handover"])
    graph.add_edge("respond", END)
    graph.add_edge("handover", END)
    return graph.compile(checkpointer=checkpointer)


class LangGraph:
    def __init__(self, stack):
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.conninfo import make_conninfo

        url = os.environ["DATABASE_URL"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {LANGGRAPH_SCHEMA}")
        saver = stack.enter_context(PostgresSaver.from_conn_string(
            make_conninfo(url, options=f"-c search_path={LANGGRAPH_SCHEMA}")))
        saver.setup()
        saver.conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
        self.graph = langgraph_graph(saver)

    def run_one(self, durability: str, text: str) -> float:
        started = time.perf_counter()
        state = self.graph.invoke({"input": {"text": text}}, {"configurable": {"thread_id": uuid.uuid4().hex}},
                                  durability=durability)
        elapsed = time.perf_counter() - started
        if ("respond" in state) != (TEXTS[text] == "FINISH"):
            raise BenchError(f"LangGraph did not reach the expected sink for {text!r}: {state}")
        return elapsed


# --- the bench ---------------------------------------------------------------------------


def bench(runs: int, burst: int, with_langgraph: bool) -> dict:
    hil = Hil()
    log = tempfile.TemporaryFile("w+")
    workers = workers_start(log)
    try:
        with ExitStack() as stack:
            langgraph = LangGraph(stack) if with_langgraph else None
            modes = LANGGRAPH_MODES if langgraph else ()
            ready_s = workers_wait_ready(workers)
            print(f"HIL: {WORKERS} workers answered a ping {ready_s:.1f} s after they were started (queue {QUEUE})")
            texts = list(TEXTS)
            warm = hil.conversations(WARM_UP_RUNS)
            hil.wait_done([hil.post(c, texts[i % 2]) for i, c in enumerate(warm)])  # both workers warm up
            for i in range(WARM_UP_RUNS):
                for mode in modes:
                    langgraph.run_one(mode, texts[i % 2])

            sequential = {"HIL": [], **{mode: [] for mode in modes}}
            for i, conversation in enumerate(hil.conversations(runs)):
                sequential["HIL"].append(hil.run_one(conversation, texts[i % 2]))
                for mode in modes:
                    sequential[mode].append(langgraph.run_one(mode, texts[i % 2]))

            conversations = hil.conversations(burst)
            with transaction.atomic():  # all the runs are enqueued when this commits
                run_ids = [hil.post(c, texts[i % 2]) for i, c in enumerate(conversations)]
                enqueued_at = time.time()
            hil.wait_done(run_ids, poll_s=0.1)
            last = Run.objects.filter(id__in=run_ids).aggregate(last=Max("finished_at"))["last"]
            burst_s = last.timestamp() - enqueued_at
    except BenchError:
        log.seek(0)
        print("the workers' output:\n" + log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        workers_stop(workers)
        log.close()
    result = {"sequential": sequential, "db_latencies": hil.db_latencies(), "breakdown": hil.breakdown(),
              "burst_rate": burst / burst_s, "burst_s": burst_s, "sinks": hil.check_outcomes()}
    hil_cleanup()
    return result


def percentile_ms(latencies: list[float], p: int) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[p - 1] * 1000


def report(runs: int, burst: int, result: dict) -> None:
    sequential = result["sequential"]
    rate = {key: len(latencies) / sum(latencies) for key, latencies in sequential.items()}
    rows = [(f"HIL, {WORKERS} workers, one run at a time", sequential["HIL"], rate["HIL"]),
            ("  the same runs, row created → sink (DB clock)", result["db_latencies"], None),
            (f"HIL, {WORKERS} workers, {burst} runs at once", None, result["burst_rate"])]
    rows += [(f"LangGraph + PostgresSaver, durability={mode}", sequential[mode], rate[mode])
             for mode in LANGGRAPH_MODES if mode in sequential]
    print(f"\n{runs} sequential runs each, alternating; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':48} {'p50 ms':>8} {'p95 ms':>8} {'runs/s':>8}")
    for name, latencies, runs_per_s in rows:
        p50, p95 = (f"{percentile_ms(latencies, p):8.2f}" for p in (50, 95)) if latencies else (f"{'-':>8}",) * 2
        print(f"{name:48} {p50} {p95} " + (f"{runs_per_s:8.1f}" if runs_per_s else f"{'-':>8}"))
    print(f"  (the {burst} runs were enqueued together and all done after {result['burst_s']:.2f} s; "
          f"sinks of all HIL runs: {result['sinks']})")
    print("  (HIL, where a sequential run's time goes, medians in ms: "
          + ", ".join(f"{part} {ms:.1f}" for part, ms in result["breakdown"].items()) + ")")

    hil_p50 = percentile_ms(sequential["HIL"], 50)
    for mode in LANGGRAPH_MODES:
        if mode in sequential:
            latency = hil_p50 / percentile_ms(sequential[mode], 50)
            throughput = result["burst_rate"] / rate[mode]
            print(f"vs durability={mode + ':':6} HIL p50 / LangGraph p50 = {latency:5.2f} (target ≤ 1: "
                  f"{'met' if latency <= 1 else 'MISSED'}); HIL {WORKERS}-worker runs/s / LangGraph sequential "
                  f"runs/s = {throughput:5.2f} (target ≥ 2: {'met' if throughput >= 2 else 'MISSED'})")


def compare_tracing(runs: int, burst: int, rounds: int) -> None:
    """Tracing on (the default) against off (OTEL_SDK_DISABLED=true, inherited by the workers), alternating."""
    before = os.environ.get("OTEL_SDK_DISABLED")
    figures = {"on": [], "off": []}
    bench(min(runs, 50), min(burst, 50), with_langgraph=False)  # not counted: the first bench finds caches cold
    try:
        for n in range(rounds):
            for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                if mode == "off":
                    os.environ["OTEL_SDK_DISABLED"] = "true"
                else:
                    os.environ.pop("OTEL_SDK_DISABLED", None)
                result = bench(runs, burst, with_langgraph=False)
                latencies, db = result["sequential"]["HIL"], result["db_latencies"]
                row = {"p50": percentile_ms(latencies, 50), "p95": percentile_ms(latencies, 95),
                       "db p50": percentile_ms(db, 50), "db p95": percentile_ms(db, 95), "burst": result["burst_rate"],
                       "latencies": latencies, "load": os.getloadavg()[0]}
                figures[mode].append(row)
                print(f"round {n + 1}, tracing {mode + ':':4} p50 {row['p50']:6.2f} ms, p95 {row['p95']:6.2f} ms, "
                      f"row created → sink p50 {row['db p50']:6.2f} ms, p95 {row['db p95']:6.2f} ms; {burst} at once "
                      f"{row['burst']:5.1f} runs/s (load average {row['load']:.2f})")
    finally:
        if before is None:
            os.environ.pop("OTEL_SDK_DISABLED", None)
        else:
            os.environ["OTEL_SDK_DISABLED"] = before
    print(f"\ntracing on against off, {rounds} rounds of {runs} sequential runs and a burst of {burst}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':36} {'on':>9} {'off':>9} {'overhead':>9}   per round")
    for key, name, unit, worse in (("p50", "message posted → seen done, p50", "ms", 1),
                                   ("p95", "message posted → seen done, p95", "ms", 1),
                                   ("db p50", "row created → sink, p50", "ms", 1),
                                   ("db p95", "row created → sink, p95", "ms", 1),
                                   ("burst", f"{burst} runs at once", "runs/s", -1)):
        on, off = (statistics.median(row[key] for row in figures[mode]) for mode in ("on", "off"))
        pairs = [(a[key] / b[key]) ** worse - 1 for a, b in zip(figures["on"], figures["off"])]
        print(f"{name + ' (' + unit + ')':36} {on:9.2f} {off:9.2f} {100 * ((on / off) ** worse - 1):+8.1f}%   "
              + " ".join(f"{100 * p:+.1f}%" for p in pairs))
    pooled = {mode: [x for row in figures[mode] for x in row["latencies"]] for mode in figures}
    p50s = [percentile_ms(pooled[mode], 50) for mode in ("on", "off")]
    p95s = [percentile_ms(pooled[mode], 95) for mode in ("on", "off")]
    print(f"all rounds' sequential runs pooled: p50 {p50s[0]:.2f} against {p50s[1]:.2f} ms "
          f"({100 * (p50s[0] / p50s[1] - 1):+.1f}%), p95 {p95s[0]:.2f} against {p95s[1]:.2f} ms "
          f"({100 * (p95s[0] / p95s[1] - 1):+.1f}%)")
    print("(overhead: the medians of the rounds, on over off; per round: each pair's. Target: under 10%.)")
    costs = {mode: spans_cost_apart(mode) for mode in ("on", "off")}
    p50 = statistics.median(row["p50"] for row in figures["on"])
    print(f"the spans of one run, made alone (spans_cost): {costs['on']:.0f} µs with tracing on, {costs['off']:.0f} µs "
          f"off; the difference is {100 * (costs['on'] - costs['off']) / 1000 / p50:.2f}% of the p50")


def spans_cost_apart(mode: str) -> float:
    """spans_cost() in a process of its own (a process sets its tracer provider once), tracing on or off."""
    env = {name: value for name, value in os.environ.items() if name != "OTEL_SDK_DISABLED"}
    if mode == "off":
        env["OTEL_SDK_DISABLED"] = "true"
    code = "from bench import engine; engine.spans_cost(); print(min(engine.spans_cost() for _ in range(3)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def spans_cost(repeat: int = 2000) -> float:
    """µs for the spans a run of SPEC makes in a worker, as the engine makes them (workflows/engine.py): the turn's
    trace continued, invoke_workflow, an invoke_agent per step (4) and the trace id read for each step's events."""
    from core import tracing

    parent = tracing.traceparent()
    started = time.perf_counter()
    for _ in range(repeat):
        with tracing.continued(parent), tracing.logged_as(tenant=1, run="r"), tracing.span(
                "invoke_workflow refund", **{"gen_ai.operation.name": "invoke_workflow", "hil.workflow": "refund",
                                             "hil.workflow.version": 1, "hil.tenant": 1, "hil.run": "r"}):
            for node in ("classify", "fetch_order", "check_eligibility", "respond"):
                with tracing.logged_as(node=node), tracing.span(f"invoke_agent bench_{node}", **{
                        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": f"bench_{node}",
                        "hil.node": node, "hil.attempt": 1}):
                    tracing.trace_id()
    return (time.perf_counter() - started) / repeat * 1e6


def _langgraph_installed() -> bool:
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
    except ImportError:
        print("LangGraph: not installed, skipped (pip install -r bench/requirements.txt to compare)")
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="sequential runs per system (latency)")
    parser.add_argument("--burst", type=int, default=200, help="HIL runs posted at once (throughput)")
    parser.add_argument("--compare-tracing", type=int, default=0, metavar="ROUNDS",
                        help="HIL only: ROUNDS pairs with the workers tracing and not (OTEL_SDK_DISABLED=true)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminated)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        if args.compare_tracing:
            compare_tracing(args.runs, args.burst, args.compare_tracing)
        else:
            report(args.runs, args.burst, bench(args.runs, args.burst, _langgraph_installed()))
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
