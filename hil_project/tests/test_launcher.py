"""`launcher run` with real processes: it starts what died again, and leaves nothing behind when stopped.

The launcher runs on this session's Postgres and Redis (so it starts no embedded servers), with a database,
a Celery queue, a data folder and a port of its own.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg
import pytest
from django.conf import settings

from workflows.tests.conftest import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_url():
    """A database of its own on the session's server: the launcher migrates and seeds it."""
    name = f"hil_launcher_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Launcher:
    def __init__(self, tmp_path, database_url):
        self.port = free_port()
        self.log_path = tmp_path / "launcher.log"
        env = {**os.environ, "DATABASE_URL": database_url, "HIL_QUEUE": f"hil-launcher-{uuid.uuid4().hex[:8]}",
               "HIL_DATA_DIR": str(tmp_path / "data"), "PORT": str(self.port), "HIL_DEMO": "1"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "hil_project.launcher", "run"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR,
                                            start_new_session=True)
        self.psutil = psutil.Process(self.process.pid)

    def output(self) -> str:
        return self.log_path.read_text()

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.output()))

    def child(self, command: str) -> psutil.Process | None:
        """The launcher's live child running `celery <command>` (worker, beat)."""
        found = []
        for process in self.psutil.children():
            try:
                if {"celery", command} <= set(process.cmdline()):
                    found.append(process)
            except psutil.Error:  # a dead one, the launcher not yet done with it
                pass
        return found[0] if len(found) == 1 else None

    def serves(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/api/schema/", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def wait(self, predicate, what: str):
        def check():
            if self.process.poll() is not None:
                raise AssertionError(f"the launcher exited with {self.process.returncode}:\n{self.output()}")
            return predicate()

        try:
            return wait_until(check, timeout=90, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- launcher output:\n{self.output()}") from None


@pytest.fixture
def launcher(tmp_path, database_url):
    launcher = Launcher(tmp_path, database_url)
    yield launcher
    if launcher.process.poll() is None:
        os.killpg(launcher.process.pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
        launcher.process.wait()


def test_run_restarts_what_died_and_leaves_nothing_behind(launcher):
    ready = r"celery@\S+ ready\."
    launcher.wait(lambda: "HIL: console at" in launcher.output(), "where to log in")
    assert launcher.serves()  # once it says where, it is there
    launcher.wait(lambda: launcher.count(ready) == 1, "the worker to be up")
    token = re.search(r"Token \(operator\): (\S+)", launcher.output()).group(1)

    worker = launcher.child("worker")
    pool = worker.children()
    assert pool, "the prefork pool's processes"
    worker.send_signal(signal.SIGKILL)
    launcher.wait(lambda: launcher.count(ready) == 2, "the worker to be started again")
    assert "launcher: celery worker exited with code -9; restarting in 1s" in launcher.output()
    assert launcher.child("worker").pid != worker.pid
    assert not any(p.is_running() for p in pool), "the dead worker's pool was stopped with it"

    # The new worker runs a turn end to end.
    api = httpx.Client(base_url=f"http://127.0.0.1:{launcher.port}/api/v1",
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    conversation = api.post("/conversations/", json={"workflow": "customer_support"}).json()["id"]
    posted = api.post(f"/conversations/{conversation}/messages/", json={"text": "Please refund order 1", "turn_id": "t1"})
    run = posted.json()["run"]["id"]
    launcher.wait(lambda: api.get(f"/runs/{run}/").json()["status"] == "done", "the run to finish")
    roles = [m["role"] for m in api.get(f"/conversations/{conversation}/messages/").json()["results"]]
    assert "ai" in roles

    beat = launcher.child("beat")
    beat.send_signal(signal.SIGKILL)
    launcher.wait(lambda: (new := launcher.child("beat")) is not None and new.pid != beat.pid, "beat to be started again")
    assert "launcher: celery beat exited with code -9; restarting in 1s" in launcher.output()

    tree = launcher.psutil.children(recursive=True)
    assert len(tree) >= 5  # worker, its pool, beat, Daphne
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(60) == 130
    assert [p.pid for p in tree if p.is_running()] == []
