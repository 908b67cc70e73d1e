import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connection

from hil_project.celery import app as celery_app


class Worker:
    """A real Celery worker process (with the sweeper's beat) on the test database."""

    def __init__(self, log_path, concurrency=1):
        db_url = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"]).geturl()
        env = {**os.environ, "DATABASE_URL": db_url, "HIL_DEBUG": "1", "HIL_AGENT_MODULES": "workflows.tests.agents",
               "HIL_LEASE_S": "3", "HIL_RESEND_AFTER_S": "1", "HIL_SWEEP_INTERVAL_S": "0.5", "HIL_LOG_LEVEL": "INFO"}
        self.log_path = log_path
        self.log = open(log_path, "w")
        schedule = os.path.join(os.path.dirname(log_path), f"beat-{os.getpid()}-{time.monotonic_ns()}")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hil_project", "worker", "-B", "-s", schedule,
             "-Q", celery_app.conf.task_default_queue, "-c", str(concurrency), "-l", "info",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=settings.BASE_DIR,
        )
        self._wait_for("ready.", 60)

    def _wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in open(self.log_path).read():
                return
            if self.process.poll() is not None:
                raise RuntimeError("worker exited:\n" + open(self.log_path).read())
            time.sleep(0.05)
        raise TimeoutError(f"worker not {text!r} after {timeout}s:\n" + open(self.log_path).read())

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

    def start(concurrency=1):
        workers.append(Worker(str(tmp_path / f"worker{len(workers)}.log"), concurrency))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()


def wait_until(predicate, timeout=30, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def wait():
    return wait_until
