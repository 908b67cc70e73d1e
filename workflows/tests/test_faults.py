"""The fault suite: real worker processes killed at the worst moments, Redis and Postgres restarted
under load, poison nodes, races with humans. After each: every run reaches a sink, no effect happened
twice, no event seq has a gap, no message is lost.

The workers, queues, data and servers are this test session's own (`make test` starts private
Postgres and Redis), and processes are found by the ids the tests started, so that another HIL
instance on the machine cannot disturb these tests, nor they it.
"""

import json
import threading
from collections import Counter

import httpx
import pytest
from django.db import connection, transaction

from approvals.models import HandoverTicket
from tools.models import ToolCall
from workflows import services
from workflows.models import Conversation, Message, Run, RunEvent, Step
from workflows.tests import servers
from workflows.tests.conftest import WORKER_ENV

pytestmark = pytest.mark.django_db(transaction=True)
MAX_CLAIMS = int(WORKER_ENV["HIL_MAX_CLAIMS"])


@pytest.fixture
def effects(tmp_path):
    """The external system's record of calls: its path, and a counter of the keys it was called with."""
    path = tmp_path / "effects.log"
    path.touch()
    return str(path), lambda: Counter(path.read_text().split())


def effects_spec(log: str, *, ms: int = 0, die_after_effect: bool = False, before_ms: int = 0, failures: int = 0) -> str:
    config = json.dumps({"log": log, "calls": [{"n": 1}], "ms": ms, "die_after_effect": die_after_effect,
                         "failures": failures})
    return f"""
entry: before
nodes:
  - {{id: before, agent: test_sleep, config: {{ms: {before_ms}}}}}
  - {{id: effect, agent: test_effects, config: {config}, limits: {{timeout_ms: 10000}}}}
  - {{id: reply, agent: responder, config: {{template: "done {{{{ input.text }}}}"}}}}
edges:
  - {{from: before, to: effect}}
  - {{from: effect, to: reply}}
  - {{from: reply, to: FINISH}}
"""


def assert_healthy(run_ids, effect_keys: Counter | None = None) -> list[Run]:
    """Every run reached a sink; its events are numbered without a gap; a FINISH posted one reply; each
    effect was made under one key per call, recorded as succeeded (a repeat under the same key is the
    external system's to deduplicate, and only a worker that died before recording it repeats it)."""
    runs = list(Run.objects.filter(id__in=run_ids))
    assert len(runs) == len(run_ids)
    for run in runs:
        assert (run.status, run.sink in ("FINISH", "HANDOVER")) == ("done", True), (run.id, run.status, run.reason)
        seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, run.last_seq + 1)), (run.id, seqs)
        replies = Message.objects.filter(run=run, role="ai").count()
        assert replies == (1 if run.sink == "FINISH" else 0), (run.id, replies)
        steps = Counter(Step.objects.filter(run=run, status="succeeded").values_list("node_id", flat=True))
        assert max(steps.values(), default=1) == 1, (run.id, steps)
    if effect_keys is not None:
        calls = ToolCall.objects.filter(run_id__in=run_ids)
        assert set(effect_keys) == set(calls.values_list("idempotency_key", flat=True))
        assert set(calls.values_list("status", flat=True)) <= {"succeeded"}
    return runs


def done(run_ids):
    return lambda: Run.objects.filter(id__in=run_ids, status__in=("done", "failed", "cancelled")).count() == len(
        run_ids)


def test_a_worker_killed_between_an_effect_and_its_record_repeats_it_under_the_same_key(
        tenant, converse, start_worker, wait, effects):
    log, keys = effects
    start_worker()
    _, run = converse(tenant, effects_spec(log, die_after_effect=True))
    wait(done([run.id]), what="the run")  # the worker's child died; the run was taken over
    [run] = assert_healthy([run.id], keys())
    assert keys() == Counter({f"{run.id}:effect:1": 2})  # called twice, with one key: one effect
    assert ToolCall.objects.get(run=run).executions == 2
    assert list(Step.objects.filter(run=run).values_list("node_id", "status")) == [
        ("before", "succeeded"), ("effect", "succeeded"), ("reply", "succeeded")]


def test_a_step_retried_after_its_side_effect_does_not_act_again(tenant, converse, start_worker, wait, effects):
    log, keys = effects
    start_worker()
    _, run = converse(tenant, effects_spec(log, failures=2))
    wait(done([run.id]), what="the run")
    assert_healthy([run.id], keys())
    assert list(Step.objects.filter(run_id=run.id, node_id="effect").values_list("attempt", "status")) == [
        (1, "failed"), (2, "failed"), (3, "succeeded")]
    assert keys() == Counter({f"{run.id}:effect:1": 1})


def blocked_on_lock(query_start: str):
    """True once a backend of this database waits on a lock running a statement that starts so."""

    def check():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock' AND query LIKE %s", [query_start + "%"])
            return cursor.fetchone()[0] > 0

    return check


class RowLock:
    """Holds `SELECT ... FOR UPDATE` on a row from a connection of its own until released."""

    def __init__(self, model, pk):
        self.taken, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(model, pk))
        self.thread.start()
        assert self.taken.wait(30)

    def _hold(self, model, pk):
        try:
            with transaction.atomic():
                model.objects.select_for_update().get(pk=pk)
                self.taken.set()
                self.release.wait(120)
        finally:
            connection.close()

    def free(self):
        self.release.set()
        self.thread.join()


def test_a_worker_killed_while_committing_a_step_loses_at_most_that_step(tenant, converse, start_worker, wait,
                                                                         effects):
    log, keys = effects
    worker = start_worker()
    _, run = converse(tenant, effects_spec(log, before_ms=1500))
    wait(lambda: Run.objects.filter(id=run.id, status="running", current_node="before").exists(), what="the step")
    lock = RowLock(Run, run.id)  # the step's commit will wait on the run's row...
    try:
        wait(blocked_on_lock("WITH r AS (UPDATE"), what="the commit waiting")
        worker.kill()  # ...and its worker dies there
    finally:
        lock.free()
    start_worker()
    wait(done([run.id]), what="the run")
    assert_healthy([run.id], keys())
    assert sum(keys().values()) == 1


def test_a_worker_killed_in_the_sink_posts_the_reply_once(tenant, converse, start_worker, wait, effects):
    log, keys = effects
    worker = start_worker()
    conversation, run = converse(tenant, effects_spec(log, ms=1500))
    wait(lambda: ToolCall.objects.filter(run=run, status="succeeded").exists(), what="the effect")
    lock = RowLock(Conversation, conversation.pk)  # the sink locks the conversation to check who owns it
    try:
        wait(blocked_on_lock("SELECT"), what="the sink waiting")
        worker.kill()
    finally:
        lock.free()
    start_worker()
    wait(done([run.id]), what="the run")
    [run] = assert_healthy([run.id], keys())
    assert run.sink == "FINISH" and sum(keys().values()) == 1


def test_a_node_that_kills_its_worker_every_time_goes_down_its_failure_path(tenant, converse, start_worker, wait):
    """As the out-of-memory killer would: the run is taken over each time, then given up on."""
    start_worker()
    _, run = converse(tenant, """
entry: a
nodes:
  - {id: a, agent: test_die, on_failure: fallback}
  - {id: fallback, agent: responder, config: {template: sorry}}
edges:
  - {from: a, to: FINISH}
  - {from: fallback, to: FINISH}
""")
    wait(done([run.id]), what="the run")
    [run] = assert_healthy([run.id])
    step = Step.objects.get(run=run, node_id="a")
    assert step.error.startswith(f"did not finish in {MAX_CLAIMS} tries: its worker died")
    assert run.messages.get(role="ai").text == "sorry"
    assert run.events.filter(type="run.started").count() == MAX_CLAIMS + 1


def test_a_hung_step_is_stopped_by_the_hard_time_limit_and_the_run_goes_on(tenant, converse, start_worker, wait,
                                                                          settings):
    """An agent that ignores its deadline (and swallows exceptions): the worker child is killed at the
    task's hard time limit, the run is taken over, and once given up on takes its failure path."""
    settings.HIL_STEP_GRACE_S = float(WORKER_ENV["HIL_STEP_GRACE_S"])  # the limit is set by whoever sends the task
    start_worker()
    _, run = converse(tenant, """
entry: h
nodes:
  - {id: h, agent: test_hang, limits: {timeout_ms: 300}, on_failure: fallback}
  - {id: fallback, agent: responder, config: {template: sorry}}
edges:
  - {from: h, to: FINISH}
  - {from: fallback, to: FINISH}
""")
    wait(done([run.id]), what="the run")
    [run] = assert_healthy([run.id])
    assert run.messages.get(role="ai").text == "sorry"
    assert Step.objects.get(run=run, node_id="h").error.startswith(f"did not finish in {MAX_CLAIMS} tries")


def test_a_step_longer_than_the_lease_keeps_it_by_its_heartbeat(tenant, converse, start_worker, wait):
    start_worker()
    _, run = converse(tenant, """
entry: s
nodes:
  - {id: s, agent: test_sleep, config: {ms: 7000}, limits: {timeout_ms: 20000}}
  - {id: r, agent: responder, config: {template: slept}}
edges:
  - {from: s, to: r}
  - {from: r, to: FINISH}
""")
    wait(done([run.id]), what="the run")
    [run] = assert_healthy([run.id])
    assert run.events.filter(type="run.started").count() == 1  # never taken over, though 7 s > the 3 s lease
    assert Step.objects.filter(run=run).count() == 2


def test_a_worker_on_a_pool_that_cannot_stop_a_step_refuses_to_start(start_worker, wait):
    worker = start_worker(pool="threads", wait=False)
    code = worker.process.wait(90)
    log = open(worker.log_path).read()
    assert code != 0 and "needs the prefork pool" in log, log


def post_many(tenant, publish, spec: str, n: int) -> list:
    workflow = publish(tenant, spec)
    runs = []
    for i in range(n):
        conversation = services.conversation_start(tenant=tenant, workflow_slug=workflow.slug)
        runs.append(services.message_post(conversation=conversation, text=f"m{i}", turn_id="t")[0].run_id)
    return runs


@servers.needs_own_servers
def test_redis_restarted_with_50_runs_in_flight_loses_none(tenant, publish, start_worker, wait, effects):
    log, keys = effects
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    run_ids = post_many(tenant, publish, effects_spec(log, ms=100, before_ms=100), 50)
    wait(lambda: Run.objects.filter(id__in=run_ids, status="done").count() >= 5, what="some runs done")
    servers.redis_restart()  # every queued task message is gone with it
    wait(done(run_ids), timeout=240, what="every run")
    assert_healthy(run_ids, keys())
    assert sum(keys().values()) == 50


@servers.needs_own_servers
def test_messages_posted_while_redis_is_down_are_answered_and_run_once_it_is_back(tenant, converse, start_worker,
                                                                                   wait, api):
    start_worker()
    conversation, first = converse(tenant)
    wait(done([first.id]), what="the first turn")
    with servers.redis_down():
        posted = [api.post(f"/api/v1/conversations/{conversation.id}/messages/", {"text": f"turn {n}", "turn_id": f"down{n}"},
                           format="json") for n in range(3)]
        assert [r.status_code for r in posted] == [202] * 3
        assert [r.json()["run"]["status"] for r in posted] == ["queued", "held", "held"]
    run_ids = [r.json()["run"]["id"] for r in posted]
    wait(done(run_ids), what="the turns posted while Redis was down")  # the sweeper sends the first again
    assert_healthy(run_ids)


@servers.needs_own_servers
def test_postgres_restarted_with_50_runs_in_flight_loses_none(tenant, publish, start_worker, wait, effects):
    log, keys = effects
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    run_ids = post_many(tenant, publish, effects_spec(log, ms=100, before_ms=100), 50)
    wait(lambda: Run.objects.filter(id__in=run_ids, status="done").count() >= 5, what="some runs done")
    connection.close()
    servers.postgres_restart()  # every connection is cut, statements in flight fail
    wait(done(run_ids), timeout=240, what="every run")
    assert_healthy(run_ids, keys())


class Load(threading.Thread):
    """Posts turns round-robin over HTTP until stopped, as clients keep doing through an outage; keeps every
    answer (or the transport error, which would mean the service dropped a request)."""

    def __init__(self, http, conversations):
        super().__init__(daemon=True)
        self.http, self.conversations, self.answers = http, conversations, []
        self.stopping = threading.Event()

    def run(self):
        n = 0
        while not self.stopping.is_set():
            conversation = self.conversations[n % len(self.conversations)]
            try:
                self.answers.append(self.http.post(f"/api/v1/conversations/{conversation}/messages/",
                                                   json={"text": f"m{n}", "turn_id": f"load{n}"}))
            except httpx.TransportError as e:
                self.answers.append(e)
            n += 1

    def answered(self, status: int) -> list[httpx.Response]:
        return [a for a in self.answers if getattr(a, "status_code", None) == status]

    def stop(self):
        self.stopping.set()
        self.join()


@servers.needs_own_servers
def test_the_service_rides_out_redis_and_postgres_restarts_under_load_without_a_restart(
        tenant, publish, member, start_worker, daphne, wait):
    """Daphne as deployed, with clients posting all along: while Redis is down a post is still accepted (the
    sweeper sends its run later) and /readyz names Redis; while Postgres is down a post gets a JSON 503 with
    Retry-After; afterwards the same process serves again and every accepted turn is answered once."""
    start_worker(concurrency=2)
    _, token = member(tenant)
    publish(tenant)
    http = httpx.Client(base_url=daphne.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    conversations = [http.post("/api/v1/conversations/", json={"workflow": "wf"}).json()["id"] for _ in range(6)]
    load = Load(http, conversations)
    load.start()
    wait(lambda: len(load.answered(202)) >= 20, what="posts accepted before the outages")

    with servers.redis_down():
        accepted = len(load.answered(202))
        wait(lambda: len(load.answered(202)) >= accepted + 10, what="posts accepted while Redis is down")
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unavailable")

    with servers.postgres_down():
        wait(lambda: len(load.answered(503)) >= 3, what="posts refused while Postgres is down")
    refused = load.answered(503)
    assert all(a.headers["Retry-After"] and a.json()["detail"] for a in refused), refused[0].text

    accepted = len(load.answered(202))
    wait(lambda: len(load.answered(202)) >= accepted + 20, what="posts accepted after both came back")
    load.stop()
    assert [a for a in load.answers if getattr(a, "status_code", None) not in (202, 503)] == []
    assert daphne.process.poll() is None  # the same process, not restarted
    run_ids = [a.json()["run"]["id"] for a in load.answered(202)]
    wait(done(run_ids), timeout=240, what="every accepted turn")
    assert_healthy(run_ids)
    wait(lambda: http.get("/readyz").status_code == 200, what="ready again")


POISONS = {
    "routing": """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {x: text}}}
edges:
  - {from: a, to: FINISH, when: "abs(a.x) > `1`"}
  - {from: a, to: FINISH}
""",
    "output": """
entry: a
nodes:
  - {id: a, agent: test_output, config: {bad: nul}}
edges:
  - {from: a, to: FINISH}
""",
    "approval payload": """
entry: gate
nodes:
  - {id: gate, kind: approval, config: {title: Pay, payload: "{amount: abs(input.text)}"}}
edges:
  - {from: gate, to: FINISH}
""",
}


@pytest.mark.parametrize("kind", POISONS)
def test_a_poison_node_fails_once_and_never_loops(tenant, converse, start_worker, wait, kind):
    worker = start_worker()
    _, run = converse(tenant, POISONS[kind])
    wait(done([run.id]), what="the run")
    [run] = assert_healthy([run.id])
    assert run.sink == "HANDOVER" and Step.objects.filter(run=run, status="failed").count() == 1
    sweeps = worker.log_count("runs_sweep_task", "succeeded") + 2
    wait(lambda: worker.log_count("runs_sweep_task", "succeeded") >= sweeps, what="two more sweeps")
    assert Run.objects.get(id=run.id).last_seq == run.last_seq  # nothing took it up again


SLOW_REPLY = """
entry: a
nodes:
  - {id: a, agent: test_sleep, config: {ms: %d}}
  - {id: b, agent: responder, config: {template: "re: {{ input.text }}"}}
edges:
  - {from: a, to: b}
  - {from: b, to: FINISH}
"""


@pytest.fixture
def say(tenant, api, publish):
    """say(text, ms) -> (conversation id, run id): the text posted, over the API, on a conversation of a
    workflow that waits `ms` before it replies ("re: <text>"). The conversation is kept between calls."""
    conversation = []

    def post(text: str, ms: int = 500):
        if not conversation:
            publish(tenant, SLOW_REPLY % ms)
            conversation.append(api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"])
        response = api.post(f"/api/v1/conversations/{conversation[0]}/messages/", {"text": text, "turn_id": text},
                            format="json")
        return conversation[0], response.json()["run"]["id"]

    return post


def test_two_turns_posted_at_once_are_answered_one_after_the_other(say, start_worker, wait):
    start_worker(concurrency=2)
    conversation, first = say("one")
    _, second = say("two")
    wait(done([first, second]), what="both runs")
    assert_healthy([first, second])
    replies = Message.objects.filter(conversation_id=conversation, role="ai").order_by("created_at")
    assert [m.text for m in replies] == ["re: one", "re: two"]
    ended = RunEvent.objects.get(run_id=first, type="run.finished").ts
    assert RunEvent.objects.get(run_id=second, type="run.started").ts >= ended


def test_a_reply_racing_a_humans_take_over_is_kept_as_a_suggestion(tenant, say, member, client_for, start_worker,
                                                                   wait):
    start_worker()
    conversation, run_id = say("hi", ms=1000)
    wait(lambda: Run.objects.filter(id=run_id, status="running").exists(), what="the run to start")
    alice = client_for(member(tenant, role="agent", username="alice")[1])
    assert alice.post(f"/api/v1/conversations/{conversation}/take-over/").status_code == 200
    wait(done([run_id]), what="the run")
    assert not Message.objects.filter(conversation_id=conversation, role="ai").exists()
    assert RunEvent.objects.get(run_id=run_id, type="run.finished").data["suggestion"] == "re: hi"
    assert HandoverTicket.objects.get(conversation_id=conversation).assignee.username == "alice"
