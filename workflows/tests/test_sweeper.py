"""The sweeper sends a run's task again only when it seems lost, after a backoff, to the queue it needs."""

import ast
import json

import pytest
import redis
from django.conf import settings
from django.db import connection

from hil_project.celery import app as celery_app
from workflows import engine
from workflows.models import Run
from workflows.tests.specs import LINEAR

pytestmark = pytest.mark.django_db

OTHER_QUEUE = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {}}, limits: {timeout_ms: 5000}}
  - {id: b, agent: test_other_queue, limits: {timeout_ms: 20000}}
edges:
  - {from: a, to: b}
  - {from: b, to: FINISH}
"""


@pytest.fixture
def queues():
    """sent(queue="") -> the (run id, hard time limit) of each task sent to the default queue, or to
    `<default>.<queue>`, since the last call."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    default = celery_app.conf.task_default_queue
    names = [default, f"{default}.other"]
    client.delete(*names)

    def sent(queue: str = "") -> list[tuple[str, float]]:
        name = f"{default}.{queue}" if queue else default
        messages = [json.loads(m) for m in client.lrange(name, 0, -1)]
        client.delete(name)
        return [(ast.literal_eval(m["headers"]["argsrepr"])[0], m["headers"]["timelimit"][0]) for m in messages]

    yield sent
    client.delete(*names)


def due_now(run_id) -> None:
    """As if the run's task were lost (or its worker dead) long enough for the sweeper to send it again."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE workflows_run SET resend_at = clock_timestamp() - interval '1 second',"
                       " lease_expires_at = CASE WHEN status = 'running' THEN clock_timestamp() - interval"
                       " '1 second' END WHERE id = %s", [run_id])


def test_a_queued_run_is_sent_again_once_not_at_every_sweep(tenant, converse, queues):
    _, run = converse(tenant, LINEAR)
    assert engine.runs_sweep() == 0  # too soon: the first message may still arrive
    due_now(run.id)
    assert engine.runs_sweep() == 1
    assert engine.runs_sweep() == 0  # sent just now: not again at the next sweep
    assert [r for r, _ in queues()] == [str(run.id)]
    assert Run.objects.get(id=run.id).resends == 1


def test_the_backoff_between_sends_doubles_up_to_its_cap(tenant, converse, queues, settings):
    settings.HIL_RESEND_AFTER_S, settings.HIL_RESEND_MAX_S = 10, 35
    _, run = converse(tenant, LINEAR)
    gaps = []
    for _ in range(4):
        due_now(run.id)
        engine.runs_sweep()
        with connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch FROM resend_at - clock_timestamp()) FROM workflows_run WHERE id = %s",
                           [run.id])
            gaps.append(round(cursor.fetchone()[0]))
    assert gaps == [10, 20, 35, 35]


def test_a_running_run_is_sent_again_only_when_its_lease_has_expired(tenant, converse, queues):
    _, run = converse(tenant, LINEAR)
    assert engine.run_claim(run.id) is not None
    queues()
    assert engine.runs_sweep() == 0  # its worker is alive and holds the lease
    due_now(run.id)
    assert engine.runs_sweep() == 1 and [r for r, _ in queues()] == [str(run.id)]


def test_a_run_is_sent_to_the_queue_its_next_node_needs_with_a_hard_time_limit(
        tenant, converse, queues, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _, run = converse(tenant, OTHER_QUEUE)
    assert queues() == [(str(run.id), 2 * 20 + settings.HIL_STEP_GRACE_S)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.run_execute(run_id=run.id, queue=celery_app.conf.task_default_queue)
    run.refresh_from_db()
    assert (run.status, run.current_node) == ("queued", "b")  # node a ran here; b must run elsewhere
    assert queues("other") == [(str(run.id), 2 * 20 + settings.HIL_STEP_GRACE_S)]
    due_now(run.id)
    engine.runs_sweep()
    assert [r for r, _ in queues("other")] == [str(run.id)] and queues() == []


def test_a_task_whose_time_is_running_out_leaves_the_next_step_to_a_fresh_one(
        tenant, converse, queues, django_capture_on_commit_callbacks):
    _, run = converse(tenant, OTHER_QUEUE)
    with django_capture_on_commit_callbacks(execute=True):  # 15 s for a (5 s and the grace), not 30 for b
        engine.run_execute(run_id=run.id, queue=None, time_limit=20)
    run.refresh_from_db()
    assert (run.status, run.current_node) == ("queued", "b") and [r for r, _ in queues("other")] == [str(run.id)]


BACKOFF = """
entry: f
nodes:
  - {id: f, agent: test_flaky, config: {failures: 3}, limits: {max_retries: 3, backoff: 1000, max_backoff: 1500}}
edges:
  - {from: f, to: FINISH}
"""


def test_retry_backoff_doubles_up_to_its_cap(tenant, converse, drive):
    _, run = converse(tenant, BACKOFF)
    run = drive(run)
    delays = [e.data["delay_ms"] for e in run.events.filter(type="step.retry_scheduled").order_by("seq")]
    assert delays == [1000, 1500, 1500]
