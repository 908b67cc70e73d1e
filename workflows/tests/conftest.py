import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from hil_project import launcher
from hil_project.celery import app as celery_app


# Short leases and quick sweeps, so that tests see a dead worker's run taken over within seconds.
WORKER_ENV = {"HIL_DEBUG": "1", "HIL_AGENT_MODULES": "workflows.tests.agents", "HIL_LEASE_S": "3",
              "HIL_RESEND_AFTER_S": "1", "HIL_SWEEP_INTERVAL_S": "0.5", "HIL_STEP_GRACE_S": "1", "HIL_MAX_CLAIMS": "2",
              "HIL_CLAIM_LEASE_S": "3", "HIL_LOG_LEVEL": "INFO"}


def process_env() -> dict[str, str]:
    """The environment of a worker or server process the tests start: the test database, this session's
    queue (set in os.environ by the root conftest), short leases, the test's data folder."""
    db_url = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    return {**os.environ, "DATABASE_URL": db_url, **WORKER_ENV, "HIL_DATA_DIR": settings.HIL_DATA_DIR}


class Worker:
    """A real Celery worker process (with the sweeper's beat) on the test database and this session's queues."""

    def __init__(self, log_path, concurrency=1, queues=("",), pool="prefork", wait=True):
        env = process_env()
        default = celery_app.conf.task_default_queue
        self.log_path = log_path
        self.log = open(log_path, "w")
        schedule = os.path.join(os.path.dirname(log_path), f"beat-{os.getpid()}-{time.monotonic_ns()}")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hil_project", "worker", "-B", "-s", schedule, "-P", pool,
             "-Q", ",".join(f"{default}.{q}" if q else default for q in queues), "-c", str(concurrency),
             "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=settings.BASE_DIR,
        )
        if wait:
            self._wait_for("ready.", 90)

    def _wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in open(self.log_path).read():
                return
            if self.process.poll() is not None:
                raise RuntimeError("worker exited:\n" + open(self.log_path).read())
            time.sleep(0.05)
        raise TimeoutError(f"worker not {text!r} after {timeout}s:\n" + open(self.log_path).read())

    def log_count(self, *texts: str) -> int:
        """How many lines of the worker's log hold all of `texts`."""
        return sum(all(t in line for t in texts) for line in open(self.log_path))

    def kill(self):
        """SIGKILL the worker and its pool children at once: nothing gets to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """start_worker(concurrency=1) -> a running Worker; all are stopped after the test."""
    workers = []

    def start(concurrency=1, **options):
        workers.append(Worker(str(tmp_path / f"worker{len(workers)}.log"), concurrency, **options))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()


class Daphne:
    """The ASGI app as deployed: a Daphne process on the test database, on a free port of 127.0.0.1."""

    def __init__(self, log_path):
        port = launcher._free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", launcher.DAPHNE, "-b", "127.0.0.1", "-p", str(port), "hil_project.asgi:application"],
            env=process_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=settings.BASE_DIR)
        wait_until(self._serving, what=f"Daphne on port {port} (log: {log_path})")

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("Daphne exited:\n" + open(self.log.name).read())
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def daphne(django_db_setup, tmp_path_factory):
    """One Daphne for the session; the tests that use it need committed rows (transactional_db)."""
    server = Daphne(tmp_path_factory.mktemp("daphne") / "daphne.log")
    yield server
    server.stop()


def wait_until(predicate, timeout=90, interval=0.05, what="condition"):
    """Poll `predicate` until it returns something true. The timeout only bounds a failing test: it is
    long, so that a busy machine passes as a quiet one does. Survives a database restart meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (OperationalError, InterfaceError):  # the server restarted: connect again
            connection.close()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def wait():
    return wait_until
