"""Fixtures shared by every app's tests. Tests run against the real Postgres and Redis that
`make test` starts (or DATABASE_URL / REDIS_URL)."""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from rest_framework.test import APIClient

import workflows.tests.agents  # noqa: F401  (registers the test agents in this process)
from agents.tests.conftest import llm_server, model  # noqa: F401  (fixtures for every app's tests)
from accounts.models import Role, Tenant
from accounts.services import api_token_create, membership_set, user_ensure
from hil_project.celery import app as celery_app
from workflows import engine, services
from workflows.models import Run
from workflows.tests.specs import LINEAR

# A queue of this session's own, so that no other worker on the same Redis takes its tasks.
os.environ["HIL_QUEUE"] = celery_app.conf.task_default_queue = f"hil-test-{uuid.uuid4().hex[:8]}"



def verified_login(client, user):
    """Sign `user` in on a Django test client past the second factor, as the console's sign-in does."""
    from django_otp import DEVICE_ID_SESSION_KEY

    from accounts.services import totp_demo_device

    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = totp_demo_device(user=user).persistent_id
    session.save()
    return client


@pytest.fixture
def admin_client(client, admin_user):
    """pytest-django's superuser client, past the second factor as the admin requires."""
    return verified_login(client, admin_user)


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test's data sources' files in a folder of its own (the demo's seed copies its database there)."""
    settings.HIL_DATA_DIR = str(tmp_path / "sources")
    return tmp_path / "sources"


@pytest.fixture
def tenant(db):
    return Tenant.objects.create(slug="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return Tenant.objects.create(slug="globex", name="Globex")


@pytest.fixture
def member(db):
    """member(tenant, role="operator", username=None) -> (user, raw token)."""

    def make(tenant, role=Role.OPERATOR, username=None):
        user = user_ensure(username=username or f"{role}-{tenant.slug}")
        membership_set(tenant=tenant, user=user, role=role)
        return user, api_token_create(tenant=tenant, user=user)[1]

    return make


@pytest.fixture
def client_for():
    """client_for(raw_token) -> an APIClient sending it as a Bearer token."""

    def make(raw):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture
def api(tenant, member, client_for):
    """An operator's API client in `tenant`."""
    return client_for(member(tenant)[1])


@pytest.fixture
def publish(db):
    """publish(tenant, yaml, slug="wf") -> the workflow with that spec live."""

    def make(tenant, spec_yaml=LINEAR, slug="wf"):
        from workflows.models import Workflow

        workflow = Workflow.objects.filter(tenant=tenant, slug=slug).first() or services.workflow_create(
            tenant=tenant, slug=slug)
        version = services.workflow_version_create(workflow=workflow, spec_yaml=textwrap.dedent(spec_yaml))
        services.workflow_version_publish(version=version)
        workflow.refresh_from_db()
        return workflow

    return make


@pytest.fixture
def converse(publish):
    """converse(tenant, yaml, text="hi") -> (conversation, run) with the run queued, not yet run."""

    def make(tenant, spec_yaml=LINEAR, text="hi", turn_id="t1", slug="wf"):
        workflow = publish(tenant, spec_yaml, slug)
        conversation = services.conversation_start(tenant=tenant, workflow_slug=workflow.slug)
        message, _ = services.message_post(conversation=conversation, text=text, turn_id=turn_id)
        return conversation, message.run

    return make


@pytest.fixture
def drive():
    """drive(run) runs the engine in this process until the run stops being queued
    (a retry's backoff is made due at once) and returns it refreshed."""

    def run_until_not_queued(run: Run, max_rounds: int = 50) -> Run:
        for _ in range(max_rounds):
            Run.objects.filter(id=run.id, status=Run.Status.QUEUED).update(wake_at=None)
            engine.run_execute(run_id=run.id)
            run.refresh_from_db()
            if run.status != Run.Status.QUEUED:
                return run
        raise AssertionError(f"run {run.id} still queued after {max_rounds} rounds")

    return run_until_not_queued


@pytest.fixture
def manage_py():
    """manage_py(*args, **env) -> manage.py run in a process of its own, its environment only PATH and `env`:
    nothing of the test run's own (HIL_DEBUG, the servers' URLs, ...) leaks in."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"], **env})

    return run
