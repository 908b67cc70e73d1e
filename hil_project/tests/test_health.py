"""The load balancer's probes: /healthz without touching anything, /readyz with Postgres, Redis and a worker."""

import httpx
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connections

from hil_project import health
from hil_project.asgi import application
from workflows.tests.conftest import start_worker, wait  # noqa: F401  (fixtures)
from workflows.tests.servers import needs_own_servers, postgres_down


@pytest.fixture
def no_worker_seen():
    """This session's queue as if no worker had ever taken a task from it."""
    redis.Redis.from_url(django_settings.REDIS_URL).delete(health._worker_key())


def test_healthz_answers_without_a_token_or_the_database_or_redis(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1"  # and no database access is allowed in this test
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_ready_with_a_worker_running(client, start_worker, wait):
    start_worker()  # its beat's sweep is a task, taken at once
    response = wait(lambda: (r := client.get("/readyz")).status_code == 200 and r, what="ready")
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok", "worker": "ok"}}


@pytest.mark.django_db
def test_readyz_names_the_worker_when_none_took_a_task_recently(client, settings, no_worker_seen, wait):
    response = client.get("/readyz")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json() == {"status": "unavailable", "checks": {
        "postgres": "ok", "redis": "ok", "worker": "no worker took a task in the last 60s"}}

    health.worker_record()  # what a worker does as it takes a task
    assert client.get("/readyz").status_code == 200
    settings.HIL_READY_WORKER_S = 0.01  # and then nothing for longer than that
    response = wait(lambda: (r := client.get("/readyz")).status_code == 503 and r, what="the worker's time to pass")
    assert response.json()["checks"]["worker"] == "no worker took a task in the last 0.01s"


@pytest.mark.django_db
def test_readyz_names_redis_when_it_cannot_be_reached(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1"  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json() == {"status": "unavailable", "checks": {
        "postgres": "ok", "redis": "unavailable (ConnectionError)", "worker": "unknown (Redis is unavailable)"}}


@needs_own_servers
@pytest.mark.django_db(transaction=True)
def test_readyz_names_postgres_while_it_is_down(client):
    health.worker_record()
    with postgres_down():
        response = client.get("/readyz")
        assert response.status_code == 503 and response["Retry-After"] == "5"
        assert response.json() == {"status": "unavailable", "checks": {
            "postgres": "unavailable (OperationalError)", "redis": "ok", "worker": "ok"}}
        assert "Traceback" not in response.content.decode()
    connections.close_all()  # the connection the stop cut
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_the_probes_answer_on_the_asgi_app_as_deployed(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver") as http:
        healthz, readyz = await http.get("/healthz"), await http.get("/readyz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
    assert readyz.status_code == 503 and readyz.headers["Content-Type"] == "application/json"
    assert readyz.json()["checks"]["postgres"] == "ok" and readyz.json()["checks"]["redis"] != "ok"
